//! Real VMMs (QEMU on the guest's vfio-pci devices, started directly in
//! systemd-machined-shaped cgroups or by libvirt in its own) under the
//! recorder, checked against the kernel's own truth written by the
//! workload (`vmm-<scenario>.json`): VmLck, VmPin and RLIMIT_MEMLOCK while
//! the VM lived, the zero page's `_refcount` before, during and after, and
//! how a VM that must not start ended. What must hold on every kernel:
//! each VM is named, its container closed, nothing left pinned or charged
//! once it exited (the mm went first: type1's uncharge found none), a
//! device unplugged from a running VM released at once (its mm alive), a
//! refused map reported with its limit and shortfall, and the leak, where
//! there is one, exactly the refcount's growth.
use std::path::Path;

use serde::Deserialize;
use vfio_zp::{
    export::snapshot::Snapshot,
    model::verdict::{ContainerVerdict, MemlockAdvice, Verdicts},
    stream::event::{Event, What},
    stream::{Line, event::Memlock, read_path},
};

const PIN_BIAS: i64 = 1024;
const ESRCH: i32 = 3;

/// VMM scenarios the lab runs (the workload's `--list-vmm-scenarios`).
const SCENARIOS: usize = 8;

#[derive(Debug, Deserialize)]
pub struct VmmTruth {
    pub scenario: String,
    /// `qemu` or `libvirt`.
    pub client: String,
    /// The VM must not get to run.
    pub refused: bool,
    pub refcount_before: Option<i32>,
    pub refcount_alive: Option<i32>,
    pub refcount_after: Option<i32>,
    pub vms: Vec<VmTruth>,
}

#[derive(Debug, Deserialize)]
pub struct VmTruth {
    pub name: String,
    pub pid: u32,
    /// Hot-plug: VmLck as first plugged and once unplugged (`alive` is
    /// then after the device was plugged again).
    #[serde(default)]
    pub vmlck_kb_first: Option<u64>,
    #[serde(default)]
    pub vmlck_kb_unplugged: Option<u64>,
    pub vmlck_kb_alive: Option<u64>,
    pub vmpin_kb_alive: Option<u64>,
    pub memlock_limit: Option<u64>,
    pub exit: String,
    pub refused: Option<String>,
    pub errors: Vec<String>,
}

/// Every `vmm-<scenario>.json` in `dir`.
fn truths(dir: &Path) -> Result<Vec<VmmTruth>, String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| e.to_string())?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let snapshot = name.ends_with("-alive.json") || name.ends_with("-unplugged.json");
        if name.starts_with("vmm-") && name.ends_with(".json") && !snapshot {
            let text = std::fs::read_to_string(e.path()).map_err(|e| format!("{name}: {e}"))?;
            out.push(serde_json::from_str(&text).map_err(|e| format!("{name}: {e}"))?);
        }
    }
    out.sort_by(|a: &VmmTruth, b| a.scenario.cmp(&b.scenario));
    Ok(out)
}

/// The zero page's refcount after each VMM scenario in `dir` (none where
/// the lab ran no VMM, as in the golden fixtures).
pub fn refcounts_after(dir: &Path) -> Vec<i32> {
    truths(dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|t| t.refcount_after)
        .collect()
}

/// How the agent should report a limit the workload read (u64::MAX: unlimited).
fn memlock(limit: u64) -> Memlock {
    if limit == u64::MAX {
        Memlock::Unlimited
    } else {
        Memlock::Bytes(limit)
    }
}

/// A process's type1 charges: (pages charged, pages uncharged, pages
/// released with no mm left, those calls).
fn charges(events: &[&Event], pid: u32) -> (i64, i64, i64, usize) {
    let mut c = (0, 0, 0, 0);
    for e in events.iter().filter(|e| e.tgid == pid) {
        if let What::LockAcct { npage, ret, .. } = e.what {
            match ret {
                0 if npage > 0 => c.0 += npage,
                0 => c.1 -= npage,
                r if r == -ESRCH && npage < 0 => {
                    c.2 -= npage;
                    c.3 += 1;
                }
                _ => {}
            }
        }
    }
    c
}

