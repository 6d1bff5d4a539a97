//! cgroup v2 path -> the name an operator knows the workload by.
//! Pure string work: the agent resolves ids to paths, this names them.
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Workload {
    /// A libvirt domain (`machine-qemu\x2dN\x2dNAME.scope`).
    Libvirt {
        domain: String,
    },
    /// A Kubernetes pod container (KubeVirt's virt-launcher pods are the usual case).
    Kubernetes {
        pod_uid: String,
        container_id: Option<String>,
    },
    Docker {
        id: String,
    },
    Podman {
        id: String,
    },
    /// Any other systemd unit (service or scope).
    Systemd {
        unit: String,
    },
    /// Nothing recognisable: the path itself (`/` for the root cgroup).
    Path {
        path: String,
    },
}

impl Workload {
    /// Short and stable: a metric label and a `top` column.
    pub fn name(&self) -> String {
        match self {
            Workload::Libvirt { domain } => domain.clone(),
            Workload::Kubernetes {
                pod_uid,
                container_id: Some(c),
            } => format!("pod/{pod_uid}/{}", short(c)),
            Workload::Kubernetes { pod_uid, .. } => format!("pod/{pod_uid}"),
            Workload::Docker { id } => format!("docker/{}", short(id)),
            Workload::Podman { id } => format!("podman/{}", short(id)),
            Workload::Systemd { unit } => unit.clone(),
            Workload::Path { path } => path.clone(),
        }
    }
}

/// Container ids are 64 hex digits; 12 is what docker and crictl show.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// systemd escapes `-` in unit names as `\x2d` (and any byte as `\xNN`).
pub fn unescape(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.get(i + 1) == Some(&b'x')
            && let Some(v) = s
                .get(i + 2..i + 4)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Names the cgroup at `path` (relative to the cgroup v2 root).
pub fn classify(path: &str) -> Workload {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return Workload::Path { path: "/".into() };
    }
    // The innermost recognisable component wins, except that libvirt's
    // emulator/vcpu sub-cgroups belong to their machine scope.
    if let Some(domain) = parts.iter().find_map(|p| libvirt_domain(p)) {
        return Workload::Libvirt { domain };
    }
    if let Some(k) = kubernetes(&parts) {
        return k;
    }
    for p in parts.iter().rev() {
        let unit = p.strip_suffix(".scope").unwrap_or(p);
        if let Some(id) = unit.strip_prefix("docker-").filter(|i| is_id(i)) {
            return Workload::Docker { id: id.into() };
        }
        if let Some(id) = unit
            .strip_prefix("libpod-conmon-")
            .or_else(|| unit.strip_prefix("libpod-"))
            .filter(|i| is_id(i))
        {
            return Workload::Podman { id: id.into() };
        }
    }
    // cgroupfs-driver docker: docker/<id>
    if let [.., "docker", id] = parts.as_slice()
        && is_id(id)
    {
        return Workload::Docker { id: (*id).into() };
    }
    if let Some(unit) = parts
        .iter()
        .rev()
        .find(|p| p.ends_with(".service") || p.ends_with(".scope"))
    {
        return Workload::Systemd {
            unit: unescape(unit),
        };
    }
    Workload::Path {
        path: parts.join("/"),
    }
}

/// `machine-qemu\x2d3\x2dmy\x2dvm.scope` (systemd-machined) or
/// `qemu-3-my-vm.libvirt-qemu` (libvirt's own cgroups, under `machine/`,
/// when there is no machined) -> `my-vm`. libvirt >= 2 names machines
/// `qemu-ID-NAME`; older ones `qemu-NAME`.
fn libvirt_domain(part: &str) -> Option<String> {
    let inner = match part.strip_suffix(".libvirt-qemu") {
        // virCgroupPartitionEscape prefixes a name that could clash with a
        // controller's files with `_`.
        Some(own) => own.strip_prefix('_').unwrap_or(own).to_string(),
        None => unescape(part.strip_prefix("machine-")?.strip_suffix(".scope")?),
    };
    let rest = inner.strip_prefix("qemu-")?;
    let name = match rest.split_once('-') {
        Some((id, name)) if !id.is_empty() && id.bytes().all(|c| c.is_ascii_digit()) => name,
        _ => rest,
    };
    (!name.is_empty()).then(|| name.to_string())
}

