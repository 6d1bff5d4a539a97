//! What the running kernel does with the zero page, as explicit parameters
//! inferred from what the probes see. The kernel version only gives a prior;
//! observations win and every disagreement is reported.
use serde::{Deserialize, Serialize};

/// One kernel behaviour the model depends on (kernel-facts.md, "History").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trait {
    /// GUP adds GUP_PIN_COUNTING_BIAS to the zero page's refcount per pin
    /// (until c8070b787519, v6.5, backported to 6.1.y).
    GupPinsZeroPage,
    /// type1 unpins zero pages right after pinning them (873aefb376bb,
    /// v6.0 and 5.10.146+, reverted in v6.9 once GUP stopped pinning them).
    Type1UnpinsZeroPage,
    /// Read-only long-term pins of private anonymous memory unshare instead
    /// of pinning the zero page, and are charged (84209e87c696, v6.2).
    RoLongtermUnshares,
    /// put_pfn() skips reserved pfns such as the zero page: a zero-page pin
    /// that survives the pin call is never released by type1.
    PutPfnSkipsReserved,
}

pub const TRAITS: [Trait; 4] = [
    Trait::GupPinsZeroPage,
    Trait::Type1UnpinsZeroPage,
    Trait::RoLongtermUnshares,
    Trait::PutPfnSkipsReserved,
];

impl Trait {
    pub fn label(self) -> &'static str {
        match self {
            Trait::GupPinsZeroPage => "gup_pins_zero_page",
            Trait::Type1UnpinsZeroPage => "type1_unpins_zero_page",
            Trait::RoLongtermUnshares => "ro_longterm_unshares",
            Trait::PutPfnSkipsReserved => "put_pfn_skips_reserved",
        }
    }

    /// What a "yes" and a "no" observation are, for the report.
    fn evidence_words(self) -> (&'static str, &'static str) {
        match self {
            Trait::GupPinsZeroPage => (
                "refcount readings that moved by 1024 per zero-page pin",
                "refcount readings that stayed put across zero-page pins or unpins",
            ),
            Trait::Type1UnpinsZeroPage => (
                "type1 pin calls that unpinned their zero pages before returning",
                "type1 pin calls that returned holding GUP zero-page pins",
            ),
            Trait::RoLongtermUnshares => (
                "",
                "read-only long-term type1 pins that returned the zero page",
            ),
            Trait::PutPfnSkipsReserved => (
                "put_pfn calls on the zero page that released nothing",
                "put_pfn calls on the zero page that released it",
            ),
        }
    }
}

/// Kernel version as far as the release strings tell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
    /// The upstream sublevel, when known (distribution ABI numbers are not).
    pub sublevel: Option<u32>,
}

impl KernelVersion {
    /// From `uname -r` and `uname -v`. Debian puts the upstream version in
    /// `uname -v` ("... Debian 5.10.223-1 ..."); `5.10.0-32-amd64` alone
    /// does not say the sublevel.
    pub fn parse(release: &str, version: Option<&str>) -> Option<KernelVersion> {
        let nums = |s: &str| -> Option<(u32, u32, Option<u32>)> {
            let core = s.split(['-', '+', '~', ' ']).next()?;
            let mut it = core.split('.');
            let major = it.next()?.parse().ok()?;
            let minor = it.next()?.parse().ok()?;
            let sub = it.next().and_then(|x| x.parse().ok());
            Some((major, minor, sub))
        };
        let (major, minor, sub) = nums(release)?;
        let debian = version
            .and_then(|v| v.split("Debian ").nth(1))
            .and_then(nums)
            .filter(|(a, b, _)| (*a, *b) == (major, minor))
            .and_then(|(_, _, s)| s);
        // "X.Y.0-N-flavour" is a distribution ABI, not sublevel 0.
        let distro_abi = sub == Some(0) && release.contains('-');
        Some(KernelVersion {
            major,
            minor,
            sublevel: debian.or(if distro_abi { None } else { sub }),
        })
    }

    fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }

    /// What the kernel history table says, or None where it cannot tell.
    pub fn prior(&self, t: Trait) -> Option<bool> {
        let mm = (self.major, self.minor);
        match t {
            Trait::GupPinsZeroPage => match mm {
                _ if self.at_least(6, 5) => Some(false),
                (6, 1) => None, // fixed somewhere in 6.1.y
                _ => Some(true),
            },
            Trait::Type1UnpinsZeroPage => match mm {
                _ if self.at_least(6, 9) => Some(false),
                _ if self.at_least(6, 0) => Some(true),
                (5, 10) => self.sublevel.map(|s| s >= 146),
                (5, 15) | (5, 19) => None, // backported in these series too
                _ => Some(false),
            },
            Trait::RoLongtermUnshares => Some(self.at_least(6, 2)),
            Trait::PutPfnSkipsReserved => Some(true),
        }
    }
}

