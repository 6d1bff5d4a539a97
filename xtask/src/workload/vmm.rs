//! A real VMM as the VFIO client: QEMU started on the guest's vfio-pci
//! devices, each VM in a cgroup shaped like libvirt's, then stopped the
//! way VMs stop (its monitor's `quit`, SIGTERM, SIGKILL). QEMU maps all
//! its RAM read-write and its ROMs read-only at realize, and exits with
//! those mappings live: the container is released after the mm is gone.
//! The truth around it comes from the kernel alone: the zero page's
//! `_refcount` (kcore), VmLck and VmPin while the VMM lives.
use std::{
    io::{Read, Write},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::kcore::ZeroPageTruth;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// `quit` on the human monitor: QEMU exits at once, mappings live.
    Quit,
    /// SIGTERM: what libvirt's `virsh destroy` sends first.
    Term,
    /// SIGKILL: a VMM killed outright (OOM killer, `destroy` escalating).
    Kill,
}

#[derive(Clone, Copy, Debug)]
pub struct VmmScenario {
    pub name: &'static str,
    pub about: &'static str,
    /// QEMU machine type.
    machine: &'static str,
    /// VMs started at once, each on its own device.
    vms: usize,
    stop: Stop,
}

pub const VMM_SCENARIOS: [VmmScenario; 3] = [
    VmmScenario {
        name: "qemu-pc-quit",
        about: "one QEMU (-M pc) on a vfio-pci device, stopped by `quit` on its monitor",
        machine: "pc",
        vms: 1,
        stop: Stop::Quit,
    },
    VmmScenario {
        name: "qemu-q35-term",
        about: "one QEMU (-M q35) on a vfio-pci device, stopped by SIGTERM",
        machine: "q35",
        vms: 1,
        stop: Stop::Term,
    },
    VmmScenario {
        name: "qemu-two-kill",
        about: "two QEMUs (-M pc) at once, each on its own device, both killed (SIGKILL)",
        machine: "pc",
        vms: 2,
        stop: Stop::Kill,
    },
];

pub fn find(name: &str) -> Option<&'static VmmScenario> {
    VMM_SCENARIOS.iter().find(|s| s.name == name)
}

/// Guest RAM of each VM, MiB: small, so a nested TCG QEMU starts quickly.
const RAM_MIB: u64 = 32;

/// One VM's name and the libvirt-shaped cgroup it runs in: systemd-machined's
/// `machine-qemu\x2dN\x2dNAME.scope`, dashes of the name escaped as `\x2d`.
pub fn cgroup_for(id: usize, name: &str) -> String {
    format!(
        r"machine.slice/machine-qemu\x2d{id}\x2d{}.scope",
        name.replace('-', r"\x2d")
    )
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VmTruth {
    /// The VM's name, as libvirt would have it.
    pub name: String,
    pub cgroup: String,
    pub machine: String,
    /// The vfio-pci device it was given.
    pub device: String,
    pub pid: u32,
    /// /proc/<pid>/status once the VM was realized (its mappings made).
    pub vmlck_kb_alive: Option<u64>,
    pub vmpin_kb_alive: Option<u64>,
    /// How the process ended, as wait(2) reported it.
    pub exit: String,
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VmmTruth {
    pub scenario: String,
    pub stop: Option<Stop>,
    pub kernel_release: String,
    /// Zero page `_refcount` before the first VM started, while all ran,
    /// and after the last one exited.
    pub refcount_before: Option<i32>,
    pub refcount_alive: Option<i32>,
    pub refcount_after: Option<i32>,
    pub vms: Vec<VmTruth>,
}

/// A running QEMU: its monitor on stdin, its output collected by a thread.
struct Vm {
    child: Child,
    monitor: Option<ChildStdin>,
    output: Arc<Mutex<Vec<u8>>>,
    truth: VmTruth,
}

/// The PCI address behind a VFIO group node (`/dev/vfio/N`).
pub fn device_of(group: &str) -> anyhow::Result<String> {
    let n = Path::new(group)
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{group}: not a VFIO group node"))?;
    let dir = format!("/sys/kernel/iommu_groups/{n}/devices");
    let devices: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| dir.clone())?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    match devices.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("{dir}: expected one device, found {devices:?}"),
    }
}

fn start(s: &VmmScenario, i: usize, group: &str) -> anyhow::Result<Vm> {
    let name = format!("{}-{}", s.name.trim_start_matches("qemu-"), i + 1);
    let cgroup = cgroup_for(10 + i, &name);
    let device = device_of(group)?;
    let dir = format!("/sys/fs/cgroup/{cgroup}");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating cgroup {dir}"))?;
    // The shell enters the cgroup and becomes QEMU, so QEMU's first VFIO
    // call is already attributed to the VM.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
        .arg("sh")
        .arg(&dir)
        .arg("qemu-system-x86_64")
        .args(["-M", s.machine, "-accel", "tcg", "-m", &RAM_MIB.to_string()])
        .args(["-nodefaults", "-display", "none", "-S", "-monitor", "stdio"])
        .args(["-name", &name])
        .args(["-device", &format!("vfio-pci,host={device},id=hostdev0")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start qemu-system-x86_64")?;
    let output = Arc::new(Mutex::new(Vec::new()));
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let out = output.clone();
        std::thread::spawn(move || collect(stream, &out));
    }
    Ok(Vm {
        truth: VmTruth {
            name,
            cgroup,
            machine: s.machine.into(),
            device,
            pid: child.id(),
            ..Default::default()
        },
        monitor: child.stdin.take(),
        child,
        output,
    })
}

fn collect(mut r: Box<dyn Read + Send>, out: &Mutex<Vec<u8>>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 {
            break;
        }
        if let Ok(mut o) = out.lock() {
            o.extend_from_slice(&buf[..n]);
        }
    }
}

