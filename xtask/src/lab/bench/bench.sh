# shellcheck shell=dash
# The bench guest (the host's /bin/sh, dash). Set by the preamble: BIN (the
# release binaries), PAGES, REPS (runs of each workload per set), ROUNDS,
# VM_MIB (the real VM's RAM), FULL_RING_KIB, STORM (wrk's connections),
# ENTRY_ONLY (points without a return program, |-separated).
#
# Four arrangements take turns in every round, so the guest's drift (2x
# from round to round under TCG) hits each alike: nothing attached, the
# vfio-zp agent, bpftrace counting the points the agent attached, and
# empty programs on those points. Each set runs REPS times a read-only and
# a read-write map+unmap of PAGES pages and a real QEMU's start and stop.
set -u
busybox ip link set lo up 2>/dev/null || busybox ifconfig lo 127.0.0.1 up
echo 1 > /proc/sys/kernel/bpf_stats_enabled || echo "bench: no bpf_stats"
SNAP=http://127.0.0.1:10986/api/v1/snapshot
status=0
HZ=$(getconf CLK_TCK 2>/dev/null || echo 100)
# Workload on CPU 0, tracer on CPU 1, as on a host where the agent is not
# on the VM's core. ON0 and ON1 are command prefixes, split on purpose.
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  ON0="taskset -c 0"; ON1="taskset -c 1"
else
  ON0=""; ON1=""; echo "bench: NOT PINNED (taskset or a second vCPU missing)" | tee "$RESULTS/bench-unpinned"
