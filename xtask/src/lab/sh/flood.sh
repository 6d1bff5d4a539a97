# shellcheck shell=dash disable=SC2034 # status: the guest command's exit status
# Ring buffer flood: every VFIO group maps at once into a one-page ring
# buffer under a recorder, every other page written so that no zero-page
# run folds: the exact counters must still match the kernel, the drops be
# counted and exported, and the flooded containers' verdicts say
# uncertain. Set by the preamble: BIN, PAGES.
FL=127.0.0.1:10985
"$BIN/vfio-zp" record -o "$RESULTS/flood.jsonl" --verdicts "$RESULTS/flood-verdicts.json" --listen $FL --ring-buffer-kib 4 --no-wait 2> "$RESULTS/flood-recorder.log" &
FP=$!
i=0
while [ ! -s "$RESULTS/flood.jsonl" ] && [ $i -lt 600 ] && kill -0 "$FP" 2>/dev/null; do sleep 1; i=$((i+1)); done
sleep 1
n=0
FLP=
for G in $VFIO_GROUPS; do
  n=$((n+1))
  VFIO_GROUP=$G "$BIN/vfio-zp-workload" --scenario ro-alternating --pages "$PAGES" --truth "$RESULTS/flood-truth-$n.json" --cgroup "machine.slice/machine-qemu\x2d1$n\x2dflood$n.scope" > "$RESULTS/flood-workload-$n.txt" 2>&1 &
  FLP="$FLP $!"
done
for p in $FLP; do wait "$p" || { echo "lab: flood workload failed"; status=1; }; done
sleep 2
busybox wget -q -O "$RESULTS/flood-metrics.txt" "http://$FL/metrics" || echo "lab: flood metrics scrape failed"
kill -TERM "$FP"
wait "$FP" || { echo "lab: flood recorder failed"; status=1; }
