//! Boots a lab kernel under QEMU and runs a command in it, streaming the
//! console. Guests run under KVM where the CPU offers hardware
//! virtualisation, under TCG otherwise (see [`Accel`]).
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
    run_with(k, results, command, timeout, echo, 1, "2G")
}

/// As [`run`], quietly, with `cpus` vCPUs (each a host thread under
/// multi-threaded TCG) and `mem` of RAM (QEMU's `-m`).
pub fn run_sized(
    k: &Kernel,
    results: &Path,
    command: &str,
    timeout: Duration,
    cpus: u32,
    mem: &str,
) -> anyhow::Result<Run> {
    run_with(k, results, command, timeout, false, cpus, mem)
}

pub fn run_with(
    k: &Kernel,
    results: &Path,
    command: &str,
    timeout: Duration,
    echo: bool,
    cpus: u32,
    mem: &str,
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
    let accel = Accel::detect()?;
    eprintln!("lab: {}: {}", k.name, accel.why);
    fs::write(results.join("accel"), accel.name())?;
    let mut child = Command::new("qemu-system-x86_64")
        .args(accel.qemu_args())
        .args(["-m", mem])
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
        // no_timer_check: under TCG on a busy host, 5.10's boot-time check
        // that the timer interrupt arrives through the remapped IO-APIC can
        // time out, and with interrupt remapping on it panics ("timer doesn't
        // work through Interrupt-remapped IO-APIC"); seen once in a 5.10-leaky
        // boot. The check proves nothing the lab relies on.
        .arg("-append")
        .arg(format!(
            "console=ttyS0 intel_iommu=on no_timer_check panic=-1 quiet vfiozp_results={}",
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

/// How guests are run. KVM needs VT-x or AMD-V in the CPU flags: a
/// /dev/kvm without them is a paravirtual KVM (PVM, `kvm-pvm` in dmesg),
/// which boots only kernels built as its guests and hangs early on Debian's.
#[derive(Debug, PartialEq)]
pub struct Accel {
    pub kvm: bool,
    pub why: &'static str,
}

/// Forces the accelerator: `kvm` or `tcg`.
pub const ACCEL_ENV: &str = "VFIO_ZP_LAB_ACCEL";

impl Accel {
    pub fn detect() -> anyhow::Result<Accel> {
        let forced = std::env::var(ACCEL_ENV).ok();
        let dev_kvm = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Accel::choose(forced.as_deref(), dev_kvm, &cpuinfo)
    }

    fn choose(forced: Option<&str>, dev_kvm: bool, cpuinfo: &str) -> anyhow::Result<Accel> {
        let hw = cpuinfo
            .lines()
            .find(|l| l.starts_with("flags"))
            .and_then(|l| l.split_once(':'))
            .is_some_and(|(_, f)| f.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        let accel = |kvm, why| Accel { kvm, why };
        Ok(match forced {
            Some("kvm") => accel(true, "KVM (forced by VFIO_ZP_LAB_ACCEL)"),
            Some("tcg") => accel(false, "TCG (forced by VFIO_ZP_LAB_ACCEL)"),
            Some(other) => bail!("{ACCEL_ENV}={other}: expected kvm or tcg"),
            None if dev_kvm && hw => accel(true, "KVM (/dev/kvm and VT-x/AMD-V)"),
            None if dev_kvm => accel(
                false,
                "TCG: /dev/kvm is here but the CPU shows no VT-x/AMD-V (a paravirtual KVM, which hangs Debian kernels at boot); timings are emulated",
            ),
            None => accel(false, "TCG: no usable /dev/kvm; timings are emulated"),
        })
    }

    pub fn name(&self) -> &'static str {
        if self.kvm { "KVM" } else { "TCG" }
    }

    fn qemu_args(&self) -> [&'static str; 6] {
        if self.kvm {
            // The emulated IOMMU's interrupt remapping needs a split irqchip.
            [
                "-accel",
                "kvm",
                "-M",
                "q35,kernel-irqchip=split",
                "-cpu",
                "host",
            ]
        } else {
            ["-accel", "tcg", "-M", "q35", "-cpu", "max"]
        }
    }
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
    use super::Accel;

    const PVM: &str = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr hypervisor lahf_lm\n";
    const VTX: &str = "processor\t: 0\nflags\t\t: fpu vme vmx ept tsc\n";
    const AMDV: &str = "flags\t\t: fpu svm npt\n";

    #[test]
    fn kvm_only_with_the_device_and_hardware_virtualisation() {
        let kvm = |f, d, c| Accel::choose(f, d, c).unwrap().kvm;
        assert!(kvm(None, true, VTX));
        assert!(kvm(None, true, AMDV));
        // A paravirtual KVM: the device without the flags.
        assert!(!kvm(None, true, PVM));
        assert!(!kvm(None, false, VTX));
        // "vmx" inside another flag's name is not VT-x.
        assert!(!kvm(None, true, "flags\t: avmx svmx\n"));
        assert!(kvm(Some("kvm"), false, PVM));
        assert!(!kvm(Some("tcg"), true, VTX));
        let e = Accel::choose(Some("hvf"), true, VTX).unwrap_err();
        assert!(e.to_string().contains("expected kvm or tcg"), "{e}");
    }

    #[test]
    fn the_reason_names_a_paravirtual_kvm() {
        let a = Accel::choose(None, true, PVM).unwrap();
        assert_eq!(a.name(), "TCG");
        assert!(a.why.contains("no VT-x/AMD-V"), "{}", a.why);
    }

    #[test]
    fn ansi_sequences_are_removed() {
        assert_eq!(super::strip_ansi("\x1b[2J\x1b[0mSeaBIOS"), "SeaBIOS");
        assert_eq!(super::strip_ansi("plain [x]"), "plain [x]");
    }
}
