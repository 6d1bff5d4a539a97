//! Boots a lab kernel under QEMU (TCG: KVM guests hang at early boot on
//! these machines) and runs a command in it, streaming the console.
use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use super::{guest, initramfs, kernels::Kernel};

pub struct Run {
    /// Exit code of the guest command, or None when the guest never ran it.
    pub exit_code: Option<i32>,
    pub elapsed: Duration,
}

/// Boots `k`, runs `command` (a shell script body) in the guest with
/// `results` shared read-write, and returns when the guest powers off.
/// VFIO devices (IOMMU groups) in each guest.
pub const VFIO_DEVICES: usize = 6;

pub fn run(
    k: &Kernel,
    results: &Path,
    command: &str,
    timeout: Duration,
    echo: bool,
) -> anyhow::Result<Run> {
    run_smp(k, results, command, timeout, echo, 1)
}

/// As [`run`], with `cpus` vCPUs (each a host thread under multi-threaded TCG).
pub fn run_smp(
    k: &Kernel,
    results: &Path,
    command: &str,
    timeout: Duration,
    echo: bool,
    cpus: u32,
) -> anyhow::Result<Run> {
    fs::create_dir_all(results)?;
    let results = fs::canonicalize(results)?;
    for f in ["exit-code", "console.log"] {
        let _ = fs::remove_file(results.join(f));
    }
    fs::write(
        results.join("guest-setup.sh"),
        guest::setup_script(k, &results),
    )?;
    fs::write(results.join("guest-cmd.sh"), command)?;
    let initrd = initramfs::build(k, guest::INIT)?;
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-M", "q35", "-cpu", "max", "-m", "2G"])
        .args(["-smp", &cpus.to_string()])
        // e1000e NICs, each its own IOMMU group: as many containers can
        // run at once (two for the scenarios, all for the ring flood).
        .args(["-device", "intel-iommu,intremap=on,caching-mode=on"])
        .args((0..VFIO_DEVICES).flat_map(|i| {
            [
                "-device".to_string(),
                format!("e1000e,netdev=n{i},romfile="),
                "-netdev".to_string(),
                format!("user,id=n{i},restrict=on"),
            ]
        }))
        .args([
            "-nographic",
            "-nodefaults",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&k.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 intel_iommu=on panic=-1 quiet vfiozp_results={}",
            results.display()
        ))
        .arg("-virtfs")
        .arg("local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=results,security_model=none,multidevs=remap",
            results.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start qemu-system-x86_64 (run `cargo xtask bootstrap`)")?;
    let start = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let timed_out = Arc::new(AtomicBool::new(false));
    let pid = child.id() as libc::pid_t;
    let watchdog = {
        let (done, timed_out) = (done.clone(), timed_out.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if start.elapsed() > timeout {
                    timed_out.store(true, Ordering::Relaxed);
                    // SAFETY: signalling our own child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let stderr = child.stderr.take().context("qemu stderr")?;
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            s.push_str(&line);
            s.push('\n');
        }
        s
    });
    let mut log = fs::File::create(results.join("console.log"))?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
        // Strip the firmware's terminal control sequences.
        let text = String::from_utf8_lossy(&line).replace('\r', "");
        let text: String = strip_ansi(&text);
        writeln!(log, "{text}")?;
        if echo {
            println!("{text}");
        }
    }
    let status = child.wait()?;
    done.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    let qemu_err = err_thread.join().unwrap_or_default();
    if timed_out.load(Ordering::Relaxed) {
        bail!(
            "guest {} did not finish within {:?} (console: {})",
            k.name,
            timeout,
            results.join("console.log").display()
        );
    }
    if !status.success() {
        bail!("qemu failed ({status}): {}", qemu_err.trim());
    }
    let exit_code = fs::read_to_string(results.join("exit-code"))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    Ok(Run {
        exit_code,
        elapsed: start.elapsed(),
    })
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        if c == 'c' && out.is_empty() && chars.peek() == Some(&'\x1b') {
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn ansi_sequences_are_removed() {
        assert_eq!(super::strip_ansi("\x1b[2J\x1b[0mSeaBIOS"), "SeaBIOS");
        assert_eq!(super::strip_ansi("plain [x]"), "plain [x]");
    }
}
