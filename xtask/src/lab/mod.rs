//! The VM lab: real Debian kernels with live VFIO type1, under QEMU.
pub mod apt;
pub mod bench;
pub mod guest;
pub mod initramfs;
pub mod kernels;
pub mod leaky;
pub mod matrix;
pub mod outputs;
pub mod qemu;

use std::path::PathBuf;

/// Where cargo put our binaries (xtask runs from the same directory), so
/// the guest, which sees the host tree at the same paths, runs them as is.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.parent().map(PathBuf::from).unwrap_or_default())
}

/// The generated head of a guest script: one `NAME='value'` line per
/// variable the static script after it reads, each value single-quoted so
/// the shell takes it as is.
pub fn preamble(vars: &[(&str, &str)]) -> String {
    vars.iter()
        .map(|(name, value)| {
            debug_assert!(
                name.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'),
                "{name}"
            );
            format!("{name}={}\n", sh_quote(value))
        })
        .collect()
}

/// `value` as one shell word, taken literally.
pub fn sh_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value with the shell's special characters comes out of the
    /// preamble as it went in.
    #[test]
    fn the_preamble_passes_values_as_they_are() {
        let value = r#"a 'b' "c" $d `e` \x2d ; f
g"#;
        let script = preamble(&[("V", value)]) + "printf %s \"$V\"";
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), value);
    }

    /// Every script the guests run, assembled, is valid for the host's
    /// /bin/sh (`sh -n`).
    #[test]
    fn the_assembled_scripts_parse() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let k: kernels::Kernel = serde_json::from_str(
            r#"{"name":"5.10-leaky","release":"r","package":"p","deb_sha256":"x",
                "tree":"/k","vmlinuz":"/k/v","leaky_module":"/k/it's.ko"}"#,
        )
        .unwrap();
        let scripts = [
            matrix::guest_script(
                &s(&["ro-read-touched", "two-threads"]),
                16,
                Some(&s(&["a"])),
            )
            .unwrap(),
            matrix::guest_script(&[], 16, None).unwrap(),
            matrix::with_recorder(
                "demo.jsonl",
                true,
                &[],
                &format!("{}{}", matrix::LIBVIRT_UP, matrix::DEMO),
                "",
            )
            .unwrap(),
            bench::guest_script(16, 1, 2).unwrap(),
            guest::setup_script(&k, std::path::Path::new("/results dir")),
            guest::INIT.to_string(),
        ];
        for script in scripts {
            let out = std::process::Command::new("sh")
                .args(["-n", "-c", &script])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}\n{script}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Every output file the lab checks read (outputs.rs) is written by the
    /// matrix's guest script under that name: the shell scripts name them,
    /// or the preamble passes them.
    #[test]
    fn the_scripts_write_every_output_the_checks_read() {
        let names: Vec<&str> = include_str!("outputs.rs")
            .lines()
            .filter_map(|l| {
                l.strip_prefix("pub const ")?
                    .split_once("&str = \"")?
                    .1
                    .strip_suffix("\";")
            })
            .collect();
        assert!(names.len() > 40, "{names:?}");
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let script = matrix::guest_script(
            &s(&["ro-read-touched", "multi-container", "partial-unmap"]),
            16,
            Some(&s(&["qemu-pc-quit"])),
        )
        .unwrap();
        let missing: Vec<_> = names
            .iter()
            .filter(|n| {
                !script.contains(&format!("/{n}\"")) && !script.contains(&format!("='{n}'"))
            })
            .collect();
        assert!(missing.is_empty(), "not in the guest scripts: {missing:?}");
    }
}