impl std::fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.sublevel {
            Some(s) => write!(f, "{}.{}.{s}", self.major, self.minor),
            None => write!(f, "{}.{}.y", self.major, self.minor),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Votes {
    pub yes: u64,
    pub no: u64,
    /// Observations from calls whose records may be incomplete (events
    /// lost meanwhile, the agent not running): set aside, never counted.
    #[serde(default)]
    pub set_aside: u64,
}

/// Priors and observations for every trait.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Behaviour {
    pub version: Option<KernelVersion>,
    votes: [Votes; 4],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Decided by what the probes saw.
    Observed,
    /// No observation yet: the kernel version's history says so.
    Prior,
    /// Neither: assumed the way that hides no leak.
    Assumed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraitReport {
    pub name: String,
    pub value: bool,
    pub source: Source,
    pub prior: Option<bool>,
    pub observed_yes: u64,
    pub observed_no: u64,
    /// Observations not counted because their calls' records may be
    /// incomplete (absent when none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub set_aside: u64,
    pub evidence: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contradiction: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Behaviour {
    pub fn new(version: Option<KernelVersion>) -> Behaviour {
        Behaviour {
            version,
            votes: Default::default(),
        }
    }

    pub fn observe(&mut self, t: Trait, yes: bool) {
        let v = &mut self.votes[t as usize];
        if yes { v.yes += 1 } else { v.no += 1 }
    }

    /// Takes back `n` observations made before the stream showed they may
    /// be incomplete (losses are counted at the next counters line).
    pub fn withdraw(&mut self, t: Trait, yes: bool, n: u64) {
        let v = &mut self.votes[t as usize];
        let count = if yes { &mut v.yes } else { &mut v.no };
        *count = count.saturating_sub(n);
        v.set_aside += n;
    }

    /// An observation not counted: its call may be missing records.
    pub fn set_aside(&mut self, t: Trait) {
        self.votes[t as usize].set_aside += 1;
    }

    pub fn prior(&self, t: Trait) -> Option<bool> {
        self.version.and_then(|v| v.prior(t))
    }

    fn decide(&self, t: Trait) -> (bool, Source) {
        let v = self.votes[t as usize];
        // Unsharing can only be disproved (a R/O pin got the zero page).
        let observed = match t {
            Trait::RoLongtermUnshares => (v.no > 0).then_some(false),
            _ if v.yes > v.no => Some(true),
            _ if v.no > v.yes => Some(false),
            _ => None,
        };
        match (observed, self.prior(t)) {
            (Some(o), _) => (o, Source::Observed),
            (None, Some(p)) => (p, Source::Prior),
            // Unknown: assume the kernel pins (and so can leak) rather than
            // report a clean bill of health nobody checked.
            (None, None) => (!matches!(t, Trait::RoLongtermUnshares), Source::Assumed),
        }
    }

    pub fn get(&self, t: Trait) -> bool {
        self.decide(t).0
    }

    /// Whether the value rests on an observation or the version's history
    /// (not merely assumed).
    pub fn known(&self, t: Trait) -> bool {
        self.decide(t).1 != Source::Assumed
    }

    pub fn report(&self, t: Trait) -> TraitReport {
        let (value, source) = self.decide(t);
        let v = self.votes[t as usize];
        let prior = self.prior(t);
        let (yes_words, no_words) = t.evidence_words();
        let mut parts = Vec::new();
        if !yes_words.is_empty() {
            parts.push(format!("{} {yes_words}", v.yes));
        }
        parts.push(format!("{} {no_words}", v.no));
        let aside = (v.set_aside > 0).then(|| {
            format!(
                "{} set aside (calls whose records may be incomplete: events lost or the agent not running)",
                v.set_aside
            )
        });
        let version = self
            .version
            .map(|v| v.to_string())
            .unwrap_or_else(|| "unknown".into());
        let mut evidence = match source {
            Source::Observed => parts.join("; "),
            Source::Prior => format!("no observation yet; prior from kernel {version}"),
            Source::Assumed => format!(
                "no observation yet and kernel {version} does not settle it; assumed {value}"
            ),
        };
        if let Some(a) = aside {
            evidence.push_str("; ");
            evidence.push_str(&a);
        }
        let contradiction = if v.yes > 0 && v.no > 0 && t != Trait::RoLongtermUnshares {
            Some(format!("observations disagree: {}", parts.join("; ")))
        } else {
            match (source, prior) {
                (Source::Observed, Some(p)) if p != value => Some(format!(
                    "kernel {version} should have {} = {p}, but the probes observe {value} (a patched or rebuilt module?)",
                    t.label()
                )),
                _ => None,
            }
        };
        TraitReport {
            name: t.label().into(),
            value,
            source,
            prior,
            observed_yes: v.yes,
            observed_no: v.no,
            set_aside: v.set_aside,
            evidence,
            contradiction,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(r: &str, u: Option<&str>) -> KernelVersion {
        KernelVersion::parse(r, u).unwrap()
    }

    #[test]
    fn versions_from_release_strings() {
        let deb = v(
            "5.10.0-32-amd64",
            Some("#1 SMP Debian 5.10.223-1 (2024-08-10)"),
        );
        assert_eq!((deb.major, deb.minor, deb.sublevel), (5, 10, Some(223)));
        assert_eq!(v("5.10.0-32-amd64", None).sublevel, None);
        assert_eq!(v("6.1.192", None).sublevel, Some(192));
        assert_eq!(v("6.12.0+deb13-amd64", None).sublevel, None);
        assert_eq!(
            v(
                "6.12.117+deb13-amd64",
                Some("#1 SMP PREEMPT_DYNAMIC Debian 6.12.117-1")
            )
            .sublevel,
            Some(117)
        );
        assert_eq!(
            v("5.15.0-91-generic", Some("#101-Ubuntu SMP")).sublevel,
            None
        );
        assert!(KernelVersion::parse("garbage", None).is_none());
    }

    #[test]
    fn priors_follow_the_history_table() {
        use Trait::*;
        let k = |r: &str| v(r, None);
        assert_eq!(k("5.10.140").prior(Type1UnpinsZeroPage), Some(false));
        assert_eq!(k("5.10.146").prior(Type1UnpinsZeroPage), Some(true));
        assert_eq!(k("5.10.0-32-amd64").prior(Type1UnpinsZeroPage), None);
        assert_eq!(k("6.8.1").prior(Type1UnpinsZeroPage), Some(true));
        assert_eq!(k("6.9.0").prior(Type1UnpinsZeroPage), Some(false));
        assert_eq!(k("5.10.223").prior(GupPinsZeroPage), Some(true));
        assert_eq!(k("6.1.192").prior(GupPinsZeroPage), None);
        assert_eq!(k("6.5.0").prior(GupPinsZeroPage), Some(false));
        assert_eq!(k("6.1.192").prior(RoLongtermUnshares), Some(false));
        assert_eq!(k("6.2.0").prior(RoLongtermUnshares), Some(true));
    }

    #[test]
    fn observations_beat_priors_and_contradictions_are_named() {
        let mut b = Behaviour::new(Some(v("5.10.223", None)));
        let t = Trait::Type1UnpinsZeroPage;
        assert_eq!(b.report(t).source, Source::Prior);
        assert!(b.get(t));
        for _ in 0..3 {
            b.observe(t, false);
        }
        let r = b.report(t);
        assert!(!r.value);
        assert_eq!(r.source, Source::Observed);
        assert!(r.contradiction.unwrap().contains("5.10.223"));
        b.observe(t, true);
        assert!(b.report(t).contradiction.unwrap().contains("disagree"));
    }

    #[test]
    fn unknown_kernels_assume_the_leaky_way() {
        let b = Behaviour::new(None);
        let r = b.report(Trait::GupPinsZeroPage);
        assert_eq!((r.value, r.source), (true, Source::Assumed));
        assert!(!b.get(Trait::RoLongtermUnshares));
    }

    #[test]
    fn unsharing_is_only_disproved() {
        let mut b = Behaviour::new(Some(v("6.12.117", None)));
        b.observe(Trait::RoLongtermUnshares, true);
        assert_eq!(b.report(Trait::RoLongtermUnshares).source, Source::Prior);
        b.observe(Trait::RoLongtermUnshares, false);
        let r = b.report(Trait::RoLongtermUnshares);
        assert!(!r.value && r.contradiction.is_some());
    }
}
