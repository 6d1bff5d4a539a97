//! A real VMM as the VFIO client: QEMU started on the guest's vfio-pci
//! devices, directly (each VM in a cgroup shaped like systemd-machined's)
//! or by libvirt (see [`super::libvirt`]), then stopped the way VMs stop
//! (its monitor's `quit`, SIGTERM, SIGKILL, the guest's own poweroff,
//! `virsh destroy` and `shutdown`). QEMU maps all its RAM read-write and
//! its ROMs read-only at realize, and exits with those mappings live: the
//! container is released after the mm is gone. A device unplugged from a
//! running VM (QMP `device_del`, `virsh detach-device`) is unmapped with the
//! mm alive; one plugged again is mapped in a new container. The VM's guest
//! is [`super::guest_rom`], which acks the unplug and powers off.
//! The truth around it comes from the kernel alone: the zero page's
//! `_refcount` (kcore), VmLck and VmPin while the VMM lives.
use std::{
    io::{Read, Write},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use wait_timeout::ChildExt;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::vm::{RAM_MIB, RUN_DIR, VmTruth, device_of};
use super::{guest_rom, kcore::ZeroPageTruth, qmp, status_kb};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// `quit` on the human monitor: QEMU exits at once, mappings live.
    Quit,
    /// SIGTERM: what libvirt's `virsh destroy` sends first.
    Term,
    /// SIGKILL: a VMM killed outright (OOM killer, `destroy` escalating).
    Kill,
    /// QMP `system_powerdown`: the guest powers itself off (ACPI S5) and
    /// QEMU exits, mappings live, as after `virsh shutdown`.
    Powerdown,
}

/// Who starts the VMM.
#[derive(Clone, Copy, Debug)]
pub enum Client {
    /// QEMU started here, `vms` at once, each on its own device.
    Qemu {
        machine: &'static str,
        vms: usize,
        stop: Stop,
        /// RLIMIT_MEMLOCK in MiB, with CAP_IPC_LOCK dropped (as libvirt
        /// runs QEMU): `None` keeps root's (type1 then never refuses).
        memlock_mib: Option<u64>,
        /// The VM runs; its device is unplugged (`device_del`) and plugged
        /// again (`device_add`) over QMP before it stops.
        hotplug: bool,
    },
    /// A libvirt domain (`virsh start --paused`, `virsh destroy`).
    Libvirt {
        /// Started without devices: the hostdev is attached live, the VM
        /// resumed, the hostdev detached and attached again, the domain
        /// shut down (`virsh shutdown`) rather than destroyed.
        hotplug: bool,
        /// `<memtune><hard_limit>`: libvirt's RLIMIT_MEMLOCK and the
        /// domain cgroup's memory.max at once.
        hard_limit_mib: Option<u64>,
    },
}

#[derive(Clone, Copy, Debug)]
pub struct VmmScenario {
    pub name: &'static str,
    pub about: &'static str,
    pub client: Client,
    /// The VM does not get to run: type1 refuses the map (memlock), or the
    /// domain's memory cgroup kills QEMU first. Its end is the truth kept.
    pub refused: bool,
}

const fn qemu(machine: &'static str, vms: usize, stop: Stop, memlock_mib: Option<u64>) -> Client {
    Client::Qemu {
        machine,
        vms,
        stop,
        memlock_mib,
        hotplug: false,
    }
}

pub const VMM_SCENARIOS: [VmmScenario; 8] = [
    VmmScenario {
        name: "qemu-pc-quit",
        about: "one QEMU (-M pc) on a vfio-pci device, stopped by `quit` on its monitor",
        client: qemu("pc", 1, Stop::Quit, None),
        refused: false,
    },
    VmmScenario {
        name: "qemu-q35-term",
        about: "one QEMU (-M q35) without CAP_IPC_LOCK under RLIMIT_MEMLOCK twice its RAM (as libvirt runs it), stopped by SIGTERM",
        client: qemu("q35", 1, Stop::Term, Some(2 * RAM_MIB)),
        refused: false,
    },
    VmmScenario {
        name: "qemu-two-kill",
        about: "two QEMUs (-M pc) at once, each on its own device, both killed (SIGKILL)",
        client: qemu("pc", 2, Stop::Kill, None),
        refused: false,
    },
    VmmScenario {
        name: "qemu-hotplug",
        about: "one running QEMU (-M pc): its device unplugged (QMP device_del) and plugged again (device_add), then the guest powers off (system_powerdown)",
        client: Client::Qemu {
            machine: "pc",
            vms: 1,
            stop: Stop::Powerdown,
            memlock_mib: None,
            hotplug: true,
        },
        refused: false,
    },
    VmmScenario {
        name: "qemu-memlock-tight",
        about: "QEMU without CAP_IPC_LOCK, RLIMIT_MEMLOCK half its RAM: type1 refuses the map",
        client: qemu("pc", 1, Stop::Quit, Some(RAM_MIB / 2)),
        refused: true,
    },
    VmmScenario {
        name: "libvirt-destroy",
        about: "a libvirt domain with a <hostdev> and a <hard_limit> that fits, started paused, destroyed",
        client: Client::Libvirt {
            hotplug: false,
            hard_limit_mib: Some(super::libvirt::FITS_MIB),
        },
        refused: false,
    },
    VmmScenario {
        name: "libvirt-hotplug",
        about: "a libvirt domain started without devices, a <hostdev> attached live (attach-device), detached (detach-device) and attached again while it runs, shut down (virsh shutdown)",
        client: Client::Libvirt {
            hotplug: true,
            hard_limit_mib: None,
        },
        refused: false,
    },
    VmmScenario {
        name: "libvirt-hard-limit-tight",
        about: "a libvirt domain whose <hard_limit> is far below its RAM: its memory cgroup kills QEMU as it starts",
        client: Client::Libvirt {
            hotplug: false,
            // Far below QEMU's own anonymous memory, so the OOM kill is
            // prompt: at 8 MiB `virsh start` once hung for 20 minutes
            // (likely reclaim churn; see docs/kernel-behaviour.md).
            hard_limit_mib: Some(2),
        },
        refused: true,
    },
];

