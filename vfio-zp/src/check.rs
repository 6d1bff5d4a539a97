//! `vfio-zp check`: can this host run the agent, and what will it see?
//! Each finding is ok, degraded (runs, with less coverage) or unusable;
//! the exit code is the worst of them (0 / 1 / 3: 2 is a usage error).
use std::time::Duration;

use serde::Serialize;

use crate::stream::ProbeState;

use crate::model::behaviour::{KernelVersion, TRAITS};
use crate::probes::{
    self, btf,
    kallsyms::Kallsyms,
    kcore::ZeroRefcount,
    preflight,
    probe_points::{self, POINTS, Resolution},
    programs, tracefs, zero_page,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Ok,
    Degraded,
    Unusable,
}

impl Level {
    pub fn exit_code(self) -> u8 {
        match self {
            Level::Ok => 0,
            Level::Degraded => 1,
            Level::Unusable => 3,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub what: String,
    pub level: Level,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub kernel: String,
    pub findings: Vec<Finding>,
    pub level: Level,
}

/// Verdicts and the probes they cannot do without.
const VERDICTS: [(&str, &[&str]); 4] = [
    (
        "zero-page leak detection",
        &[
            "type1_pin",
            "gup_pin_remote",
            "gup_unpin_page",
            "gup_unpin_pages",
        ],
    ),
    (
        "locked_vm and memlock advice",
        &["type1_pin", "type1_unpin", "lock_acct"],
    ),
    (
        "per-container attribution",
        &["type1_open", "type1_ioctl", "remove_dma"],
    ),
    ("host zero page refcount", &["gup_pin_remote"]),
];

struct Checks(Vec<Finding>);

impl Checks {
    fn add(&mut self, what: &str, level: Level, detail: impl Into<String>) {
        self.0.push(Finding {
            what: what.into(),
            level,
            detail: detail.into(),
        });
    }

    fn result<E: std::fmt::Display>(&mut self, what: &str, r: Result<String, E>, bad: Level) {
        match r {
            Ok(d) => self.add(what, Level::Ok, d),
            Err(e) => self.add(what, bad, e.to_string()),
        }
    }
}

/// Runs every check; `load` also loads the probes through the verifier.
pub fn run(load: bool, agent: Option<&str>) -> Report {
    let mut c = Checks(Vec::new());
    let release = probes::release();
    let version = probes::version();
    c.result(
        "privileges",
        preflight::check_privileges().map(|_| "CAP_BPF/CAP_PERFMON or CAP_SYS_ADMIN".into()),
        Level::Unusable,
    );
    c.result(
        "kernel BTF",
        preflight::check_btf().map(|_| btf::VMLINUX_BTF.into()),
        Level::Unusable,
    );
    c.result(
        "kprobes",
        preflight::check_kprobes().map(|_| "kprobe PMU".into()),
        Level::Unusable,
    );
    let layout = btf::read_page_layout();
    c.result(
        "struct page layout",
        layout
            .as_ref()
            .map(|l| format!("{} bytes, _refcount at {}", l.size, l.refcount_offset))
            .map_err(|e| format!("{e:#}")),
        Level::Unusable,
    );
    let zero_pfn = zero_page::zero_pfn_from_pagemap();
    c.result(
        "zero page identity",
        zero_pfn
            .as_ref()
            .map(|_| "pfn from /proc/self/pagemap".into())
            .map_err(|e| format!("{e:#}")),
        Level::Unusable,
    );
    let syms = Kallsyms::read(probe_points::wanted_symbol);
    match &syms {
        Ok(s) if s.addresses_hidden => {
            c.add("kallsyms", Level::Unusable, preflight::hidden_addresses())
        }
        Ok(_) => c.add("kallsyms", Level::Ok, "/proc/kallsyms readable"),
        Err(e) => c.add("kallsyms", Level::Unusable, format!("/proc/kallsyms: {e}")),
    }
    let bpffs = std::path::Path::new(probes::pins::ROOT)
        .parent()
        .is_some_and(probes::pins::is_bpffs);
    if bpffs {
        c.add(
            "bpffs",
            Level::Ok,
            "mounted at /sys/fs/bpf: counters and unread events survive agent restarts",
        );
    } else {
        c.add("bpffs", Level::Degraded, "not mounted at /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf): the exact counters restart with the agent");
    }
    let filter = tracefs::read_filter_functions();
    if filter.is_some() {
        c.add("tracefs", Level::Ok, "available_filter_functions readable");
    } else {
        c.add("tracefs", Level::Degraded, "available_filter_functions unreadable: untraceable (notrace) symbols cannot be told apart");
    }
    let type1 = preflight::type1_loaded();
    if type1 {
        c.add("vfio_iommu_type1", Level::Ok, "loaded");
    } else {
        c.add("vfio_iommu_type1", Level::Degraded, "not loaded: the agent attaches its probes when it loads; VMs whose VMM uses iommufd never load it and are invisible to vfio-zp");
    }
    if let (Ok(s), Ok(l), Ok(pfn)) = (&syms, &layout, &zero_pfn) {
        let cfg = zero_page::config(s, *l, *pfn);
        c.result(
            "zero page refcount (kcore)",
            ZeroRefcount::open(*pfn, cfg.vmemmap_base_addr, cfg.vmemmap_const, *l)
                .and_then(|z| z.read())
                .map(|r| {
                    // With no agent's record to explain them, every pin's
                    // worth above the base is unexplained here.
                    let above = (i64::from(r) - 1).max(0) / 1024;
                    if above > 0 {
                        format!(
                            "_refcount {r}: {above} pins' worth above its base (held now, or leaked before: the agent's vfio_zp_zero_page_unexplained_pins counts those nobody it saw took)"
                        )
                    } else {
                        format!("_refcount {r}: nothing held above its base")
                    }
                })
                .map_err(|e| format!("{e:#}: the refcount comes from the probes' readings only")),
            Level::Degraded,
        );
    }
    let mut missing = Vec::new();
    if let Ok(s) = &syms {
        for p in &POINTS {
            let what = format!("probe {} ({})", p.label, p.function);
            match probe_points::resolve(p, s, filter.as_ref(), type1) {
                Resolution::Found { symbol } => c.add(&what, Level::Ok, format!("at {symbol}")),
                Resolution::ModuleNotLoaded => {
                    c.add(&what, Level::Ok, "resolved when vfio_iommu_type1 loads")
                }
                r => {
                    missing.push(p.label);
                    let why = match r {
                        Resolution::NotTraceable { symbol } => format!("{symbol} is not traceable"),
                        _ => "not in kallsyms (inlined or absent)".into(),
                    };
                    // Only a loss some verdict needs degrades the agent.
                    let needed = VERDICTS.iter().any(|(_, needs)| needs.contains(&p.label));
                    let level = if needed { Level::Degraded } else { Level::Ok };
                    c.add(&what, level, format!("{why}; lost: {}", p.loses))
                }
            }
        }
    }
    for (verdict, needs) in VERDICTS {
        let gone: Vec<&str> = needs
            .iter()
            .copied()
            .filter(|n| missing.contains(n))
            .collect();
        if gone.is_empty() {
            c.add(&format!("verdict: {verdict}"), Level::Ok, "covered");
        } else {
            c.add(
                &format!("verdict: {verdict}"),
                Level::Degraded,
                format!("uncertain without {}", gone.join(", ")),
            );
        }
    }
    let v = KernelVersion::parse(&release, version.as_deref());
    for t in TRAITS {
        let prior = v.and_then(|v| v.prior(t));
        c.add(
            &format!("behaviour {}", t.label()),
            Level::Ok,
            match prior {
                Some(p) => format!("{p} by the kernel version's history; the agent confirms it from what it observes"),
                None => "not settled by the kernel version; the agent infers it from what it observes".into(),
            },
        );
    }
    // The verifier needs only the privileges (not kprobes or type1).
    if load && c.0.first().is_some_and(|f| f.level == Level::Ok) {
        c.result(
            "probes load (verifier)",
            programs::load_object().map(|_| {
                format!(
                    "{} programs accepted",
                    POINTS
                        .iter()
                        .map(|p| p.entry.is_some() as usize + p.ret.is_some() as usize)
                        .sum::<usize>()
                )
            }),
            Level::Unusable,
        );
    }
    if let Some(addr) = agent {
        agent_probes(&mut c, addr);
    }
    let level = c.0.iter().map(|f| f.level).max().unwrap_or(Level::Ok);
    Report {
        kernel: format!(
            "{release} ({})",
            v.map(|v| v.to_string()).unwrap_or_else(|| "?".into())
        ),
        findings: c.0,
        level,
    }
}

/// The running agent's probe states: what it decided on this kernel, and
/// the evidence for each point it left off.
fn agent_probes(c: &mut Checks, addr: &str) {
    let url = format!("http://{addr}/api/v1/snapshot");
    let snap = match crate::top::Source::Agent(url.clone()).fetch_within(Duration::from_secs(5)) {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(e) => {
            c.add("running agent", Level::Degraded, format!("{e:#}"));
            return;
        }
    };
    let count = |st: ProbeState| snap.probes.iter().filter(|p| p.state == st).count();
    c.add(
        "running agent",
        Level::Ok,
        format!(
            "at {addr}: probes {}/{} attached, {} left off as not needed",
            count(ProbeState::Attached),
            snap.probes.len(),
            count(ProbeState::NotNeeded)
        ),
    );
    for p in snap
        .probes
        .iter()
        .filter(|p| p.state == ProbeState::NotNeeded)
    {
        c.add(
            &format!("agent: probe {} ({})", p.probe, p.function),
            Level::Ok,
            format!("not needed: {}", p.detail.as_deref().unwrap_or("")),
        );
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "vfio-zp check on kernel {}", self.kernel)?;
        for x in &self.findings {
            let tag = match x.level {
                Level::Ok => "ok  ",
                Level::Degraded => "WARN",
                Level::Unusable => "FAIL",
            };
            writeln!(f, "{tag} {}: {}", x.what, x.detail)?;
        }
        let summary = match self.level {
            Level::Ok => "ok: the agent can run with full coverage",
            Level::Degraded => "degraded: the agent runs; some verdicts are uncertain (WARN lines)",
            Level::Unusable => "unusable: the agent cannot run here (FAIL lines)",
        };
        writeln!(f, "{summary}")
    }
}
