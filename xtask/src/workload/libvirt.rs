//! libvirt as the VMM's manager: a domain on the guest's vfio-pci device,
//! started and destroyed with virsh, so the QEMU command line, the process
//! tree, the cgroup (`machine/qemu-N-NAME.libvirt-qemu` without
//! systemd-machined) and RLIMIT_MEMLOCK are libvirt's own. The lab starts
//! libvirtd in the guest first (see the matrix's VMM script).
use std::{path::Path, process::Command, time::Duration};

use anyhow::Context;

use super::{
    status_kb,
    vmm::{RAM_MIB, VmTruth, VmmScenario, device_of},
};

const URI: &str = "qemu:///system";

/// A `<hard_limit>` that fits: it is the memory cgroup's limit too, so it
/// must hold QEMU's own memory besides the pinned RAM.
pub const FITS_MIB: u64 = 96;

fn virsh(args: &[&str]) -> anyhow::Result<std::process::Output> {
    Command::new("virsh")
        .arg("-c")
        .arg(URI)
        .args(args)
        .output()
        .context("cannot run virsh (libvirt-clients)")
}

fn virsh_ok(args: &[&str]) -> anyhow::Result<()> {
    let o = virsh(args)?;
    anyhow::ensure!(
        o.status.success(),
        "virsh {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr).trim()
    );
    Ok(())
}

/// `0000:00:01.0` as libvirt's `<address>`.
fn hostdev_xml(bdf: &str) -> anyhow::Result<String> {
    let (dom, rest) = bdf.split_once(':').context("PCI address")?;
    let (bus, rest) = rest.split_once(':').context("PCI address")?;
    let (slot, func) = rest.split_once('.').context("PCI address")?;
    Ok(format!(
        "<hostdev mode='subsystem' type='pci' managed='no'><source>\
         <address domain='0x{dom}' bus='0x{bus}' slot='0x{slot}' function='0x{func}'/>\
         </source></hostdev>"
    ))
}

/// A small paused-at-start domain: no USB, no balloon, nothing but the
/// hostdev; ACPI on, which PCI hot-plug on `-M pc`'s bus needs.
pub fn domain_xml(name: &str, hard_limit_mib: Option<u64>, hostdev: Option<&str>) -> String {
    let memtune = hard_limit_mib
        .map(|m| format!("<memtune><hard_limit unit='MiB'>{m}</hard_limit></memtune>"))
        .unwrap_or_default();
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>{RAM_MIB}</memory>\
         <vcpu>1</vcpu>{memtune}<os><type arch='x86_64' machine='pc'>hvm</type></os>\
         <features><acpi/></features>\
         <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>\
         <controller type='usb' model='none'/><memballoon model='none'/>{}</devices></domain>\n",
        hostdev.unwrap_or("")
    )
}

/// The soft RLIMIT_MEMLOCK in /proc/<pid>/limits; `unlimited` is u64::MAX.
fn limits_memlock(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let soft = text
        .lines()
        .find_map(|l| l.strip_prefix("Max locked memory"))?
        .split_whitespace()
        .next()?;
    match soft {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// The kernel's own word on a memory cgroup OOM kill in the domain's cgroup.
fn oom_kill(name: &str) -> Option<String> {
    let o = Command::new("dmesg").output().ok()?;
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .rev()
        .find(|l| l.contains("oom-kill:") && l.contains(&format!("-{name}.libvirt-qemu")))
        .map(|l| l.trim().to_string())
}

/// Runs one libvirt scenario on `group`; `alive` runs while the domain does.
pub fn run(
    s: &VmmScenario,
    group: &str,
    attach: bool,
    hard_limit_mib: Option<u64>,
    alive: impl FnOnce(),
) -> anyhow::Result<VmTruth> {
    let name = format!("lv-{}", s.name.trim_start_matches("libvirt-"));
    let device = device_of(group)?;
    let hostdev = hostdev_xml(&device)?;
    let dir = Path::new("/run/vfio-zp-lab");
    std::fs::create_dir_all(dir)?;
    let xml = dir.join(format!("{name}.xml"));
    let dev_xml = dir.join(format!("{name}-hostdev.xml"));
    std::fs::write(
        &xml,
        domain_xml(&name, hard_limit_mib, (!attach).then_some(&*hostdev)),
    )?;
    std::fs::write(&dev_xml, &hostdev)?;
    let (xml, dev_xml) = (xml.display().to_string(), dev_xml.display().to_string());
    let mut t = VmTruth {
        name: name.clone(),
        machine: "pc".into(),
        device,
        ..Default::default()
    };
    virsh_ok(&["define", &xml])?;
    let started = virsh(&["start", &name, "--paused"])?;
    if !started.status.success() {
        let why = String::from_utf8_lossy(&started.stderr).trim().to_string();
        if s.refused {
            t.refused = Some(match oom_kill(&name) {
                Some(k) => format!("{why} (kernel: {k})"),
                None => why,
            });
        } else {
            t.errors.push(format!("virsh start: {why}"));
        }
        alive();
        let _ = virsh(&["undefine", &name]);
        return Ok(t);
    }
    if s.refused {
        t.errors
            .push("started, though its hard_limit is below its RAM".into());
    }
    let pid_file = format!("/run/libvirt/qemu/{name}.pid");
    t.pid = std::fs::read_to_string(&pid_file)
        .with_context(|| pid_file.clone())?
        .trim()
        .parse()
        .with_context(|| pid_file.clone())?;
    if attach && let Err(e) = virsh_ok(&["attach-device", &name, &dev_xml, "--live"]) {
        t.errors.push(format!("{e:#}"));
    }
    t.cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", t.pid))
        .unwrap_or_default()
        .trim()
        .trim_start_matches("0::/")
        .to_string();
    t.vmlck_kb_alive = status_kb(t.pid, "VmLck:");
    t.vmpin_kb_alive = status_kb(t.pid, "VmPin:");
    t.memlock_limit = limits_memlock(t.pid);
    alive();
    // destroy: SIGTERM, then SIGKILL after a grace period, as on a host.
    // (detach-device cannot complete here: PCI hot-unplug waits for the
    // guest OS to release the device, and this guest never runs.)
    if let Err(e) = virsh_ok(&["destroy", &name]) {
        t.errors.push(format!("{e:#}"));
    }
    let proc_dir = format!("/proc/{}", t.pid);
    for _ in 0..600 {
        if !Path::new(&proc_dir).exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    t.exit = if Path::new(&proc_dir).exists() {
        "still running after virsh destroy".into()
    } else {
        "destroyed".into()
    };
    let _ = virsh(&["undefine", &name]);
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostdev_addresses_are_split_for_libvirt() {
        let x = hostdev_xml("0000:00:02.0").unwrap();
        assert!(
            x.contains("domain='0x0000' bus='0x00' slot='0x02' function='0x0'"),
            "{x}"
        );
        assert!(hostdev_xml("nonsense").is_err());
    }

    #[test]
    fn a_domain_has_the_limit_and_device_asked_for() {
        let x = domain_xml("lv-a", Some(96), Some("<hostdev/>"));
        assert!(x.contains("<hard_limit unit='MiB'>96</hard_limit>"), "{x}");
        assert!(x.contains("<hostdev/></devices>"), "{x}");
        let bare = domain_xml("lv-b", None, None);
        assert!(
            !bare.contains("memtune") && !bare.contains("hostdev"),
            "{bare}"
        );
    }
}