/// The VM's containers: its process's, or (a VM that never ran) its name's.
fn of_vm<'a>(containers: &'a [ContainerVerdict], vm: &VmTruth) -> Vec<&'a ContainerVerdict> {
    containers
        .iter()
        .filter(|c| (vm.pid != 0 && c.tgid == vm.pid) || c.name == vm.name)
        .collect()
}

/// A container the VM is done with: its name, closed, nothing pinned or
/// charged in the kernel's column or the model's.
fn done_with(c: &ContainerVerdict, vm: &VmTruth) -> bool {
    c.name == vm.name
        && !c.open
        && c.pinned_pages.total() == 0
        && c.locked_vm_pages_kernel == 0
        && c.locked_vm_pages_model == 0
}

fn state(c: &ContainerVerdict) -> String {
    format!(
        "container {} {:?} open {} pinned {} locked_vm kernel {} model {}",
        c.id,
        c.name,
        c.open,
        c.pinned_pages.total(),
        c.locked_vm_pages_kernel,
        c.locked_vm_pages_model
    )
}

fn advice<'a>(v: &'a Verdicts, vm: &VmTruth) -> Option<&'a MemlockAdvice> {
    v.processes
        .iter()
        .find(|p| (vm.pid != 0 && p.tgid == vm.pid) || p.name == vm.name)
}

