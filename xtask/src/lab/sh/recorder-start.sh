# shellcheck shell=dash disable=SC2034 # RP, PP, WP, status: used by recorder-stop.sh
# Starts the recorder, waits until its header is written (probes attached)
# and starts a /metrics load; recorder-stop.sh follows the body. Set by the
# preamble: BIN, RECORDING (a file name in $RESULTS), PRINT (non-empty:
# events on the console, the demo).
set -u
REC="$RESULTS/$RECORDING"
rm -f "$REC"
busybox ip link set lo up 2>/dev/null || busybox ifconfig lo 127.0.0.1 up
"$BIN/vfio-zp" check > "$RESULTS/check.txt" 2>&1; echo $? > "$RESULTS/check-exit"
# The demo shows events live on the console; the matrix keeps the log.
# Closed containers stay in the series for the whole run: the surfaces are
# checked against the final verdicts.
if [ -n "$PRINT" ]; then
  "$BIN/vfio-zp" record -o "$REC" --verdicts "$RESULTS/verdicts.json" --listen 127.0.0.1:10983 --expire-after 2h --no-wait --print &
else
  "$BIN/vfio-zp" record -o "$REC" --verdicts "$RESULTS/verdicts.json" --listen 127.0.0.1:10983 --expire-after 2h --no-wait 2>"$RESULTS/recorder.log" &
fi
RP=$!
i=0
while [ ! -s "$REC" ]; do
  sleep 1; i=$((i+1))
  if ! kill -0 "$RP" 2>/dev/null || [ $i -gt 600 ]; then echo "lab: recorder did not start"; cat "$RESULTS/recorder.log" 2>/dev/null; exit 91; fi
done
echo "lab: recorder attached after ${i}s"
status=0
# What the running recorder kept after dropping capabilities (every thread).
cat "/proc/$RP"/task/*/status 2>/dev/null | grep CapEff > "$RESULTS/recorder-capeff.txt"
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
