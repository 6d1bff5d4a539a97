//! The matrix: every scenario on every lab kernel, recorded by vfio-zp
//! while the workload records the kernel's own truth.
use std::{path::Path, time::Duration};

use anyhow::Context;

use super::{bin_dir, kernels, qemu};

/// Which cgroup each scenario runs in: shaped like libvirt's and kubepods'
/// so attribution can be checked against real-looking paths.
/// `multi-container` runs a libvirt VM and a KubeVirt-like pod at once.
pub const LIBVIRT_VM1: &str = r"machine.slice/machine-qemu\x2d1\x2dvm1.scope";
pub const LIBVIRT_VM2: &str =
    r"machine.slice/machine-qemu\x2d2\x2dvm\x2dtwo.scope/libvirt/emulator";
pub const LIBVIRT_TIGHT: &str = r"machine.slice/machine-qemu\x2d3\x2dtight.scope";
pub const POD_A: &str = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice/cri-containerd-4f6b7c8d9e0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4.scope";
pub const POD_B: &str = "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod11112222_3333_4444_5555_666677778888.slice/cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope";

pub const LIBVIRT_THREADS: &str = r"machine.slice/machine-qemu\x2d5\x2dthreads.scope";

pub const CGROUPS: [&str; 6] = [
    LIBVIRT_VM1,
    LIBVIRT_VM2,
    LIBVIRT_TIGHT,
    POD_A,
    POD_B,
    LIBVIRT_THREADS,
];

fn cgroups_for(scenario: &str) -> (Option<&'static str>, Option<&'static str>) {
    match scenario {
        "ro-read-touched" => (Some(LIBVIRT_VM1), None),
        "partial-unmap" => (Some(POD_A), None),
        "multi-container" => (Some(LIBVIRT_VM2), Some(POD_B)),
        "memlock-tight" => (Some(LIBVIRT_TIGHT), None),
        "two-threads" => (Some(LIBVIRT_THREADS), None),
        _ => (None, None),
    }
}

