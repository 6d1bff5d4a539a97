//! tracefs `available_filter_functions`: the functions ftrace (and so a
//! kprobe at the function's entry) can really hook. A function in kallsyms
//! but not here is `notrace` or otherwise unprobeable.
use std::collections::HashSet;
use std::path::{Path, PathBuf};

pub const TRACEFS_DIRS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The function names (module suffix dropped) listed in the file.
pub fn parse_filter_functions(text: &str) -> HashSet<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

pub fn find_file(name: &str) -> Option<PathBuf> {
    TRACEFS_DIRS
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// `None` when tracefs is not mounted or readable: resolution then trusts kallsyms alone.
pub fn read_filter_functions() -> Option<HashSet<String>> {
    let path = find_file("available_filter_functions")?;
    std::fs::read_to_string(path)
        .ok()
        .map(|t| parse_filter_functions(&t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_module_tags_and_keeps_suffixes() {
        let f = parse_filter_functions(
            "vfio_pin_pages_remote [vfio_iommu_type1]\nvaddr_get_pfns.constprop.0 [vfio_iommu_type1]\nschedule\n\n",
        );
        assert!(f.contains("vfio_pin_pages_remote"));
        assert!(f.contains("vaddr_get_pfns.constprop.0"));
        assert!(f.contains("schedule"));
        assert_eq!(f.len(), 3);
    }
}
