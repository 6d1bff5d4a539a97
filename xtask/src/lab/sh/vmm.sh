# shellcheck shell=dash
# Real VMMs as VFIO clients, under the recorder: QEMU started directly and
# by libvirt (after libvirt-up.sh). Each VMM scenario (VMM_SCENARIOS, set by
# the preamble) writes its kernel truth to vmm-<s>.json and, while its VMs
# live, the agent's snapshot to vmm-<s>-alive.json (and
# vmm-<s>-unplugged.json while a hot-plugged device is out): the command
# prints it, and the workload runs it again until the snapshot is recent. A failed
# scenario does not fail the guest: the lab check reports it with the rest.
for n in $VMM_SCENARIOS; do
  # $VFIO_ZP_PHASE is the workload's to expand, not ours.
  "$BIN/vfio-zp-workload" --scenario "$n" --truth "$RESULTS/vmm-$n.json" --while-alive "busybox wget -q -O - http://127.0.0.1:10983/api/v1/snapshot | tee $RESULTS/vmm-$n-\$VFIO_ZP_PHASE.json" > "$RESULTS/vmm-$n.txt" 2>&1 || { echo "lab: VMM scenario $n failed"; tail -n 5 "$RESULTS/vmm-$n.txt"; }
done
[ -n "$LVP" ] && kill "$LVP"