impl Vm {
    fn output(&self) -> String {
        self.output
            .lock()
            .map(|o| String::from_utf8_lossy(&o).into_owned())
            .unwrap_or_default()
    }

    /// Waits for the monitor to answer a command. Its prompt is printed
    /// before the devices are realized, but commands are read only by the
    /// main loop, which starts once the machine, its devices and their DMA
    /// mappings are all set up (-S: no vCPU runs).
    fn wait_realized(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let m = self.monitor.as_mut().context("no monitor")?;
        m.write_all(b"info status\n")?;
        m.flush()?;
        let start = Instant::now();
        loop {
            if self.output().contains("VM status:") {
                return Ok(());
            }
            if let Some(st) = self.child.try_wait()? {
                bail!(
                    "QEMU exited before its monitor came up ({st}): {}",
                    self.output().trim()
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "QEMU's monitor did not come up within {timeout:?}: {}",
                    self.output().trim()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self, how: Stop) -> anyhow::Result<()> {
        match how {
            Stop::Quit => {
                let m = self.monitor.as_mut().context("no monitor")?;
                m.write_all(b"quit\n")?;
                m.flush()?;
            }
            Stop::Term | Stop::Kill => {
                let sig = if how == Stop::Term { "-TERM" } else { "-KILL" };
                let ok = Command::new("kill")
                    .arg(sig)
                    .arg(self.truth.pid.to_string())
                    .status()?
                    .success();
                anyhow::ensure!(ok, "kill {sig} {} failed", self.truth.pid);
            }
        }
        Ok(())
    }
}

fn status_kb(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Runs `s` on `groups` (one per VM); `while_alive` is a shell command run
/// while every VM lives, after its readings (the lab snapshots the agent).
pub fn run(
    s: &VmmScenario,
    groups: &[String],
    while_alive: Option<&str>,
) -> anyhow::Result<VmmTruth> {
    anyhow::ensure!(
        groups.len() >= s.vms,
        "{} needs {} VFIO groups, {} given",
        s.name,
        s.vms,
        groups.len()
    );
    let zp = ZeroPageTruth::open()?;
    let mut t = VmmTruth {
        scenario: s.name.into(),
        stop: Some(s.stop),
        kernel_release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .into(),
        refcount_before: zp.refcount().ok(),
        ..Default::default()
    };
    let mut vms = Vec::new();
    for (i, g) in groups.iter().take(s.vms).enumerate() {
        vms.push(start(s, i, g)?);
    }
    let mut failed = None;
    for vm in &mut vms {
        if let Err(e) = vm.wait_realized(Duration::from_secs(300)) {
            vm.truth.errors.push(format!("{e:#}"));
            failed = Some(e);
        }
        vm.truth.vmlck_kb_alive = status_kb(vm.truth.pid, "VmLck:");
        vm.truth.vmpin_kb_alive = status_kb(vm.truth.pid, "VmPin:");
    }
    t.refcount_alive = zp.refcount().ok();
    if failed.is_none()
        && let Some(cmd) = while_alive
    {
        // The agent publishes at its counters' pace.
        std::thread::sleep(Duration::from_millis(1500));
        let ok = Command::new("sh").arg("-c").arg(cmd).status()?.success();
        if !ok {
            eprintln!("vfio-zp-workload: --while-alive command failed: {cmd}");
        }
    }
    for vm in &mut vms {
        if let Err(e) = vm.stop(s.stop) {
            vm.truth.errors.push(format!("stopping: {e:#}"));
            let _ = vm.child.kill();
        }
    }
    for mut vm in vms {
        match vm.child.wait() {
            Ok(st) => vm.truth.exit = st.to_string(),
            Err(e) => vm.truth.errors.push(format!("wait: {e}")),
        }
        // Dropping the monitor's pipe only after the exit: closing it first
        // would be a second way to quit.
        drop(vm.monitor.take());
        t.vms.push(vm.truth);
    }
    // The container's release runs in the exiting task before wait returns;
    // give any deferred work a moment anyway.
    std::thread::sleep(Duration::from_millis(500));
    t.refcount_after = zp.refcount().ok();
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroups_are_shaped_like_systemd_machined_scopes() {
        assert_eq!(
            cgroup_for(10, "pc-quit-1"),
            r"machine.slice/machine-qemu\x2d10\x2dpc\x2dquit\x2d1.scope"
        );
    }

    #[test]
    fn scenario_names_are_unique_and_found() {
        for s in &VMM_SCENARIOS {
            assert_eq!(find(s.name).map(|f| f.name), Some(s.name));
        }
        assert!(find("ro-read-touched").is_none());
    }
}
