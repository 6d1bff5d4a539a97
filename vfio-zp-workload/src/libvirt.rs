//! libvirt as the VMM's manager: a domain on the guest's vfio-pci device,
//! started, hot-plugged and stopped with virsh, so the QEMU command line,
//! the process tree, the cgroup (`machine/qemu-N-NAME.libvirt-qemu`
//! without systemd-machined) and RLIMIT_MEMLOCK are libvirt's own. The lab
//! starts libvirtd in the guest first (see the matrix's VMM script).
use std::{path::Path, process::Command, time::Duration};
use wait_timeout::ChildExt;

use anyhow::Context;

use super::{
    guest_rom, status_kb,
    vm::{RAM_MIB, RUN_DIR, VmTruth, device_of},
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

/// virsh, given `limit`: libvirt waits on QEMU's monitor without end, and
/// a QEMU stuck in its memory cgroup's reclaim never answers.
fn virsh_within(args: &[&str], limit: Duration) -> anyhow::Result<std::process::Output> {
    let mut child = Command::new("virsh")
        .arg("-c")
        .arg(URI)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot run virsh (libvirt-clients)")?;
    // virsh prints a few lines at most: the pipes cannot fill meanwhile.
    if child.wait_timeout(limit)?.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        anyhow::bail!("virsh {} did not return within {limit:?}", args.join(" "));
    }
    Ok(child.wait_with_output()?)
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
/// hostdev; ACPI on, which PCI hot-plug on `-M pc`'s bus needs; `rom`, the
/// lab's guest (it acks hot-unplug and powers off) instead of SeaBIOS.
pub fn domain_xml(
    name: &str,
    hard_limit_mib: Option<u64>,
    hostdev: Option<&str>,
    rom: Option<&Path>,
) -> String {
    let memtune = hard_limit_mib
        .map(|m| format!("<memtune><hard_limit unit='MiB'>{m}</hard_limit></memtune>"))
        .unwrap_or_default();
    let loader = rom
        .map(|r| format!("<loader type='rom'>{}</loader>", r.display()))
        .unwrap_or_default();
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>{RAM_MIB}</memory>\
         <vcpu>1</vcpu>{memtune}<os><type arch='x86_64' machine='pc'>hvm</type>{loader}</os>\
         <features><acpi/></features>\
         <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>\
         <controller type='usb' model='none'/><memballoon model='none'/>{}</devices></domain>\n",
        hostdev.unwrap_or("")
    )
}

