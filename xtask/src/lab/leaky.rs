//! `5.10-leaky`: vfio_iommu_type1.ko rebuilt from the same kernel's source
//! with the zero-page unpin of 873aefb376bb ("vfio/type1: Unpin zero pages")
//! taken out, which is the pre-fix code: every zero-page pin leaks 1024
//! references on the zero page.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context;

use super::apt::Suite;
use crate::cmd;

/// The block 873aefb added to vaddr_get_pfn(); removing it restores the leak.
const FIX: &str = "\t\tint i;

\t\t/*
\t\t * The zero page is always resident, we don't need to pin it
\t\t * and it falls into our invalid/reserved test so we don't
\t\t * unpin in put_pfn().  Unpin all zero pages in the batch here.
\t\t */
\t\tfor (i = 0 ; i < ret; i++) {
\t\t\tif (unlikely(is_zero_pfn(page_to_pfn(pages[i]))))
\t\t\t\tunpin_user_page(pages[i]);
\t\t}

";

/// Removes the fix, failing loudly if the source is not what we expect.
pub fn unfix(source: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        source.matches(FIX).count() == 1,
        "vfio_iommu_type1.c does not contain the 873aefb zero-page unpin exactly once; \
         the leaky variant cannot be built from this source"
    );
    Ok(source.replacen(FIX, "", 1))
}

/// `image_deb` is linux-image-<abi>-amd64-unsigned_<version>_amd64.deb.
pub fn build(
    suite: &Suite,
    image_deb: &Path,
    release: &str,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let version = image_deb
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('_').nth(1))
        .context("cannot read the package version from the image file name")?
        .to_string();
    let abi = release.trim_end_matches("-amd64");
    let series = abi.split('.').take(2).collect::<Vec<_>>().join(".");
    eprintln!(
        "lab: building the leaky vfio_iommu_type1.ko for {} ({version})",
        release
    );
    let debs = dir.join("leaky-debs");
    let hdr = dir.join("headers");
    for pkg in [
        format!("linux-headers-{abi}-amd64={version}"),
        format!("linux-headers-{abi}-common={version}"),
        format!("linux-kbuild-{series}={version}"),
        format!("linux-source-{series}={version}"),
    ] {
        let deb = suite.download(&pkg, &debs)?;
        if !pkg.starts_with("linux-source") {
            cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&hdr))?;
        }
    }
    let build_dir = hdr.join(format!("usr/src/linux-headers-{abi}-amd64"));
    // The headers' Makefile includes the common tree by absolute path.
    let mk = build_dir.join("Makefile");
    let text = fs::read_to_string(&mk)?;
    fs::write(
        &mk,
        text.replace(
            "include /usr/src/",
            &format!("include {}/usr/src/", hdr.display()),
        ),
    )?;

    let src_deb = fs::read_dir(&debs)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("linux-source-"))
        .context("linux-source .deb missing")?;
    let tarball = format!("./usr/src/linux-source-{series}.tar.xz");
    let src = dir.join("source");
    fs::create_dir_all(&src)?;
    cmd::run(Command::new("sh").arg("-c").arg(format!(
        "dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}' '{tarball}'",
        src_deb.display(),
        src.display()
    )))?;
    let member = format!("linux-source-{series}/drivers/vfio/vfio_iommu_type1.c");
    cmd::run(
        Command::new("tar")
            .arg("-xJf")
            .arg(src.join(&tarball))
            .arg("-C")
            .arg(&src)
            .arg(&member),
    )?;
    let _ = fs::remove_file(src.join(&tarball));

    let m = dir.join("leaky-module");
    fs::create_dir_all(&m)?;
    let c = fs::read_to_string(src.join(&member))?;
    fs::write(m.join("vfio_iommu_type1.c"), unfix(&c)?)?;
    fs::write(m.join("Kbuild"), "obj-m := vfio_iommu_type1.o\n")?;
    cmd::run(
        Command::new("make")
            .arg("-C")
            .arg(&build_dir)
            .arg(format!("M={}", m.display()))
            .arg("CC=gcc")
            .arg("modules"),
    )?;
    let ko = m.join("vfio_iommu_type1.ko");
    anyhow::ensure!(
        ko.exists(),
        "make succeeded but {} is missing",
        ko.display()
    );
    Ok(ko)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfix_removes_exactly_the_zero_page_unpin() {
        let src = format!("\tif (ret > 0) {{\n{FIX}\t\t*pfn = page_to_pfn(pages[0]);\n");
        let out = unfix(&src).unwrap();
        assert!(!out.contains("unpin_user_page"));
        assert!(out.contains("*pfn = page_to_pfn(pages[0]);"));
        assert!(unfix("no fix here").is_err());
        assert!(unfix(&format!("{FIX}{FIX}")).is_err());
    }
}