pub fn find(name: &str) -> Option<&'static VmmScenario> {
    VMM_SCENARIOS.iter().find(|s| s.name == name)
}

/// One VM's name and the libvirt-shaped cgroup it runs in: systemd-machined's
/// `machine-qemu\x2dN\x2dNAME.scope`, dashes of the name escaped as `\x2d`.
pub fn cgroup_for(id: usize, name: &str) -> String {
    format!(
        r"machine.slice/machine-qemu\x2d{id}\x2d{}.scope",
        name.replace('-', r"\x2d")
    )
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VmmTruth {
    pub scenario: String,
    /// `qemu` or `libvirt`.
    pub client: String,
    /// How QEMU was stopped (libvirt: `virsh destroy`).
    pub stop: Option<Stop>,
    pub refused: bool,
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

fn qmp_path(name: &str) -> String {
    format!("{RUN_DIR}/{name}.qmp")
}

/// What QEMU is started with.
struct Shape<'a> {
    machine: &'a str,
    ram_mib: u64,
    memlock_mib: Option<u64>,
    guest: Option<&'a Path>,
}

fn start(s: &VmmScenario, shape: &Shape, i: usize, group: &str) -> anyhow::Result<Vm> {
    let Shape {
        machine,
        ram_mib,
        memlock_mib,
        guest,
    } = *shape;
    let name = format!("{}-{}", s.name.trim_start_matches("qemu-"), i + 1);
    let cgroup = cgroup_for(10 + i, &name);
    let device = device_of(group)?;
    let dir = format!("/sys/fs/cgroup/{cgroup}");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating cgroup {dir}"))?;
    // The shell enters the cgroup and becomes QEMU, so QEMU's first VFIO
    // call is already attributed to the VM.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
        .arg("sh")
        .arg(&dir);
    let memlock_limit = memlock_mib.map(|m| m << 20);
    if let Some(b) = memlock_limit {
        // As libvirt runs QEMU: a memlock limit, and no CAP_IPC_LOCK to
        // exceed it (root's capabilities come back at exec unless the
        // bounding set lacks them).
        cmd.arg("prlimit").arg(format!("--memlock={b}:{b}")).args([
            "setpriv",
            "--bounding-set",
            "-ipc_lock",
        ]);
    }
    cmd.arg("qemu-system-x86_64")
        .args(["-M", machine, "-accel", "tcg", "-m", &ram_mib.to_string()])
        .args(["-nodefaults", "-display", "none", "-S", "-monitor", "stdio"])
        .args(["-name", &name])
        .args(["-device", &format!("vfio-pci,host={device},id=hostdev0")]);
    if let Some(rom) = guest {
        // A guest that runs, and QMP to drive it (wait=off: the monitor
        // on stdio still says when the machine is realized).
        cmd.arg("-bios").arg(rom).args([
            "-qmp",
            &format!("unix:{},server=on,wait=off", qmp_path(&name)),
        ]);
    }
    let mut child = cmd
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
            machine: machine.into(),
            device,
            pid: child.id(),
            memlock_limit,
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
            Stop::Powerdown => {
                let mut q = qmp::connect(&qmp_path(&self.truth.name))?;
                q.execute(&qapi::qmp::system_powerdown {})
                    .context("system_powerdown")?;
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

    /// With the VM running, its device unplugged and plugged again over
    /// QMP, VmLck read at each step; `while_alive` runs while it is out.
    fn replug(&mut self, while_alive: Option<&str>) -> anyhow::Result<()> {
        let mut q = qmp::connect(&qmp_path(&self.truth.name))?;
        let pid = self.truth.pid;
        self.truth.vmlck_kb_first = status_kb(pid, "VmLck:");
        q.execute(&qapi::qmp::cont {}).context("cont")?;
        q.execute(&qapi::qmp::device_del {
            id: "hostdev0".into(),
        })
        .context("device_del")?;
        qmp::wait_deleted(&mut q, "hostdev0", Duration::from_secs(60))?;
        self.truth.vmlck_kb_unplugged = status_kb(pid, "VmLck:");
        snapshot(while_alive, "unplugged");
        let mut host = qapi::Dictionary::new();
        host.insert("host".into(), self.truth.device.clone().into());
        q.execute(&qapi::qmp::device_add {
            driver: "vfio-pci".into(),
            id: Some("hostdev1".into()),
            bus: None,
            arguments: host,
        })
        .context("device_add")?;
        Ok(())
    }

    /// Waits for the process to end after a stop that the guest carries out.
    fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<()> {
        match self.child.wait_timeout(timeout)? {
            Some(_) => Ok(()),
            None => bail!("still running {timeout:?} after the stop"),
        }
    }
}

/// Runs the lab's `--while-alive` command (it prints the agent's snapshot,
/// and keeps it) at a moment of a VM's life, named in `VFIO_ZP_PHASE`:
/// `alive`, or `unplugged` while a hot-plugged device is out. The command
/// runs again, 30 s at most, until the snapshot's time (`verdicts.t_ns`,
/// kernel monotonic) has reached this moment: the agent publishes at its
/// counters' pace and may trail a slow guest by seconds, and a snapshot
/// from before the moment would show the VM's state half seen.
pub fn snapshot(cmd: Option<&str>, phase: &str) {
    let Some(cmd) = cmd else { return };
    let since = monotonic_ns();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .env("VFIO_ZP_PHASE", phase)
            .output();
        let t_ns = match &out {
            Ok(o) if o.status.success() => serde_json::from_slice::<serde_json::Value>(&o.stdout)
                .ok()
                .and_then(|v| v["verdicts"]["t_ns"].as_u64()),
            other => {
                eprintln!("vfio-zp-workload: --while-alive `{cmd}` ({phase}): {other:?}");
                None
            }
        };
        if t_ns.is_some_and(|t| t >= since) {
            return;
        }
        if Instant::now() >= deadline {
            eprintln!(
                "vfio-zp-workload: --while-alive ({phase}): the snapshot did not reach {since} ns in 30 s (last {t_ns:?})"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// CLOCK_MONOTONIC, the clock of the agent's event and counters times.
fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs `s` on `groups` (one per VM); `while_alive` is a shell command run
/// while every VM lives, after its readings (the lab snapshots the agent).
pub fn run(
    s: &VmmScenario,
    groups: &[String],
    while_alive: Option<&str>,
) -> anyhow::Result<VmmTruth> {
    let zp = ZeroPageTruth::open()?;
    let mut t = VmmTruth {
        scenario: s.name.into(),
        refused: s.refused,
        kernel_release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .into(),
        refcount_before: zp.refcount().ok(),
        ..Default::default()
    };
    let alive = |t: &mut VmmTruth, running: bool| {
        t.refcount_alive = zp.refcount().ok();
        if running {
            snapshot(while_alive, "alive");
        }
    };
    match s.client {
        Client::Qemu {
            machine,
            vms,
            stop,
            memlock_mib,
            hotplug,
        } => {
            t.client = "qemu".into();
            t.stop = Some(stop);
            let guest = match stop == Stop::Powerdown || hotplug {
                true => Some(guest_rom::build(Path::new(RUN_DIR))?),
                false => None,
            };
            let q = QemuRun {
                machine,
                n: vms,
                stop,
                memlock_mib,
                hotplug,
                guest: guest.as_deref(),
                while_alive,
            };
            run_qemu(s, &mut t, groups, &q, alive)?;
        }
        Client::Libvirt {
            hotplug,
            hard_limit_mib,
        } => {
            t.client = "libvirt".into();
            let group = groups.first().context("no VFIO group")?;
            let mut alive = Some(alive);
            let vm =
                super::libvirt::run(s.name, s.refused, group, hotplug, hard_limit_mib, |phase| {
                    match alive.take_if(|_| phase == "alive") {
                        Some(f) => f(&mut t, !s.refused),
                        None => snapshot(while_alive, phase),
                    }
                })?;
            t.vms.push(vm);
        }
    }
    // The container's release runs in the exiting task before wait returns;
    // give any deferred work a moment anyway.
    std::thread::sleep(Duration::from_millis(500));
    t.refcount_after = zp.refcount().ok();
    Ok(t)
}

struct QemuRun<'a> {
    machine: &'a str,
    n: usize,
    stop: Stop,
    memlock_mib: Option<u64>,
    hotplug: bool,
    guest: Option<&'a Path>,
    while_alive: Option<&'a str>,
}

fn run_qemu(
    s: &VmmScenario,
    t: &mut VmmTruth,
    groups: &[String],
    q: &QemuRun,
    alive: impl FnOnce(&mut VmmTruth, bool),
) -> anyhow::Result<()> {
    let n = q.n;
    anyhow::ensure!(
        groups.len() >= n,
        "{} needs {n} VFIO groups, {} given",
        s.name,
        groups.len()
    );
    let mut vms = Vec::new();
    let shape = Shape {
        machine: q.machine,
        ram_mib: RAM_MIB,
        memlock_mib: q.memlock_mib,
        guest: q.guest,
    };
    for (i, g) in groups.iter().take(n).enumerate() {
        vms.push(start(s, &shape, i, g)?);
    }
    let mut running = true;
    for vm in &mut vms {
        match vm.wait_realized(Duration::from_secs(300)) {
            Err(e) if s.refused => {
                vm.truth.refused = Some(format!("{e:#}"));
                running = false;
            }
            Err(e) => {
                vm.truth.errors.push(format!("{e:#}"));
                running = false;
            }
            Ok(()) if s.refused => vm
                .truth
                .errors
                .push("started, though its memlock limit is below its RAM".into()),
            Ok(()) => {}
        }
        if q.hotplug
            && running
            && let Err(e) = vm.replug(q.while_alive)
        {
            vm.truth.errors.push(format!("hot-plug: {e:#}"));
        }
        vm.truth.vmlck_kb_alive = status_kb(vm.truth.pid, "VmLck:");
        vm.truth.vmpin_kb_alive = status_kb(vm.truth.pid, "VmPin:");
    }
    alive(t, running);
    for vm in &mut vms {
        if vm.truth.refused.is_some() {
            continue;
        }
        let stopped = vm.stop(q.stop).and_then(|()| match q.stop {
            // The guest powers off: QEMU exits on its own.
            Stop::Powerdown => vm.wait_exit(Duration::from_secs(60)),
            _ => Ok(()),
        });
        if let Err(e) = stopped {
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
    Ok(())
}

/// The bench's real VM (`--vm-lifecycle-mib`): not a lab scenario.
const LIFECYCLE: VmmScenario = VmmScenario {
    name: "qemu-lifecycle",
    about: "one QEMU (-M pc, paused) started until its mappings are made, then quit",
    client: qemu("pc", 1, Stop::Quit, None),
    refused: false,
};

/// One start and stop of the bench's VM, as `bench-*.json` holds it (the
/// bench reads `runs[0].map_ns` and `unmap_ns`, as of the other workloads).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LifecycleRun {
    pub ram_mib: u64,
    /// From QEMU's start until its monitor answers: the machine realized
    /// and every DMA mapping made (all its RAM pinned, read-write).
    pub map_ns: u64,
    /// From `quit` until QEMU has exited: its container released, every
    /// page unpinned, with the mm.
    pub unmap_ns: u64,
    /// VmLck once realized: the RAM type1 charged (the pin happened).
    pub vmlck_kb: Option<u64>,
    pub exit: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Lifecycle {
    pub scenario: String,
    pub runs: Vec<LifecycleRun>,
}

/// Starts one QEMU with `ram_mib` of RAM on `group`'s device, paused, waits
/// until its mappings are made, quits it and waits for its exit: the two
/// spans a VM's start and stop cost with the probes on the way.
pub fn lifecycle(group: &str, ram_mib: u64) -> anyhow::Result<Lifecycle> {
    let shape = Shape {
        machine: "pc",
        ram_mib,
        memlock_mib: None,
        guest: None,
    };
    let t0 = Instant::now();
    let mut vm = start(&LIFECYCLE, &shape, 0, group)?;
    if let Err(e) = vm.wait_realized(Duration::from_secs(1800)) {
        let _ = vm.child.kill();
        let _ = vm.child.wait();
        return Err(e);
    }
    let map_ns = t0.elapsed().as_nanos() as u64;
    let vmlck_kb = status_kb(vm.truth.pid, "VmLck:");
    let t1 = Instant::now();
    vm.stop(Stop::Quit)?;
    let st = vm.child.wait().context("waiting for QEMU")?;
    let unmap_ns = t1.elapsed().as_nanos() as u64;
    drop(vm.monitor.take());
    anyhow::ensure!(st.success(), "QEMU exited {st}: {}", vm.output().trim());
    Ok(Lifecycle {
        scenario: LIFECYCLE.name.into(),
        runs: vec![LifecycleRun {
            ram_mib,
            map_ns,
            unmap_ns,
            vmlck_kb,
            exit: st.to_string(),
        }],
    })
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