/// Polls VmLck until `done` holds (a detach completes when the guest has
/// acked it, which virsh may not wait for).
fn vmlck_until(pid: u32, done: impl Fn(u64) -> bool) -> Option<u64> {
    for _ in 0..300 {
        match status_kb(pid, "VmLck:") {
            Some(kb) if done(kb) => return Some(kb),
            None => return None,
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    status_kb(pid, "VmLck:")
}

/// Waits for a domain's QEMU to be gone; says how it went.
fn wait_gone(pid: u32, how: &str) -> String {
    let proc_dir = format!("/proc/{pid}");
    for _ in 0..600 {
        if !Path::new(&proc_dir).exists() {
            return how.into();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    format!("still running 60s after virsh {how}")
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

/// Runs one libvirt scenario on `group`; `phase` runs while the domain
/// does: `alive`, and with `hotplug` also `unplugged` while its hostdev is
/// detached.
pub fn run(
    scenario: &str,
    refused: bool,
    group: &str,
    hotplug: bool,
    hard_limit_mib: Option<u64>,
    mut phase: impl FnMut(&str),
) -> anyhow::Result<VmTruth> {
    let name = format!("lv-{}", scenario.trim_start_matches("libvirt-"));
    let device = device_of(group)?;
    let hostdev = hostdev_xml(&device)?;
    let dir = Path::new(RUN_DIR);
    std::fs::create_dir_all(dir)?;
    let rom = match hotplug {
        true => Some(guest_rom::build(dir)?),
        false => None,
    };
    let xml = dir.join(format!("{name}.xml"));
    let dev_xml = dir.join(format!("{name}-hostdev.xml"));
    std::fs::write(
        &xml,
        domain_xml(
            &name,
            hard_limit_mib,
            (!hotplug).then_some(&*hostdev),
            rom.as_deref(),
        ),
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
    let started = match virsh_within(&["start", &name, "--paused"], Duration::from_secs(180)) {
        Ok(o) => o,
        Err(e) => {
            t.errors.push(format!("{e:#}"));
            let _ = virsh(&["destroy", &name]);
            let _ = virsh(&["undefine", &name]);
            return Ok(t);
        }
    };
    if !started.status.success() {
        let why = String::from_utf8_lossy(&started.stderr).trim().to_string();
        if refused {
            t.refused = Some(match oom_kill(&name) {
                Some(k) => format!("{why} (kernel: {k})"),
                None => why,
            });
        } else {
            t.errors.push(format!("virsh start: {why}"));
        }
        phase("alive");
        let _ = virsh(&["undefine", &name]);
        return Ok(t);
    }
    if refused {
        t.errors
            .push("started, though its hard_limit is below its RAM".into());
    }
    let pid_file = format!("/run/libvirt/qemu/{name}.pid");
    t.pid = std::fs::read_to_string(&pid_file)
        .with_context(|| pid_file.clone())?
        .trim()
        .parse()
        .with_context(|| pid_file.clone())?;
    if hotplug && let Err(e) = replug(&mut t, &name, &dev_xml, &mut phase) {
        t.errors.push(format!("hot-plug: {e:#}"));
    }
    t.cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", t.pid))
        .unwrap_or_default()
        .trim()
        .trim_start_matches("0::/")
        .to_string();
    t.vmlck_kb_alive = status_kb(t.pid, "VmLck:");
    t.vmpin_kb_alive = status_kb(t.pid, "VmPin:");
    t.memlock_limit = limits_memlock(t.pid);
    phase("alive");
    // shutdown: the guest powers off (ACPI), libvirt reaps QEMU. destroy:
    // SIGTERM, then SIGKILL after a grace period, as on a host.
    let how = if hotplug { "shutdown" } else { "destroy" };
    if let Err(e) = virsh_ok(&[how, &name]) {
        t.errors.push(format!("{e:#}"));
    }
    t.exit = wait_gone(t.pid, how);
    let _ = virsh(&["undefine", &name]);
    Ok(t)
}

/// The hostdev attached to the paused domain, the domain resumed (its
/// guest runs), the hostdev detached and attached again; VmLck read at
/// each step, `phase("unplugged")` while it is out.
fn replug(
    t: &mut VmTruth,
    name: &str,
    dev_xml: &str,
    phase: &mut impl FnMut(&str),
) -> anyhow::Result<()> {
    virsh_ok(&["attach-device", name, dev_xml, "--live"])?;
    t.vmlck_kb_first = vmlck_until(t.pid, |kb| kb > 0);
    virsh_ok(&["resume", name])?;
    virsh_ok(&["detach-device", name, dev_xml, "--live"])?;
    t.vmlck_kb_unplugged = vmlck_until(t.pid, |kb| kb == 0);
    phase("unplugged");
    virsh_ok(&["attach-device", name, dev_xml, "--live"])?;
    Ok(())
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
        let x = domain_xml("lv-a", Some(96), Some("<hostdev/>"), None);
        assert!(x.contains("<hard_limit unit='MiB'>96</hard_limit>"), "{x}");
        assert!(x.contains("<hostdev/></devices>"), "{x}");
        assert!(!x.contains("loader"), "{x}");
        let bare = domain_xml("lv-b", None, None, Some(Path::new("/r/guest.rom")));
        assert!(
            !bare.contains("memtune") && !bare.contains("hostdev"),
            "{bare}"
        );
        assert!(
            bare.contains("hvm</type><loader type='rom'>/r/guest.rom</loader></os>"),
            "{bare}"
        );
    }
}