/// Starts the recorder, waits until its header is written (probes
/// attached), runs `body` under a /metrics load, probes the HTTP server with
/// bad requests, stops the recorder with SIGTERM (timed), then kills a second
/// recorder with SIGKILL to leave stale return probes for `top --local`.
pub fn with_recorder(
    recording: &str,
    print: bool,
    body: &str,
    after: &str,
) -> anyhow::Result<String> {
    let bin = bin_dir()?;
    let demo = print;
    // The demo shows events live on the console; the matrix keeps the log.
    let (print, log) = if print {
        (" --print", "")
    } else {
        ("", " 2>\"$RESULTS/recorder.log\"")
    };
    Ok(format!(
        r#"set -u
BIN={bin}
REC={recording}
rm -f "$REC"
busybox ip link set lo up 2>/dev/null || busybox ifconfig lo 127.0.0.1 up
"$BIN/vfio-zp" check > "$RESULTS/check.txt" 2>&1; echo $? > "$RESULTS/check-exit"
# Closed containers stay in the series for the whole run: the surfaces are
# checked against the final verdicts.
"$BIN/vfio-zp" record -o "$REC" --verdicts "$RESULTS/verdicts.json" --listen 127.0.0.1:10983 --expire-after 2h --no-wait{print}{log} &
RP=$!
i=0
while [ ! -s "$REC" ]; do
  sleep 1; i=$((i+1))
  if ! kill -0 $RP 2>/dev/null || [ $i -gt 600 ]; then echo "lab: recorder did not start"; cat "$RESULTS/recorder.log" 2>/dev/null; exit 91; fi
done
echo "lab: recorder attached after ${{i}}s"
status=0
# What the running recorder kept after dropping capabilities (every thread).
cat /proc/$RP/task/*/status 2>/dev/null | grep CapEff > "$RESULTS/recorder-capeff.txt"
cat /proc/sys/kernel/perf_event_paranoid > "$RESULTS/perf-event-paranoid"
# A real Prometheus server (Debian's, from the host root) scrapes the recorder.
PP=
if [ -x /usr/bin/prometheus ]; then
  mkdir -p /run/prom
  printf 'global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: vfio-zp\n    static_configs:\n      - targets: ["127.0.0.1:10983"]\n' > /run/prom/prometheus.yml
  /usr/bin/prometheus --config.file=/run/prom/prometheus.yml --storage.tsdb.path=/run/prom/data --web.listen-address=127.0.0.1:9090 > "$RESULTS/prometheus.log" 2>&1 &
  PP=$!
else
  echo "no prometheus on the host" > "$RESULTS/prometheus-skipped"
fi
# A second process loads /metrics while the first workloads run: the event
# path must not stall (the matrix checks every count stays exact).
WP=
if command -v wrk >/dev/null; then
  wrk -t1 -c4 -d20s http://127.0.0.1:10983/metrics > "$RESULTS/wrk.txt" 2>&1 &
  WP=$!
else
  echo "no wrk on the host" > "$RESULTS/wrk-skipped"
fi
{body}
[ -n "$WP" ] && wait $WP
# Malformed and unsupported requests are answered, and the server lives on.
printf 'NONSENSE\r\n\r\n' | busybox nc -w 5 127.0.0.1 10983 > "$RESULTS/http-garbage.txt" 2>&1
# wget reports the status line of an error ("server returned error: HTTP/1.1 405 ...").
busybox wget -q --post-data '' -O /dev/null http://127.0.0.1:10983/metrics > "$RESULTS/http-post.txt" 2>&1
busybox wget -q -O /dev/null http://127.0.0.1:10983/nope > "$RESULTS/http-404.txt" 2>&1
busybox wget -q -O "$RESULTS/healthz-after.txt" http://127.0.0.1:10983/healthz || echo "lab: healthz after bad requests failed"
busybox wget -q -O "$RESULTS/snapshot.json" http://127.0.0.1:10983/api/v1/snapshot || echo "lab: snapshot failed"
# The operator surfaces, read while the recorder still serves them.
sleep 2
busybox wget -q -O "$RESULTS/metrics.txt" http://127.0.0.1:10983/metrics || echo "lab: metrics scrape failed"
"$BIN/vfio-zp" top --once --interval 1s --agent 127.0.0.1:10983 > "$RESULTS/top.txt" 2>&1 || echo "lab: top failed"
if [ -n "$PP" ]; then
  sleep 3
  busybox wget -q -O "$RESULTS/prometheus-query.json" 'http://127.0.0.1:9090/api/v1/query?query=%7B__name__%3D~%22vfio_zp_.%2A%22%7D' || echo "lab: Prometheus query failed"
  kill $PP
fi
# The interactive view in a real terminal.
if command -v tmux >/dev/null; then
  mkdir -p /dev/pts; mount -t devpts devpts /dev/pts 2>/dev/null
  export TMUX_TMPDIR=/run TERM=xterm-256color
  tmux new-session -d -s top -x 200 -y 50 "$BIN/vfio-zp top --agent 127.0.0.1:10983 --interval 500ms" || echo "lab: tmux failed"
  sleep 3; tmux capture-pane -p -t top > "$RESULTS/top-tmux.txt"
  tmux send-keys -t top s; sleep 2; tmux capture-pane -p -t top > "$RESULTS/top-tmux-sorted.txt"
  tmux send-keys -t top q; sleep 1
  tmux has-session -t top 2>/dev/null && {{ echo "lab: top did not quit"; tmux kill-server; }}
else
  echo "no tmux in the guest" > "$RESULTS/top-tmux-skipped"
fi
# The kernel's own count of each return probe's runs, for the counters.
cat /sys/kernel/tracing/kprobe_profile > "$RESULTS/kprobe-profile.txt" 2>/dev/null
{show}T0=$(cut -d' ' -f1 /proc/uptime)
kill -TERM $RP
wait $RP || {{ echo "lab: recorder failed"; status=1; }}
echo "$T0 $(cut -d' ' -f1 /proc/uptime)" > "$RESULTS/stop-uptime"
KE=/sys/kernel/tracing/kprobe_events
cat $KE > "$RESULTS/kprobe-events-after-stop.txt" 2>/dev/null
# kill -9 leaves its return probes behind; the next start removes them.
"$BIN/vfio-zp" record -o /run/killed.jsonl --no-wait 2> "$RESULTS/killed.log" &
KP=$!
i=0
while [ ! -s /run/killed.jsonl ] && [ $i -lt 300 ] && kill -0 $KP 2>/dev/null; do sleep 1; i=$((i+1)); done
kill -9 $KP; wait $KP 2>/dev/null
cat $KE > "$RESULTS/kprobe-events-after-kill.txt" 2>/dev/null
# top with no agent running loads the probes itself.
"$BIN/vfio-zp" top --once --local --no-wait --interval 1s > "$RESULTS/top-local.txt" 2>&1 || echo "lab: top --local failed"
cat $KE > "$RESULTS/kprobe-events-final.txt" 2>/dev/null
[ -f "$RESULTS/recorder.log" ] && tail -n 3 "$RESULTS/recorder.log"
{after}
exit $status
"#,
        bin = bin.display(),
        show = if demo {
            "cat \"$RESULTS/top.txt\"\ngrep -E '^vfio_zp_(zero_page_leaked_pins|leak_detected|zero_page_refcount)' \"$RESULTS/metrics.txt\"\n"
        } else {
            ""
        },
    ))
}

/// vfio_iommu_type1 unloaded and reloaded under the running recorder: the
/// snapshot must show its probes detached, then attached again; the time
/// from the end of the load to the snapshot showing them attached lands in
/// `reattach-uptime`. The scenarios run
/// after it check that counting went on exactly.
const RELOAD_TYPE1: &str = r#"type1_pin_state() {
  busybox wget -q -O - http://127.0.0.1:10983/api/v1/snapshot 2>/dev/null | grep -o '"probe":"type1_pin"[^}]*' | grep -o '"state":"[a-z_]*"'
}
# The return probes' run counts of their first life (they are made afresh).
KPP=/sys/kernel/tracing/kprobe_profile
cat $KPP > "$RESULTS/kprobe-profile-before-reload.txt"
if rmmod vfio_iommu_type1 2> "$RESULTS/rmmod.txt"; then
  i=0
  until type1_pin_state | grep -q module_not_loaded || [ $i -gt 100 ]; do sleep 0.1; i=$((i+1)); done
  type1_pin_state > "$RESULTS/type1-state-unloaded.txt"
  eval "$TYPE1_LOAD" || echo "lab: reloading type1 failed"
  T0=$(cut -d' ' -f1 /proc/uptime)
  i=0
  until type1_pin_state | grep -q '"attached"' || [ $i -gt 300 ]; do sleep 0.05; i=$((i+1)); done
  echo "$T0 $(cut -d' ' -f1 /proc/uptime)" > "$RESULTS/reattach-uptime"
else
  rm -f "$RESULTS/kprobe-profile-before-reload.txt"
  echo "lab: rmmod vfio_iommu_type1 failed"
fi
"#;

/// Where the restart check's workload runs (a libvirt-shaped VM "restart").
pub const LIBVIRT_RESTART: &str = r"machine.slice/machine-qemu\x2d4\x2drestart.scope";

/// Agent restarts with a VM holding its mapping throughout: a build that
/// plays an older one leaves pins behind, this build removes them and
/// starts; then SIGTERM and restart, kill -9 and restart, and the VM
/// unmaps under the third agent. Snapshots after each step land in
/// `restart-*.json`, the agents' logs in `agent-*.log`.
/// Every VFIO group maps at once into a one-page ring buffer under a
/// recorder, every other page written so that no zero-page run folds: the
/// exact counters must still match the kernel, the drops be counted and
/// exported, and the flooded containers' verdicts say uncertain.
fn flood_script(pages: u64) -> anyhow::Result<String> {
    let bin = bin_dir()?;
    Ok(format!(
        r#"# Ring buffer flood.
FL=127.0.0.1:10985
"{bin}/vfio-zp" record -o "$RESULTS/flood.jsonl" --verdicts "$RESULTS/flood-verdicts.json" --listen $FL --ring-buffer-kib 4 --no-wait 2> "$RESULTS/flood-recorder.log" &
FP=$!
i=0
while [ ! -s "$RESULTS/flood.jsonl" ] && [ $i -lt 600 ] && kill -0 $FP 2>/dev/null; do sleep 1; i=$((i+1)); done
sleep 1
n=0
FLP=
for G in $VFIO_GROUPS; do
  n=$((n+1))
  VFIO_GROUP=$G "{bin}/vfio-zp-workload" --scenario ro-alternating --pages {pages} --truth "$RESULTS/flood-truth-$n.json" --cgroup "machine.slice/machine-qemu\x2d1$n\x2dflood$n.scope" > "$RESULTS/flood-workload-$n.txt" 2>&1 &
  FLP="$FLP $!"
done
for p in $FLP; do wait $p || {{ echo "lab: flood workload failed"; status=1; }}; done
sleep 2
busybox wget -q -O "$RESULTS/flood-metrics.txt" http://$FL/metrics || echo "lab: flood metrics scrape failed"
kill -TERM $FP
wait $FP || {{ echo "lab: flood recorder failed"; status=1; }}
"#,
        bin = bin.display(),
    ))
}

/// Where the sandboxed agent's workload runs.
pub const LIBVIRT_SANDBOX: &str = r"machine.slice/machine-qemu\x2d6\x2dsandbox.scope";

/// The systemd unit's sandbox, as far as a guest without systemd gives it:
/// the HTTP socket bound outside and passed in (systemd-socket-activate, as
/// vfio-zp.socket does), the agent in a network namespace of its own
/// (PrivateNetwork=yes), and every system call it makes, from its exec to
/// its exit, recorded by strace for the check against the unit's
/// SystemCallFilter=, with the unit's memlock limit, no capability outside
/// its bounding set and no new privileges. It maps, serves, re-attaches after a type1 reload
/// and stops, so the calls of each path are in the trace.
fn sandbox_script(pages: u64) -> anyhow::Result<String> {
    let bin = bin_dir()?;
    Ok(format!(
        r#"# The unit's sandbox.
if command -v systemd-socket-activate >/dev/null && command -v strace >/dev/null; then
  SB=127.0.0.1:10987
  SBS=http://$SB/api/v1/snapshot
  sb_type1() {{ busybox wget -q -O - $SBS 2>/dev/null | grep -o '"probe":"type1_pin"[^}}]*' | grep -o '"state":"[a-z_]*"'; }}
  strace -f -qq -o "$RESULTS/sandbox-strace.txt" systemd-socket-activate -l $SB \
    prlimit --memlock={memlock} setpriv --no-new-privs --bounding-set {bounding} unshare -n -- "{bin}/vfio-zp" agent --listen systemd --no-wait --fresh --state-dir /run/vfio-zp-sandbox 2> "$RESULTS/sandbox-agent.log" &
  SP=$!
  i=0
  # The first connection makes systemd-socket-activate exec the agent.
  until busybox wget -q -O /dev/null $SBS 2>/dev/null; do
    sleep 0.5; i=$((i+1))
    if ! kill -0 $SP 2>/dev/null || [ $i -gt 1200 ]; then echo "lab: sandboxed agent did not start"; tail -n 20 "$RESULTS/sandbox-agent.log"; status=1; break; fi
  done
  # The agent: strace's child (systemd-socket-activate, setpriv and unshare
  # exec into it, so it keeps their pid).
  SAP=
  for p in /proc/[0-9]*; do
    [ "$(cut -d' ' -f4 $p/stat 2>/dev/null)" = "$SP" ] && SAP=${{p#/proc/}}
  done
  {{ readlink /proc/self/ns/net; readlink /proc/$SAP/ns/net; }} > "$RESULTS/sandbox-netns.txt"
  "{bin}/vfio-zp-workload" --scenario ro-read-touched --pages {pages} --truth "$RESULTS/sandbox-truth.json" --cgroup '{cg}' > "$RESULTS/sandbox-workload.txt" 2>&1 || {{ echo "lab: sandbox workload failed"; status=1; }}
  if rmmod vfio_iommu_type1; then
    eval "$TYPE1_LOAD" || echo "lab: reloading type1 failed"
    i=0
    until sb_type1 | grep -q '"attached"' || [ $i -gt 600 ]; do sleep 0.1; i=$((i+1)); done
  fi
  sleep 2
  busybox wget -q -O "$RESULTS/sandbox-snapshot.json" $SBS || echo "lab: sandboxed agent's snapshot failed"
  busybox wget -q -O "$RESULTS/sandbox-metrics.txt" http://$SB/metrics || echo "lab: sandboxed agent's metrics failed"
  [ -n "$SAP" ] && kill -TERM $SAP
  i=0
  while [ -n "$SAP" ] && kill -0 $SAP 2>/dev/null && [ $i -lt 120 ]; do sleep 0.5; i=$((i+1)); done
  [ -n "$SAP" ] && kill -0 $SAP 2>/dev/null && {{ echo "lab: the sandboxed agent ignored SIGTERM"; kill -9 $SAP; }}
  wait $SP; echo $? > "$RESULTS/sandbox-exit"
else
  echo "no strace or systemd-socket-activate on the host" > "$RESULTS/sandbox-skipped"
fi
"#,
        bin = bin.display(),
        cg = LIBVIRT_SANDBOX,
        bounding = bounding_set(UNIT)?,
        memlock = memlock_limit(UNIT)?,
    ))
}

/// The systemd unit the sandbox phase mirrors.
const UNIT: &str = include_str!("../../../deploy/systemd/vfio-zp.service");

/// The value of the unit's first `KEY=` line.
fn unit_setting<'a>(unit: &'a str, key: &str) -> anyhow::Result<&'a str> {
    unit.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .with_context(|| format!("the unit has no {key}="))
}

/// The unit's `LimitMEMLOCK=` as prlimit's `--memlock` (soft:hard).
fn memlock_limit(unit: &str) -> anyhow::Result<String> {
    let v = unit_setting(unit, "LimitMEMLOCK")?.trim();
    let v = if v == "infinity" { "unlimited" } else { v };
    Ok(format!("{v}:{v}"))
}

/// The unit's `CapabilityBoundingSet=` as setpriv's `--bounding-set`.
fn bounding_set(unit: &str) -> anyhow::Result<String> {
    let caps = unit_setting(unit, "CapabilityBoundingSet")?;
    Ok(std::iter::once("-all".to_string())
        .chain(
            caps.split_whitespace()
                .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase())),
        )
        .collect::<Vec<_>>()
        .join(","))
}

fn restart_script(pages: u64) -> anyhow::Result<String> {
    let bin = bin_dir()?;
    Ok(format!(
        r#"# Restart continuity: counters and ring buffer pinned under
# /sys/fs/bpf/vfio-zp/<build>, the model kept in /run/vfio-zp.
AGENT="$BIN/vfio-zp agent --listen 127.0.0.1:10984 --no-wait"
SNAP=http://127.0.0.1:10984/api/v1/snapshot
agent_up() {{
  i=0
  until busybox wget -q -O /dev/null $SNAP 2>/dev/null; do
    sleep 0.5; i=$((i+1))
    if ! kill -0 $AP 2>/dev/null || [ $i -gt 900 ]; then
      echo "lab: agent $1 did not start"; tail -n 20 "$RESULTS/agent-$1.log"; status=1; return 1
    fi
  done
  sleep 1
}}
VFIO_ZP_BUILD_ID=0ld-build $AGENT 2> "$RESULTS/agent-old.log" &
AP=$!
agent_up old && {{ kill -TERM $AP; wait $AP; }}
ls /sys/fs/bpf/vfio-zp > "$RESULTS/pins-before.txt" 2>&1
# This build starts before vfio_iommu_type1 is loaded (no --no-wait): its
# type1 probes must attach within moments of the load.
rmmod vfio_iommu_type1 2> "$RESULTS/late-rmmod.txt" || echo "lab: rmmod before the late load failed"
"$BIN/vfio-zp" agent --listen 127.0.0.1:10984 2> "$RESULTS/agent-1.log" &
AP=$!
agent_up 1
busybox wget -q -O - $SNAP | grep -o '"probe":"type1_pin"[^}}]*' > "$RESULTS/late-state-before.txt"
eval "$TYPE1_LOAD" || echo "lab: loading type1 failed"
T0=$(cut -d' ' -f1 /proc/uptime)
i=0
until busybox wget -q -O - $SNAP 2>/dev/null | grep -o '"probe":"type1_pin"[^}}]*' | grep -q '"state":"attached"' || [ $i -gt 300 ]; do sleep 0.05; i=$((i+1)); done
echo "$T0 $(cut -d' ' -f1 /proc/uptime)" > "$RESULTS/late-load-uptime"
ls /sys/fs/bpf/vfio-zp > "$RESULTS/pins-after.txt" 2>&1
rm -f /run/release /run/release.mapped
"{bin}/vfio-zp-workload" --scenario ro-read-touched --pages {pages} --hold-ms 900000 --hold-until /run/release --truth "$RESULTS/restart-truth.json" --cgroup '{cg}' > "$RESULTS/workload-restart.txt" 2>&1 &
WLP=$!
i=0
while [ ! -e /run/release.mapped ] && [ $i -lt 600 ]; do sleep 0.5; i=$((i+1)); done
sleep 2
busybox wget -q -O "$RESULTS/restart-1.json" $SNAP
# The agent's own stop, timed: detach, checkpoint of a model holding a VM.
T0=$(cut -d' ' -f1 /proc/uptime)
kill -TERM $AP; wait $AP || {{ echo "lab: agent 1 failed"; status=1; }}
echo "$T0 $(cut -d' ' -f1 /proc/uptime)" > "$RESULTS/agent-stop-uptime"
cat $KE > "$RESULTS/kprobe-events-after-agent-stop.txt" 2>/dev/null
$AGENT 2> "$RESULTS/agent-2.log" &
AP=$!
agent_up 2
busybox wget -q -O "$RESULTS/restart-2.json" $SNAP
kill -9 $AP; wait $AP 2>/dev/null
$AGENT 2> "$RESULTS/agent-3.log" &
AP=$!
agent_up 3
busybox wget -q -O "$RESULTS/restart-3.json" $SNAP
touch /run/release
wait $WLP || {{ echo "lab: restart workload failed"; status=1; }}
sleep 2
busybox wget -q -O "$RESULTS/restart-final.json" $SNAP
kill -TERM $AP; wait $AP || {{ echo "lab: agent 3 failed"; status=1; }}
ls /run/vfio-zp > "$RESULTS/state-dir.txt" 2>&1
"#,
        bin = bin.display(),
        cg = LIBVIRT_RESTART,
    ))
}

pub fn guest_script(scenarios: &[String], pages: u64, vmm: bool) -> anyhow::Result<String> {
    let bin = bin_dir()?;
    let mut body = String::new();
    for (i, s) in scenarios.iter().enumerate() {
        if i == scenarios.len() / 2 {
            body.push_str(RELOAD_TYPE1);
        }
        let (cg, cg2) = cgroups_for(s);
        let cg = cg.map(|c| format!(" --cgroup '{c}'")).unwrap_or_default();
        let cg2 = cg2.map(|c| format!(" --cgroup2 '{c}'")).unwrap_or_default();
        body.push_str(&format!(
            "\"{}/vfio-zp-workload\" --scenario {s} --pages {pages} --truth \"$RESULTS/truth-{s}.json\"{cg}{cg2} || status=1\n",
            bin.display()
        ));
    }
    if vmm {
        body.push_str(&vmm_script(&vmm_scenarios()?)?);
    }
    with_recorder(
        "$RESULTS/recording.jsonl",
        false,
        &body,
        &(flood_script(pages)? + &restart_script(pages)? + &sandbox_script(pages)?),
    )
}

/// libvirtd in the guest, as the notes on the lab found it runs: no
/// systemd, dbus or virtlogd; its state on tmpfs over the host's (empty,
/// read-only) directories; a writable /etc/libvirt with a qemu.conf that
/// runs QEMU as an unprivileged `libvirt-qemu` (so its memlock limit
/// holds) without relabelling or namespaces; the memory, cpu and pids
/// controllers enabled for its cgroups.
pub const LIBVIRT_UP: &str = r#"libvirt_up() {
  for d in /var/lib/libvirt /var/cache/libvirt /var/log/libvirt; do mount -t tmpfs libvirt $d || return 1; done
  mkdir -p /run/libvirt-etc && cp -a /etc/libvirt/. /run/libvirt-etc/ && mount --bind /run/libvirt-etc /etc/libvirt || return 1
  printf 'user = "libvirt-qemu"\ngroup = "libvirt-qemu"\ndynamic_ownership = 0\nremember_owner = 0\nnamespaces = [ ]\nstdio_handler = "file"\n' > /etc/libvirt/qemu.conf
  cp /etc/passwd /run/passwd && echo 'libvirt-qemu:x:64055:64055::/var/lib/libvirt:/usr/sbin/nologin' >> /run/passwd && mount --bind /run/passwd /etc/passwd || return 1
  cp /etc/group /run/group && printf 'libvirt-qemu:x:64055:\nkvm:x:64056:\n' >> /run/group && mount --bind /run/group /etc/group || return 1
  chmod 0666 /dev/vfio/*
  echo "+memory +cpu +pids" > /sys/fs/cgroup/cgroup.subtree_control || return 1
  # Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK: libvirt's
  # cgroup v2 device filter (a BPF map) needs more than the default 64 KiB.
  prlimit --memlock=67108864:67108864 libvirtd > "$RESULTS/libvirtd.log" 2>&1 &
  LVP=$!
  i=0
  until virsh -c qemu:///system version > /dev/null 2>&1; do
    sleep 1; i=$((i+1)); [ $i -gt 120 ] && return 1
  done
  echo "lab: libvirtd up after ${i}s"
}
LVP=
LV_OK=
if libvirt_up; then LV_OK=1; else echo "lab: libvirtd did not start (see libvirtd.log)"; fi
"#;

/// Real VMMs as VFIO clients, under the recorder: QEMU started directly and
/// by libvirt. Each VMM scenario writes its kernel truth to
/// `vmm-<s>.json` and, while its VMs live, the agent's snapshot to
/// `vmm-<s>-alive.json` (and `vmm-<s>-unplugged.json` while a hot-plugged
/// device is out). A failed scenario does not fail the guest: the lab
/// check reports it with the rest.
fn vmm_script(scenarios: &[String]) -> anyhow::Result<String> {
    let bin = bin_dir()?;
    let mut s = format!("# Real VMMs (QEMU, libvirt) on the vfio-pci devices.\n{LIBVIRT_UP}");
    for n in scenarios {
        s.push_str(&format!(
            "\"{bin}/vfio-zp-workload\" --scenario {n} --truth \"$RESULTS/vmm-{n}.json\" --while-alive \"busybox wget -q -O $RESULTS/vmm-{n}-\\$VFIO_ZP_PHASE.json http://127.0.0.1:10983/api/v1/snapshot\" > \"$RESULTS/vmm-{n}.txt\" 2>&1 || {{ echo \"lab: VMM scenario {n} failed\"; tail -n 5 \"$RESULTS/vmm-{n}.txt\"; }}\n",
            bin = bin.display()
        ));
    }
    s.push_str("[ -n \"$LVP\" ] && kill $LVP\n");
    Ok(s)
}

pub fn vmm_scenarios() -> anyhow::Result<Vec<String>> {
    let out = crate::cmd::output(
        std::process::Command::new(bin_dir()?.join("vfio-zp-workload")).arg("--list-vmm-scenarios"),
    )?;
    Ok(out.lines().map(str::to_string).collect())
}

pub fn scenarios() -> anyhow::Result<Vec<String>> {
    let out = crate::cmd::output(
        std::process::Command::new(bin_dir()?.join("vfio-zp-workload")).arg("--list-scenarios"),
    )?;
    Ok(out.lines().map(str::to_string).collect())
}

/// Guests run at once: one per host core (each guest has one vCPU, a host
/// thread under TCG), at most `VFIO_ZP_LAB_JOBS` when that is set.
pub fn jobs() -> usize {
    std::env::var("VFIO_ZP_LAB_JOBS")
        .ok()
        .and_then(|j| j.parse().ok())
        .filter(|j: &usize| *j > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Runs the matrix, [`jobs`] guests at once, in the order given (slowest
/// first keeps the last guest short); results land in `out/<kernel>/`.
/// Kernels are prepared (downloaded) one by one first.
pub fn run(names: &[String], out: &Path, pages: u64, timeout: Duration) -> anyhow::Result<()> {
    run_with(names, out, pages, timeout, true)
}

/// [`run`], with or without the real VMMs (`vmm`).
fn run_with(
    names: &[String],
    out: &Path,
    pages: u64,
    timeout: Duration,
    vmm: bool,
) -> anyhow::Result<()> {
    let scenarios = scenarios()?;
    let kernels = names
        .iter()
        .map(|n| kernels::prepare(n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let script = guest_script(&scenarios, pages, vmm)?;
    let queue = std::sync::Mutex::new(
        kernels
            .into_iter()
            .collect::<std::collections::VecDeque<_>>(),
    );
    let results = std::sync::Mutex::new(Vec::new());
    let started = std::time::Instant::now();
    let jobs = jobs().min(names.len()).max(1);
    eprintln!(
        "lab: {} kernels, {jobs} guest(s) at once, {} scenarios each",
        names.len(),
        scenarios.len()
    );
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                while let Some(k) = queue.lock().map(|mut q| q.pop_front()).ok().flatten() {
                    let r = one(&k, out, &script, timeout);
                    if let Ok(mut v) = results.lock() {
                        v.push((k.name.clone(), r));
                    }
                }
            });
        }
    });
    let mut failed = Vec::new();
    let mut results = results.into_inner().unwrap_or_default();
    results.sort_by_key(|(n, _)| names.iter().position(|x| x == n));
    eprintln!("lab: matrix done in {:.0?}:", started.elapsed());
    for (name, r) in results {
        match r {
            Ok(t) => eprintln!("lab:   {name:<11} ok in {t:.0?}"),
            Err(e) => {
                eprintln!("lab:   {name:<11} FAILED: {e:#}");
                failed.push(name);
            }
        }
    }
    anyhow::ensure!(
        failed.is_empty(),
        "guest runs failed on: {}",
        failed.join(", ")
    );
    Ok(())
}

/// One kernel's guest; its time, or why it failed.
fn one(
    k: &kernels::Kernel,
    out: &Path,
    script: &str,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let name = &k.name;
    let dir = out.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("lab: {name}: booting {}", k.release);
    let r =
        qemu::run(k, &dir, script, timeout, false).with_context(|| format!("lab kernel {name}"))?;
    match r.exit_code {
        Some(0) => {
            eprintln!("lab: {name}: done in {:.0?}", r.elapsed);
            Ok(r.elapsed)
        }
        code => {
            eprintln!(
                "lab: {name}: guest command failed ({code:?}); console: {}",
                dir.join("console.log").display()
            );
            tail(&dir.join("console.log"), 30);
            anyhow::bail!("guest command failed ({code:?}) after {:.0?}", r.elapsed)
        }
    }
}

pub fn tail(path: &Path, n: usize) {
    if let Ok(t) = std::fs::read_to_string(path) {
        let lines: Vec<_> = t.lines().collect();
        for l in &lines[lines.len().saturating_sub(n)..] {
            eprintln!("  | {l}");
        }
    }
}

/// Golden fixtures: a small-page matrix (the type1 scenarios, the flood and
/// the restarts) whose recordings, live verdicts and kernel truths are kept
/// in the tree for `cargo test` (tests/golden.rs).
pub fn fixtures(
    names: &[String],
    dest: &Path,
    pages: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let out = std::env::temp_dir().join("vfio-zp-fixtures");
    // Without the real VMMs: a QEMU maps all its RAM, one record per page
    // on 5.10, which would make each golden recording 13 MB.
    run_with(names, &out, pages, timeout, false)?;
    for name in names {
        let to = dest.join(name);
        let _ = std::fs::remove_dir_all(&to);
        std::fs::create_dir_all(&to)?;
        // The ring flood's files too, in flood/ (its recorder's log names
        // this machine's paths: left out).
        std::fs::create_dir_all(to.join("flood"))?;
        for e in std::fs::read_dir(out.join(name))?.flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            if f == "recording.jsonl" || f == "verdicts.json" || f.starts_with("truth-") {
                std::fs::copy(e.path(), to.join(&f))?;
            } else if f.starts_with("flood") && !f.ends_with(".log") && !f.contains("workload") {
                std::fs::copy(e.path(), to.join("flood").join(&f))?;
            }
        }
        eprintln!("fixtures: {name} -> {}", to.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bounding set the sandbox phase gives the agent is the unit's,
    /// as the kernel reports it for a process started under it.
    #[test]
    fn the_sandbox_bounds_capabilities_as_the_unit_does() {
        let set = bounding_set(UNIT).unwrap();
        assert!(set.starts_with("-all,+"), "{set}");
        let out = match std::process::Command::new("setpriv")
            .args([
                "--bounding-set",
                &set,
                "grep",
                "CapBnd",
                "/proc/self/status",
            ])
            .output()
        {
            Ok(o) => o,
            Err(_) => return vfio_zp::testing::skip("setpriv", "setpriv not installed"),
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let mask = u64::from_str_radix(text.trim().trim_start_matches("CapBnd:").trim(), 16)
            .unwrap_or_else(|_| panic!("{text}"));
        let named = unit_setting(UNIT, "CapabilityBoundingSet")
            .unwrap()
            .split_whitespace()
            .count();
        assert_eq!(mask.count_ones() as usize, named, "{set}: {text}");
    }
}
