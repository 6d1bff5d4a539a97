//! The lab VMs' guest: a tiny firmware image (`guest_rom.S`) that acks PCI
//! hot-unplug and powers off on the power button, so QEMU's `device_del`,
//! `system_powerdown`, and libvirt's `detach-device` and `shutdown` run
//! their real paths without a guest OS (a nested Linux boot takes about 90 s
//! under TCG in a lab guest; this image is running at once).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, ensure};

const SOURCE: &str = include_str!("guest_rom.S");

/// QEMU maps a `-bios` image so that it ends at 4 GiB and, its last
/// 128 KiB, below 1 MiB; the reset vector is its last 16 bytes.
pub const SIZE: usize = 64 << 10;

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let o = cmd
        .output()
        .with_context(|| format!("cannot run {:?} (binutils)", cmd.get_program()))?;
    ensure!(
        o.status.success(),
        "{:?}: {}",
        cmd.get_program(),
        String::from_utf8_lossy(&o.stderr).trim()
    );
    Ok(())
}

/// Assembles the image into `dir/guest.rom` (world-readable: libvirt runs
/// QEMU unprivileged) and returns its path.
pub fn build(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let (src, obj, rom) = (
        dir.join("guest_rom.S"),
        dir.join("guest_rom.o"),
        dir.join("guest.rom"),
    );
    std::fs::write(&src, SOURCE).with_context(|| src.display().to_string())?;
    run(Command::new("as").arg("--32").arg("-o").arg(&obj).arg(&src))?;
    run(Command::new("ld")
        .args(["-m", "elf_i386", "-Ttext", "0", "--oformat", "binary", "-o"])
        .arg(&rom)
        .arg(&obj))?;
    let image = std::fs::read(&rom).with_context(|| rom.display().to_string())?;
    ensure!(
        image.len() == SIZE,
        "{}: {} bytes, expected {SIZE}",
        rom.display(),
        image.len()
    );
    Ok(rom)
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader, Write},
        os::unix::net::UnixStream,
        process::Stdio,
        time::{Duration, Instant},
    };

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vfio-zp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn the_image_is_64k_with_a_far_jump_at_the_reset_vector() {
        let dir = scratch("rom-build");
        let image = std::fs::read(build(&dir).unwrap()).unwrap();
        // ljmp $0xf000, $_start (offset 0).
        assert_eq!(&image[SIZE - 16..SIZE - 11], &[0xea, 0, 0, 0x00, 0xf0]);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Kills QEMU when a check fails half-way.
    struct Reaped(std::process::Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Reads QMP lines until one satisfies `want`, or fails after `secs`.
    fn until(r: &mut BufReader<UnixStream>, secs: u64, want: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + Duration::from_secs(secs);
        let mut line = String::new();
        loop {
            line.clear();
            assert!(Instant::now() < end, "QMP: nothing wanted within {secs}s");
            match r.read_line(&mut line) {
                Ok(0) => panic!("QMP closed"),
                Ok(_) if want(&line) => return line,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("QMP: {e}"),
            }
        }
    }

    /// The image in a real QEMU (a bootstrap dependency) on the host: a
    /// hot-pluggable NIC stands in for the VFIO device. QEMU's own events
    /// are the oracle: DEVICE_DELETED after `device_del`, the process's
    /// exit after `system_powerdown`.
    #[test]
    fn qemu_ejects_the_device_and_powers_off_under_it() {
        let dir = scratch("rom-qemu");
        let rom = build(&dir).unwrap();
        let sock = dir.join("qmp.sock");
        let mut qemu = Reaped(
            Command::new("qemu-system-x86_64")
                .args(["-M", "pc", "-accel", "tcg", "-m", "16", "-nodefaults"])
                .args(["-display", "none", "-bios"])
                .arg(&rom)
                .args(["-device", "e1000,id=nic0", "-qmp"])
                .arg(format!("unix:{},server=on,wait=on", sock.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("qemu-system-x86_64 (cargo xtask bootstrap installs it)"),
        );
        let end = Instant::now() + Duration::from_secs(30);
        let s = loop {
            match UnixStream::connect(&sock) {
                Ok(s) => break s,
                Err(e) if Instant::now() > end => panic!("QMP socket: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        until(&mut r, 30, |l| l.contains("\"QMP\""));
        let mut send = |cmd: &str| writeln!(w, "{cmd}").unwrap();
        send(r#"{"execute":"qmp_capabilities"}"#);
        until(&mut r, 10, |l| l.contains("\"return\""));
        send(r#"{"execute":"device_del","arguments":{"id":"nic0"}}"#);
        until(&mut r, 20, |l| {
            l.contains("DEVICE_DELETED") && l.contains("\"nic0\"")
        });
        send(r#"{"execute":"system_powerdown"}"#);
        let end = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(st) = qemu.0.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > end {
                panic!("QEMU still running 20s after system_powerdown");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "QEMU exited with {status}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
