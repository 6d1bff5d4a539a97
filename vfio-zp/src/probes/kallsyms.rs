//! /proc/kallsyms: which functions exist (and under which suffixed names), and
//! where a few variables live. Addresses stay inside the agent: they go to the
//! probes' config map and nowhere else.
use std::collections::HashMap;

/// One symbol line: `ffffffffc0a01230 t vfio_pin_pages_remote\t[vfio_iommu_type1]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    pub addr: u64,
    pub kind: char,
    pub name: String,
    pub module: Option<String>,
}

pub fn parse_line(line: &str) -> Option<Symbol> {
    let mut it = line.split_whitespace();
    let addr = u64::from_str_radix(it.next()?, 16).ok()?;
    let kind = it.next()?.chars().next()?;
    let name = it.next()?.to_string();
    let module = it
        .next()
        .and_then(|m| m.strip_prefix('[')?.strip_suffix(']'))
        .map(str::to_string);
    Some(Symbol {
        addr,
        kind,
        name,
        module,
    })
}

/// The symbols vfio-zp cares about, by name.
#[derive(Clone, Debug, Default)]
pub struct Kallsyms {
    by_name: HashMap<String, Vec<Symbol>>,
    /// All addresses read as 0: kptr_restrict hides them from us.
    pub addresses_hidden: bool,
}

impl Kallsyms {
    /// Keeps only the symbols `keep` accepts (the file has ~200k lines).
    pub fn parse(text: &str, keep: impl Fn(&str) -> bool) -> Kallsyms {
        let mut by_name: HashMap<String, Vec<Symbol>> = HashMap::new();
        let (mut seen, mut nonzero) = (0usize, 0usize);
        for sym in text.lines().filter_map(parse_line) {
            seen += 1;
            if sym.addr != 0 {
                nonzero += 1;
            }
            if keep(&sym.name) {
                by_name.entry(sym.name.clone()).or_default().push(sym);
            }
        }
        Kallsyms {
            by_name,
            addresses_hidden: seen > 0 && nonzero == 0,
        }
    }

    pub fn read(keep: impl Fn(&str) -> bool) -> std::io::Result<Kallsyms> {
        Ok(Self::parse(
            &std::fs::read_to_string("/proc/kallsyms")?,
            keep,
        ))
    }

    pub fn get(&self, name: &str) -> Option<&Symbol> {
        self.by_name.get(name).and_then(|v| v.first())
    }

    /// Address of a variable, if kallsyms shows it.
    pub fn addr(&self, name: &str) -> Option<u64> {
        self.get(name).map(|s| s.addr).filter(|a| *a != 0)
    }

    /// Every name that is `base` or `base` plus a compiler suffix
    /// (`.constprop.0`, `.isra.0`, `.part.0`, ...), sorted with the plain name first.
    pub fn variants(&self, base: &str) -> Vec<&Symbol> {
        let mut v: Vec<&Symbol> = self
            .by_name
            .iter()
            .filter(|(n, _)| is_variant(base, n))
            .flat_map(|(_, s)| s.iter())
            .collect();
        v.sort_by(|a, b| (a.name.len(), &a.name).cmp(&(b.name.len(), &b.name)));
        v
    }
}

/// `name` is `base` itself or `base` followed by `.suffix` parts of GCC/Clang clones.
pub fn is_variant(base: &str, name: &str) -> bool {
    match name.strip_prefix(base) {
        Some("") => true,
        Some(rest) => {
            rest.starts_with('.')
                && rest[1..].split('.').all(|p| {
                    !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                })
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff81000000 T _stext
ffffffff82a0b000 D zero_pfn
ffffffff82a0c010 D vmemmap_base
ffffffffc0a01230 t vfio_pin_pages_remote\t[vfio_iommu_type1]
ffffffffc0a01990 t vaddr_get_pfns.constprop.0\t[vfio_iommu_type1]
ffffffffc0a02000 t vfio_lock_acct.part.0\t[vfio_iommu_type1]
ffffffffc0a03000 t vfio_lock_acct_foo\t[vfio_iommu_type1]
";

    #[test]
    fn parses_module_and_kind() {
        let s = parse_line("ffffffffc0a01230 t vfio_pin_pages_remote\t[vfio_iommu_type1]").unwrap();
        assert_eq!(s.addr, 0xffffffffc0a01230);
        assert_eq!(s.kind, 't');
        assert_eq!(s.name, "vfio_pin_pages_remote");
        assert_eq!(s.module.as_deref(), Some("vfio_iommu_type1"));
        assert_eq!(parse_line("zz T x"), None);
        assert_eq!(parse_line(""), None);
    }

    #[test]
    fn finds_suffixed_variants_but_not_other_functions() {
        let k = Kallsyms::parse(SAMPLE, |_| true);
        let names: Vec<_> = k
            .variants("vfio_lock_acct")
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["vfio_lock_acct.part.0"]);
        assert_eq!(
            k.variants("vaddr_get_pfns")[0].name,
            "vaddr_get_pfns.constprop.0"
        );
        assert!(k.variants("vfio_pin_pages").is_empty());
        assert_eq!(k.addr("zero_pfn"), Some(0xffffffff82a0b000));
        assert!(!k.addresses_hidden);
    }

    #[test]
    fn detects_hidden_addresses() {
        let hidden = SAMPLE
            .lines()
            .map(|l| format!("0000000000000000{}", &l[16..]))
            .collect::<Vec<_>>()
            .join("\n");
        let k = Kallsyms::parse(&hidden, |_| true);
        assert!(k.addresses_hidden);
        assert_eq!(k.addr("zero_pfn"), None);
    }

    #[test]
    fn variant_rules() {
        assert!(is_variant("put_pfn", "put_pfn"));
        assert!(is_variant("put_pfn", "put_pfn.isra.0"));
        assert!(!is_variant("put_pfn", "put_pfns"));
        assert!(!is_variant("put_pfn", "put_pfn."));
        assert!(!is_variant("put_pfn", "put_pfn..0"));
    }
}