pub fn check(kernel: &str, dir: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let truths = match truths(dir) {
        Ok(t) => t,
        Err(e) => return vec![format!("{kernel}: VMM truths: {e}")],
    };
    if truths.len() < SCENARIOS {
        bad.push(format!(
            "{kernel}: only {} of {SCENARIOS} VMM scenario truths (see vmm-*.txt)",
            truths.len()
        ));
    }
    let rec = match read_path(&dir.join(super::outputs::RECORDING)) {
        Ok(r) => r,
        Err(e) => return vec![format!("{kernel}: {e}")],
    };
    let events: Vec<&Event> = rec
        .lines
        .iter()
        .filter_map(|l| match l {
            Line::Event(e) => Some(e),
            _ => None,
        })
        .collect();
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let v: Verdicts = match serde_json::from_str(&read(super::outputs::VERDICTS)) {
        Ok(v) => v,
        Err(e) => return vec![format!("{kernel}: verdicts.json: {e}")],
    };
    let leaky = kernel == "5.10-leaky";
    let mut vms = 0;
    for t in &truths {
        let ctx = format!("{kernel}/{}", t.scenario);
        let snap = |phase: &str| -> Option<Snapshot> {
            serde_json::from_str(&read(&format!("vmm-{}-{phase}.json", t.scenario))).ok()
        };
        let (alive, unplugged) = (snap("alive"), snap("unplugged"));
        let mut leaked = 0;
        for vm in &t.vms {
            vms += !t.refused as usize;
            let ctx = format!("{ctx}/{} (pid {})", vm.name, vm.pid);
            if !vm.errors.is_empty() {
                bad.push(format!("{ctx}: the VM failed: {:?}", vm.errors));
                continue;
            }
            let adv = advice(&v, vm);
            if t.refused {
                match (&vm.refused, t.client.as_str(), adv) {
                    (None, ..) => bad.push(format!("{ctx}: started, but must not have")),
                    // type1 refused the map: reported, with the limit and the shortfall.
                    (Some(_), "qemu", Some(a))
                        if a.refusals > 0
                            && vm.memlock_limit.is_some_and(|l| a.memlock == memlock(l))
                            && a.shortfall_bytes > 0 => {}
                    // libvirt's hard_limit is memory.max too: the memory
                    // cgroup kills QEMU, which is no memlock refusal.
                    (Some(why), "libvirt", a)
                        if why.contains("oom-kill") && a.is_none_or(|a| a.refusals == 0) => {}
                    (Some(why), _, a) => bad.push(format!(
                        "{ctx}: ended with {why:?}; the agent's memlock advice: {:?}",
                        a.map(|a| (&a.memlock, a.refusals, a.shortfall_bytes, &a.advice))
                    )),
                }
                println!("  {ctx}: refused as expected: {:?}", vm.refused);
            } else {
                let (charged, uncharged, released, exits) = charges(&events, vm.pid);
                println!(
                    "  {ctx}: VmLck {:?} kB VmPin {:?} kB alive, memlock {:?}; charged {charged}, uncharged {uncharged}, released with no mm {released} in {exits} calls; {}",
                    vm.vmlck_kb_alive, vm.vmpin_kb_alive, vm.memlock_limit, vm.exit
                );
                // The kernel's locked_vm while the VM lived is what type1
                // charged net: q35's machine init unmaps and maps again with
                // its mm alive; the exit's uncharges find no mm.
                match vm.vmlck_kb_alive {
                    Some(kb) if kb as i64 == (charged - uncharged) * 4 && charged > uncharged => {}
                    other => bad.push(format!(
                        "{ctx}: VmLck {other:?} kB while alive, type1 charged {charged} - {uncharged} pages"
                    )),
                }
                // type1 charges locked_vm only; pinned_vm (VmPin) is iommufd's.
                if vm.vmpin_kb_alive != Some(0) {
                    bad.push(format!(
                        "{ctx}: VmPin {:?} kB under type1",
                        vm.vmpin_kb_alive
                    ));
                }
                // Hot-plug: the unplug released what the first plug charged,
                // with the mm alive, and the agent saw the container close.
                if t.scenario.ends_with("-hotplug") && vm.vmlck_kb_unplugged.is_none() {
                    bad.push(format!(
                        "{ctx}: a hot-plug scenario without its unplugged reading"
                    ));
                }
                if let Some(out) = vm.vmlck_kb_unplugged {
                    let first = vm.vmlck_kb_first.unwrap_or(0);
                    if out != 0 || first == 0 || uncharged * 4 != first as i64 {
                        bad.push(format!(
                            "{ctx}: VmLck {first} kB plugged, {out} kB unplugged; type1 uncharged {uncharged} pages with the mm alive"
                        ));
                    }
                    match &unplugged {
                        Some(s) => {
                            let cs = of_vm(&s.verdicts.containers, vm);
                            if cs.is_empty() || cs.iter().any(|c| !done_with(c, vm)) {
                                let cs: Vec<_> = cs.iter().map(|c| state(c)).collect();
                                bad.push(format!("{ctx}: unplugged, the snapshot shows {cs:?}"));
                            }
                        }
                        None => bad.push(format!("{ctx}: no snapshot while unplugged")),
                    }
                }
                // It exited with its mappings live: the uncharge found no mm.
                if exits == 0 || charged != uncharged + released {
                    bad.push(format!(
                    "{ctx}: charged {charged} pages, released {uncharged} + {released} with no mm ({exits} calls)"
                ));
                }
                // The limit it ran under, as the agent read it, and no refusal.
                if let Some(l) = vm.memlock_limit
                    && !adv.is_some_and(|a| a.memlock == memlock(l) && a.refusals == 0)
                {
                    bad.push(format!(
                        "{ctx}: RLIMIT_MEMLOCK {l}, the agent's advice {:?}",
                        adv.map(|a| (&a.memlock, a.refusals))
                    ));
                }
                // The agent's live figures while the VM ran, from its snapshot.
                match &alive {
                    Some(s) => {
                        let cs = of_vm(&s.verdicts.containers, vm);
                        let kernel_kb: i64 = cs.iter().map(|c| c.locked_vm_pages_kernel * 4).sum();
                        // Open now; a hot-plugged VM's first container closed.
                        let open = cs.iter().filter(|c| c.open).count();
                        let closed_ok = cs.iter().filter(|c| !c.open).all(|c| {
                            vm.vmlck_kb_unplugged.is_some() && c.pinned_pages.total() == 0
                        });
                        if open != 1 || !closed_ok || cs.iter().any(|c| c.name != vm.name) {
                            bad.push(format!(
                                "{ctx}: live snapshot containers {:?}",
                                cs.iter().map(|c| (&c.name, c.open)).collect::<Vec<_>>()
                            ));
                        }
                        if Some(kernel_kb) != vm.vmlck_kb_alive.map(|k| k as i64) {
                            bad.push(format!(
                            "{ctx}: the live snapshot's locked_vm {kernel_kb} kB, VmLck {:?} kB",
                            vm.vmlck_kb_alive
                        ));
                        }
                    }
                    None => bad.push(format!("{ctx}: no live snapshot")),
                }
            }
            // After the exit: named, closed, nothing pinned or charged.
            let cs = of_vm(&v.containers, vm);
            // A libvirt domain killed before it opened VFIO has none.
            if cs.is_empty() && !(t.refused && t.client == "libvirt") {
                bad.push(format!("{ctx}: no container in the final verdicts"));
            }
            for c in &cs {
                if !done_with(c, vm) {
                    bad.push(format!("{ctx}: after exit {}", state(c)));
                }
                leaked += c.zero_page_pins_leaked;
            }
            if let Some(p) = adv
                && p.locked_vm_bytes_kernel != 0
            {
                bad.push(format!(
                    "{ctx}: after exit the process shows locked_vm {} bytes",
                    p.locked_vm_bytes_kernel
                ));
            }
        }
        // The zero page: what the VMs leaked is exactly its growth.
        let (Some(before), Some(alive), Some(after)) =
            (t.refcount_before, t.refcount_alive, t.refcount_after)
        else {
            bad.push(format!("{ctx}: no refcount truth"));
            continue;
        };
        let growth = (after - before) as i64;
        println!(
            "  {ctx}: zero page refcount {before} -> {alive} -> {after}; the VMs' leaked pins {leaked} (x 1024 = {})",
            leaked * PIN_BIAS
        );
        if growth != leaked * PIN_BIAS {
            bad.push(format!(
                "{ctx}: refcount grew {growth}, the verdicts' leaked pins explain {}",
                leaked * PIN_BIAS
            ));
        }
        if leaky && leaked == 0 && !t.refused {
            bad.push(format!(
                "{ctx}: a real QEMU leaked nothing on the leaky kernel"
            ));
        }
        // Leaked references stay after the exit; nothing else moved.
        if (alive - before) as i64 != growth {
            bad.push(format!(
                "{ctx}: refcount moved {} while the VMs lived, {growth} for good",
                alive - before
            ));
        }
    }
    // The exits are counted, and never taken for a memlock refusal.
    let metrics = super::surfaces::parse_metrics(&read(super::outputs::METRICS));
    let exits = metrics
        .get("vfio_zp_uncharges_after_exit_total")
        .copied()
        .unwrap_or(0.0);
    if (exits as usize) < vms {
        bad.push(format!(
            "{kernel}: vfio_zp_uncharges_after_exit_total {exits} for {vms} VM exits"
        ));
    }
    let log = read(super::outputs::RECORDER_LOG);
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("WARN") && (l.contains("vfio_lock_acct") || l.contains("RLIMIT_MEMLOCK"))
        })
        .collect();
    // A refused map is worth a warning; an exit is not.
    let vm_pids: Vec<String> = truths
        .iter()
        .filter(|t| !t.refused)
        .flat_map(|t| &t.vms)
        .map(|vm| format!("[{}]", vm.pid))
        .collect();
    for l in warned {
        if vm_pids.iter().any(|p| l.contains(p.as_str())) {
            bad.push(format!("{kernel}: a VM's exit logged as a warning: {l}"));
        }
    }
    bad
}