fi
work() {
  # shellcheck disable=SC2086
  $ON0 "$BIN/vfio-zp-workload" --scenario "$1" --pages "$PAGES" --hold-ms 0 --truth "$RESULTS/$2.json" > /dev/null 2>&1 || { echo "bench: workload $1 failed"; status=1; }
}
# A real QEMU with VM_MIB of RAM and a vfio-pci device: started paused
# until its mappings are made (all its RAM, read-write), then quit.
vm() {
  # shellcheck disable=SC2086
  $ON0 "$BIN/vfio-zp-workload" --vm-lifecycle-mib "$VM_MIB" --truth "$RESULTS/$1.json" > "$RESULTS/$1.txt" 2>&1 || { echo "bench: VM lifecycle failed"; tail -n 5 "$RESULTS/$1.txt"; status=1; }
}
set_of() {
  i=1
  while [ $i -le "$REPS" ]; do
    work ro-read-touched "bench-$1-ro-$i"
    work rw-read-touched "bench-$1-rw-$i"
    vm "bench-$1-vm-$i"
    i=$((i+1))
  done
}
# utime + stime of a process, in clock ticks.
# shellcheck disable=SC2046 # the two fields, split on purpose
ticks() { set -- $(cut -d' ' -f14,15 "/proc/$1/stat"); echo $(($1 + $2)); }
progs() { bpftool prog show -j > "$RESULTS/bench-progs-$1.json" 2>/dev/null || echo "bench: bpftool failed"; }
# $2: the agent's extra options, split on purpose.
agent() {
  # shellcheck disable=SC2086
  $ON1 "$BIN/vfio-zp" agent --listen 127.0.0.1:10986 --no-wait --fresh $2 2> "$RESULTS/bench-agent-$1.log" &
  AP=$!
  i=0
  until busybox wget -q -O /dev/null $SNAP 2>/dev/null; do
    sleep 0.5; i=$((i+1))
    if ! kill -0 "$AP" 2>/dev/null || [ $i -gt 900 ]; then echo "bench: agent did not start"; status=1; return 1; fi
  done
  # The probe set settles within a few ticks of the start: on a kernel
  # that does not need the generic unpin probes they go (not_needed) once
  # its zero-page reads are seen. 20 s at most, then measured as it is.
  i=0
  until busybox wget -q -O - $SNAP 2>/dev/null | grep -q '"state":"not_needed"' || [ $i -gt 40 ]; do sleep 0.5; i=$((i+1)); done
  busybox wget -q -O "$RESULTS/bench-probes-$1.json" $SNAP
}
# Waits until the agent has caught up: its snapshot (published with each
# counters line) counts type1 pin calls and its counts stay put over 4 s.
# Under TCG an agent may drain a full ring for minutes after the workload
# ended; a fixed wait read a snapshot from before the run.
settle() {
  prev=""; same=0; i=0
  while [ $i -lt 300 ]; do
    cur=$(busybox wget -q -O - $SNAP 2>/dev/null | grep -o '"hits":{[^}]*}')
    case "$cur" in *'"type1_pin":0,'*|"") same=0 ;; *)
      if [ "$cur" = "$prev" ]; then same=$((same+1)); else same=0; fi ;;
    esac
    [ $same -ge 2 ] && return 0
    prev=$cur; sleep 2; i=$((i+1))
  done
  echo "bench: the agent had not caught up after 600 s"
}
# The same points counted by bpftrace (clone suffixes become wildcards),
# and empty bodies on them (the cost of a program that does nothing: this
# guest's floor for both tools).
bt_scripts() {
  while read -r label sym; do
    s=$(echo "$sym" | sed 's/\./*/g')
    echo "kprobe:$s { @[\"$label\"] = count(); }"
    case "|$ENTRY_ONLY|" in *"|$label|"*) ;; *) echo "kretprobe:$s { @[\"${label}_ret\"] = count(); }";; esac
  done < "$RESULTS/bench-points.txt" > "$RESULTS/bpftrace.bt"
  sed 's/{ .* }$/{ }/' "$RESULTS/bpftrace.bt" > "$RESULTS/floor.bt"
}
# $1: bpftrace or floor; $2: the round.
bt() {
  progs "before-$1-$2"
  # shellcheck disable=SC2086
  $ON1 bpftrace "$RESULTS/$1.bt" > "$RESULTS/$1-$2.log" 2>&1 &
  BP=$!
  i=0
  until grep -q Attaching "$RESULTS/$1-$2.log" 2>/dev/null || [ $i -gt 600 ]; do sleep 0.5; i=$((i+1)); done
  sleep 3
  set_of "$1-$2"
  progs "$1-$2"
  # Which program is on which point and side (bpftrace's names are cut).
  bpftool perf list -j > "$RESULTS/bench-perf-$1-$2.json" 2>/dev/null || echo "bench: bpftool perf failed"
  kill -INT "$BP"; wait "$BP"
}
round=1
while [ $round -le "$ROUNDS" ]; do
  set_of "detached-$round"
  progs "before-vfio-zp-$round"
  # A ring that holds every record of a set: the cost measured is the cost
  # of every event delivered (a full ring makes dropped events cheap).
  agent "$round" "--ring-buffer-kib $FULL_RING_KIB"
  if [ "$round" = 1 ]; then
    # The points the agent settled on, for bpftrace to count the same.
    busybox wget -q -O - $SNAP | grep -o '"probe":"[a-z_0-9]*","function":"[^"]*","symbol":"[^"]*","state":"attached"' \
      | sed 's/"probe":"\([^"]*\)","function":"[^"]*","symbol":"\([^"]*\)".*/\1 \2/' > "$RESULTS/bench-points.txt"
    bt_scripts
    # The idle agent's CPU (attached, nothing mapping): utime + stime in
    # clock ticks over 30 s.
    a=$(ticks "$AP"); sleep 30; b=$(ticks "$AP")
    echo "$a $b $HZ 30" > "$RESULTS/bench-idle.txt"
    # A scrape storm while a read-only run maps: HTTP has its own thread,
    # so the event loop's ticks must stay on time (its lag histogram,
    # read before and after).
    if command -v wrk >/dev/null; then
      busybox wget -q -O "$RESULTS/bench-lag-before.txt" http://127.0.0.1:10986/metrics
      # shellcheck disable=SC2086
      $ON0 wrk -t1 -c"$STORM" -d30s http://127.0.0.1:10986/metrics > "$RESULTS/bench-wrk.txt" 2>&1 &
      WP=$!
      work ro-read-touched bench-storm-ro-1
      wait $WP
      busybox wget -q -O "$RESULTS/bench-lag-after.txt" http://127.0.0.1:10986/metrics || echo "bench: no metrics after the storm"
    else
      echo "no wrk on the host" > "$RESULTS/bench-wrk-skipped"
    fi
  fi
  a=$(ticks "$AP")
  set_of "attached-$round"
  settle # its CPU includes draining what the last run left in the ring
  echo "$a $(ticks "$AP") $HZ" > "$RESULTS/bench-agent-cpu-$round.txt"
  busybox wget -q -O "$RESULTS/bench-snap-$round.json" $SNAP
  progs "vfio-zp-$round"
  kill -TERM "$AP"; wait "$AP"
  if command -v bpftrace >/dev/null; then
    bt bpftrace "$round"
    bt floor "$round"
  else
    echo "no bpftrace on the host" > "$RESULTS/bench-bpftrace-skipped"
  fi
  round=$((round+1))
done
# The default ring, one read-only run: what a host with defaults loses when
# one large mapping pins faster than the agent drains.
agent default "" && {
  work ro-read-touched bench-default-ro-1
  settle
  busybox wget -q -O "$RESULTS/bench-snap-default.json" $SNAP
  kill -TERM "$AP"; wait "$AP"
}
exit $status
