# shellcheck shell=dash disable=SC2034 # status: the guest command's exit status
# Every workload scenario under the recorder, each writing its kernel truth
# to truth-<scenario>.json; type1 is reloaded (reload-type1.sh) before the
# scenario numbered RELOAD_AT (from 0). Set by the preamble: SCENARIOS, one
# line per scenario: its name, its cgroup and its second cgroup ("-" for
# none); RELOAD_AT; PAGES.
n=0
# fd 3: the workloads keep the guest's stdin.
while read -r s cg cg2 <&3; do
  [ -n "$s" ] || continue
  [ $n = "$RELOAD_AT" ] && reload_type1
  n=$((n+1))
  set -- --scenario "$s" --pages "$PAGES" --truth "$RESULTS/truth-$s.json"
  [ "$cg" = - ] || set -- "$@" --cgroup "$cg"
  [ "$cg2" = - ] || set -- "$@" --cgroup2 "$cg2"
  "$BIN/vfio-zp-workload" "$@" || status=1
done 3<<EOF_SCENARIOS
$SCENARIOS
EOF_SCENARIOS
