//! How a test says it cannot run its check. Under `cargo xtask test`
//! (`VFIO_ZP_STRICT` set) a skip fails the test unless the command line
//! named it (`--allow-skip NAME`, passed on as `VFIO_ZP_ALLOW_SKIP`), and
//! every skip is appended to `VFIO_ZP_SKIPS` for the summary. Under a plain
//! `cargo test` it is only printed. The same contract, for xtask's own
//! tests, is in xtask/src/skip.rs.
#![doc(hidden)]

/// Reports the skip of check `name` (a short stable id) because of `why`;
/// the caller returns after it.
pub fn skip(name: &str, why: &str) {
    eprintln!("SKIPPED: {name}: {why}");
    if let Some(path) = std::env::var_os("VFIO_ZP_SKIPS") {
        use std::io::Write;
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| writeln!(f, "{name}\t{why}"));
    }
    let allowed = std::env::var("VFIO_ZP_ALLOW_SKIP").unwrap_or_default();
    if std::env::var_os("VFIO_ZP_STRICT").is_some() && !allowed.split(',').any(|a| a == name) {
        panic!(
            "check {name} cannot run here ({why}); name it with `cargo xtask test --allow-skip {name}` to let it skip"
        );
    }
}
