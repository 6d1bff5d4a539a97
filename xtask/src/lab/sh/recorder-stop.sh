# shellcheck shell=dash disable=SC2034 # status: the guest command's exit status, after the rest
# After the body (see recorder-start.sh): probes the HTTP server with bad
# requests, reads the operator surfaces, stops the recorder with SIGTERM
# (timed), then kills a second recorder with SIGKILL to leave stale return
# probes for `top --local`.
[ -n "$WP" ] && wait "$WP"
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
# Exit 1 (degraded) is a finding here, not a failure of the lab.
"$BIN/vfio-zp" check --quick --agent 127.0.0.1:10983 > "$RESULTS/check-agent.txt" 2>&1
if [ -n "$PP" ]; then
  sleep 3
  busybox wget -q -O "$RESULTS/prometheus-query.json" 'http://127.0.0.1:9090/api/v1/query?query=%7B__name__%3D~%22vfio_zp_.%2A%22%7D' || echo "lab: Prometheus query failed"
  kill "$PP"
fi
# The interactive view in a real terminal.
if command -v tmux >/dev/null; then
  mkdir -p /dev/pts; mount -t devpts devpts /dev/pts 2>/dev/null
  export TMUX_TMPDIR=/run TERM=xterm-256color
  tmux new-session -d -s top -x 200 -y 50 "$BIN/vfio-zp top --agent 127.0.0.1:10983 --interval 500ms" || echo "lab: tmux failed"
  # Until top shows the containers of its first snapshot (20 s at most): a
  # fixed 3 s was outrun by a slow TCG guest.
  i=0
  until tmux capture-pane -p -t top > "$RESULTS/top-tmux.txt" && grep -q '^zero page refcount' "$RESULTS/top-tmux.txt" || [ $i -gt 40 ]; do sleep 0.5; i=$((i+1)); done
  tmux send-keys -t top s; sleep 2; tmux capture-pane -p -t top > "$RESULTS/top-tmux-sorted.txt"
  tmux send-keys -t top q; sleep 1
  tmux has-session -t top 2>/dev/null && { echo "lab: top did not quit"; tmux kill-server; }
else
  echo "no tmux in the guest" > "$RESULTS/top-tmux-skipped"
fi
# The kernel's own count of each return probe's runs, for the counters.
cat /sys/kernel/tracing/kprobe_profile > "$RESULTS/kprobe-profile.txt" 2>/dev/null
# The demo shows what the operator would see.
if [ -n "$PRINT" ]; then
  cat "$RESULTS/top.txt"
  grep -E '^vfio_zp_(zero_page_leaked_pins|leak_detected|zero_page_refcount)' "$RESULTS/metrics.txt"
fi
T0=$(cut -d' ' -f1 /proc/uptime)
kill -TERM "$RP"
wait "$RP" || { echo "lab: recorder failed"; status=1; }
echo "$T0 $(cut -d' ' -f1 /proc/uptime)" > "$RESULTS/stop-uptime"
KE=/sys/kernel/tracing/kprobe_events
cat $KE > "$RESULTS/kprobe-events-after-stop.txt" 2>/dev/null
# kill -9 leaves its return probes behind; the next start removes them.
"$BIN/vfio-zp" record -o /run/killed.jsonl --no-wait 2> "$RESULTS/killed.log" &
KP=$!
i=0
while [ ! -s /run/killed.jsonl ] && [ $i -lt 300 ] && kill -0 "$KP" 2>/dev/null; do sleep 1; i=$((i+1)); done
kill -9 "$KP"; wait "$KP" 2>/dev/null
cat $KE > "$RESULTS/kprobe-events-after-kill.txt" 2>/dev/null
# top with no agent running loads the probes itself.
"$BIN/vfio-zp" top --once --local --no-wait --interval 1s > "$RESULTS/top-local.txt" 2>&1 || echo "lab: top --local failed"
cat $KE > "$RESULTS/kprobe-events-final.txt" 2>/dev/null
[ -f "$RESULTS/recorder.log" ] && tail -n 3 "$RESULTS/recorder.log"
