# shellcheck shell=dash
# vfio_iommu_type1 unloaded and reloaded under the running recorder: the
# snapshot must show its probes detached, then attached again; the time
# from the end of the load to the snapshot showing them attached lands in
# reattach-uptime. Then a second reload the recorder cannot see (it is
# stopped). scenarios.sh calls it halfway, so the scenarios run after it
# check that counting went on exactly.
type1_pin_state() {
  busybox wget -q -O - http://127.0.0.1:10983/api/v1/snapshot 2>/dev/null | grep -o '"probe":"type1_pin"[^}]*' | grep -o '"state":"[a-z_]*"'
}
reload_type1() {
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
    # A reload the recorder cannot see in /sys/module: stopped, it misses
    # the gap between unload and load, as its 100 ms poll may on a busy
    # host. No type1 call runs in between, so the return probes' counts of
    # this short life are 0; the scenarios after must still count exactly.
    kill -STOP "$RP"
    if rmmod vfio_iommu_type1; then
      eval "$TYPE1_LOAD" || echo "lab: reloading type1 (unseen) failed"
    else
      echo "lab: rmmod vfio_iommu_type1 (unseen reload) failed"
    fi
    kill -CONT "$RP"
    i=0
    until grep -q 'reloaded between two looks' "$RESULTS/recorder.log" && type1_pin_state | grep -q '"attached"' || [ $i -gt 300 ]; do sleep 0.05; i=$((i+1)); done
  else
    rm -f "$RESULTS/kprobe-profile-before-reload.txt"
    echo "lab: rmmod vfio_iommu_type1 failed"
  fi
}