fn kubernetes(parts: &[&str]) -> Option<Workload> {
    let i = parts.iter().position(|p| p.starts_with("kubepods"))?;
    let (pod_at, pod_uid) = parts[i..].iter().enumerate().find_map(|(j, p)| {
        // systemd driver: kubepods-burstable-pod<uid_with_underscores>.slice;
        // cgroupfs driver: pod<uid>.
        let p = p.strip_suffix(".slice").unwrap_or(p);
        let uid = p
            .rsplit_once("-pod")
            .map(|(_, u)| u)
            .or_else(|| p.strip_prefix("pod"))?;
        (uid.len() >= 8).then(|| (i + j, uid.replace('_', "-")))
    })?;
    let container_id = parts.get(pod_at + 1).map(|c| {
        let c = c.strip_suffix(".scope").unwrap_or(c);
        ["cri-containerd-", "crio-", "docker-", "cri-o-"]
            .iter()
            .find_map(|pre| c.strip_prefix(pre))
            .unwrap_or(c)
            .to_string()
    });
    Some(Workload::Kubernetes {
        pod_uid,
        container_id,
    })
}

fn is_id(s: &str) -> bool {
    s.len() >= 12 && s.bytes().all(|c| c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(p: &str) -> String {
        classify(p).name()
    }

    #[test]
    fn libvirt_machines() {
        assert_eq!(name(r"machine.slice/machine-qemu\x2d1\x2dvm1.scope"), "vm1");
        // Names with dashes, and the emulator/vcpu sub-cgroups of a domain.
        assert_eq!(
            name(r"machine.slice/machine-qemu\x2d12\x2dweb\x2dfront\x2d01.scope/libvirt/emulator"),
            "web-front-01"
        );
        // Pre-2.0 libvirt: no domain id.
        assert_eq!(name(r"machine.slice/machine-qemu\x2dold.scope"), "old");
        // A numeric domain name survives.
        assert_eq!(
            name(r"machine.slice/machine-qemu\x2d4\x2d2024.scope"),
            "2024"
        );
        // libvirt's own layout, without systemd-machined.
        assert_eq!(name("machine/qemu-1-vm1.libvirt-qemu"), "vm1");
        assert_eq!(
            name("machine/qemu-7-web-front-01.libvirt-qemu/emulator"),
            "web-front-01"
        );
        assert_eq!(name("machine/qemu-2-x.libvirt-qemu/vcpu0"), "x");
        // Not a domain: other drivers' and look-alike names.
        assert_eq!(
            name("machine/lxc-1-c1.libvirt-lxc"),
            "machine/lxc-1-c1.libvirt-lxc"
        );
    }

    #[test]
    fn kubernetes_pods() {
        let w = classify(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice/cri-containerd-4f6b7c8d9e0a1b2c3d4e5f.scope",
        );
        assert_eq!(
            w,
            Workload::Kubernetes {
                pod_uid: "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into(),
                container_id: Some("4f6b7c8d9e0a1b2c3d4e5f".into()),
            }
        );
        assert_eq!(
            w.name(),
            "pod/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0/4f6b7c8d9e0a"
        );
        // Guaranteed QoS pods sit right under kubepods; cgroupfs driver paths.
        assert_eq!(
            name("kubepods.slice/kubepods-pod11112222_3333_4444_5555_666677778888.slice"),
            "pod/11112222-3333-4444-5555-666677778888"
        );
        assert_eq!(
            name("kubepods/besteffort/pod11112222-3333-4444-5555-666677778888/abcdef0123456789"),
            "pod/11112222-3333-4444-5555-666677778888/abcdef012345"
        );
        assert_eq!(
            name(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod11112222_3333_4444_5555_666677778888.slice/crio-0123456789abcdef.scope"
            ),
            "pod/11112222-3333-4444-5555-666677778888/0123456789ab"
        );
    }

    #[test]
    fn docker_podman_systemd_and_paths() {
        let id = "a".repeat(64);
        assert_eq!(
            name(&format!("system.slice/docker-{id}.scope")),
            "docker/aaaaaaaaaaaa"
        );
        assert_eq!(name(&format!("docker/{id}")), "docker/aaaaaaaaaaaa");
        assert_eq!(
            name(&format!(
                "user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{id}.scope/container"
            )),
            "podman/aaaaaaaaaaaa"
        );
        assert_eq!(
            name(r"system.slice/qemu\x2dguest.service"),
            "qemu-guest.service"
        );
        assert_eq!(name(""), "/");
        assert_eq!(name("/"), "/");
        assert_eq!(name("lab/vms/a"), "lab/vms/a");
        // Looks like a docker scope but is no container id: a plain unit.
        assert_eq!(
            name("system.slice/docker-compose.scope"),
            "docker-compose.scope"
        );
    }

    #[test]
    fn unescape_is_lenient() {
        assert_eq!(unescape(r"a\x2db"), "a-b");
        assert_eq!(unescape(r"bad\x2"), r"bad\x2");
        assert_eq!(unescape(r"\xzz\"), r"\xzz\");
        assert_eq!(unescape(r"\xff"), "\u{fffd}");
    }

    proptest::proptest! {
        /// Any path names to something non-empty without panicking.
        #[test]
        fn never_panics(path in ".{0,200}") {
            proptest::prop_assert!(!classify(&path).name().is_empty());
        }
    }
}
