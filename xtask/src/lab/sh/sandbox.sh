# shellcheck shell=dash disable=SC2034 # status: the guest command's exit status
# The systemd unit's sandbox, as far as a guest without systemd gives it:
# the HTTP socket bound outside and passed in (systemd-socket-activate, as
# vfio-zp.socket does), the agent in a network namespace of its own
# (PrivateNetwork=yes), and every system call it makes, from its exec to
# its exit, recorded by strace for the check against the unit's
# SystemCallFilter=, with the unit's memlock limit, no capability outside
# its bounding set and no new privileges. It maps, serves, re-attaches
# after a type1 reload and stops, so the calls of each path are in the
# trace. Set by the preamble: BIN, PAGES, SANDBOX_CGROUP, and from the
# unit MEMLOCK (prlimit's soft:hard) and BOUNDING (setpriv's set).
if command -v systemd-socket-activate >/dev/null && command -v strace >/dev/null; then
  SB=127.0.0.1:10987
  SBS=http://$SB/api/v1/snapshot
  sb_type1() { busybox wget -q -O - "$SBS" 2>/dev/null | grep -o '"probe":"type1_pin"[^}]*' | grep -o '"state":"[a-z_]*"'; }
  strace -f -qq -o "$RESULTS/sandbox-strace.txt" systemd-socket-activate -l $SB \
    prlimit --memlock="$MEMLOCK" setpriv --no-new-privs --bounding-set "$BOUNDING" unshare -n -- "$BIN/vfio-zp" agent --listen systemd --no-wait --fresh --state-dir /run/vfio-zp-sandbox 2> "$RESULTS/sandbox-agent.log" &
  SP=$!
  i=0
  # The first connection makes systemd-socket-activate exec the agent.
  until busybox wget -q -O /dev/null "$SBS" 2>/dev/null; do
    sleep 0.5; i=$((i+1))
    if ! kill -0 "$SP" 2>/dev/null || [ $i -gt 1200 ]; then echo "lab: sandboxed agent did not start"; tail -n 20 "$RESULTS/sandbox-agent.log"; status=1; break; fi
  done
  # The agent: strace's child (systemd-socket-activate, setpriv and unshare
  # exec into it, so it keeps their pid).
  SAP=
  for p in /proc/[0-9]*; do
    [ "$(cut -d' ' -f4 "$p/stat" 2>/dev/null)" = "$SP" ] && SAP=${p#/proc/}
  done
  { readlink /proc/self/ns/net; readlink "/proc/$SAP/ns/net"; } > "$RESULTS/sandbox-netns.txt"
  "$BIN/vfio-zp-workload" --scenario ro-read-touched --pages "$PAGES" --truth "$RESULTS/sandbox-truth.json" --cgroup "$SANDBOX_CGROUP" > "$RESULTS/sandbox-workload.txt" 2>&1 || { echo "lab: sandbox workload failed"; status=1; }
  # Waits, 300 s at most by the guest's clock, until the sandboxed agent's
  # snapshot shows type1_pin in state $1. Under strace every call of the
  # agent (kallsyms, perf_event_open) stops; a CI's 6.12 and 6.18 guests,
  # two TCG guests on two cores, took more than the 60 s this wait once
  # had. It ends when the state shows, so a generous bound costs nothing
  # when it is fast; the re-attach's own time is checked without strace
  # (reattach-uptime).
  sb_wait_type1() {
    W0=$(cut -d' ' -f1 /proc/uptime)
    until sb_type1 | grep -q "\"$1\""; do
      NOW=$(cut -d' ' -f1 /proc/uptime)
      if [ $((${NOW%.*} - ${W0%.*})) -gt 300 ]; then
        echo "lab: the sandboxed agent's type1 probes not $1 within 300 s"; break
      fi
      sleep 0.2
    done
  }
  if rmmod vfio_iommu_type1; then
    # The unload must be seen before the load: a wait for "attached" that
    # began while the agent had not yet noticed the unload ended at once,
    # and the snapshot then caught the probes detached (a CI's 6.18 guest).
    sb_wait_type1 module_not_loaded
    eval "$TYPE1_LOAD" || echo "lab: reloading type1 failed"
    T0=$(cut -d' ' -f1 /proc/uptime)
    sb_wait_type1 attached
    echo "$T0 $(cut -d' ' -f1 /proc/uptime)" > "$RESULTS/sandbox-reattach-uptime"
  fi
  # Under strace (every system call stopped) and TCG the agent's event
  # loop may trail the workload by seconds: wait, 60 s at most, until the
  # snapshot names the workload's VM rather than a fixed time.
  i=0
  until busybox wget -q -O - "$SBS" 2>/dev/null | grep -q '"name":"sandbox"' || [ $i -gt 120 ]; do sleep 0.5; i=$((i+1)); done
  busybox wget -q -O "$RESULTS/sandbox-snapshot.json" "$SBS" || echo "lab: sandboxed agent's snapshot failed"
  busybox wget -q -O "$RESULTS/sandbox-metrics.txt" "http://$SB/metrics" || echo "lab: sandboxed agent's metrics failed"
  [ -n "$SAP" ] && kill -TERM "$SAP"
  i=0
  while [ -n "$SAP" ] && kill -0 "$SAP" 2>/dev/null && [ $i -lt 120 ]; do sleep 0.5; i=$((i+1)); done
  [ -n "$SAP" ] && kill -0 "$SAP" 2>/dev/null && { echo "lab: the sandboxed agent ignored SIGTERM"; kill -9 "$SAP"; }
  wait "$SP"; echo $? > "$RESULTS/sandbox-exit"
else
  echo "no strace or systemd-socket-activate on the host" > "$RESULTS/sandbox-skipped"
fi
