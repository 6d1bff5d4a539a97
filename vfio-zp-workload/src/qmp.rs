//! QMP, QEMU's machine protocol, as a VMM's manager speaks it (the `qapi`
//! crate's typed commands and events over the monitor's Unix socket).
use std::{
    io::BufReader,
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use qapi::{Qmp, Stream, qmp::Event};

pub type Client = Qmp<Stream<BufReader<UnixStream>, UnixStream>>;

/// Connects to a monitor socket and negotiates capabilities.
pub fn connect(path: &str) -> anyhow::Result<Client> {
    let s = UnixStream::connect(path).with_context(|| format!("QMP socket {path}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let r = s.try_clone()?;
    let mut q = Qmp::new(Stream::new(BufReader::new(r), s));
    q.handshake()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("QMP handshake on {path}"))?;
    Ok(q)
}

/// Waits for DEVICE_DELETED of device `id`: the guest acked the unplug and
/// QEMU unrealized the device (for vfio-pci: unmapped and closed its
/// container).
pub fn wait_deleted(q: &mut Client, id: &str, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let deleted = q.events().any(|e| {
            matches!(e, Event::DEVICE_DELETED { ref data, .. } if data.device.as_deref() == Some(id))
        });
        if deleted {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("no DEVICE_DELETED for {id} within {timeout:?}: the guest did not eject it");
        }
        std::thread::sleep(Duration::from_millis(100));
        // Any command reads what QEMU sent before its answer.
        q.nop().context("QMP")?;
    }
}
