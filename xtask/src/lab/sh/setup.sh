# shellcheck shell=dash
# The guest's set-up (the host's /bin/sh, dash). Set by the preamble:
# RESULTS, TREE (the kernel's package root), LEAKY_KO (the leaky type1
# module, or empty), TYPE1_LOAD (how guest commands load type1 again after
# unloading it), LAB_KERNEL.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
export HOME=/run TMPDIR=/run
fail() { echo "lab: $*"; echo 90 > "$RESULTS/exit-code"; exit 90; }
modprobe -d "$TREE" vfio-pci || fail 'modprobe vfio-pci failed'
modprobe -d "$TREE" vfio_iommu_type1 2>/dev/null
if [ -n "$LEAKY_KO" ]; then
  rmmod vfio_iommu_type1 2>/dev/null
  insmod "$LEAKY_KO" || fail 'cannot insert the leaky vfio_iommu_type1'
fi
# Not GROUPS: bash reserves that name (shellcheck reads it as bash's).
VGROUPS=
for d in /sys/bus/pci/devices/*; do
  { [ "$(cat "$d/vendor")" = 0x8086 ] && [ "$(cat "$d/device")" = 0x10d3 ]; } || continue
  DEV=$(basename "$d")
  echo vfio-pci > "$d/driver_override"
  [ -e "$d/driver" ] && echo "$DEV" > "$d/driver/unbind"
  echo "$DEV" > /sys/bus/pci/drivers_probe
  G=/dev/vfio/$(basename "$(readlink "$d/iommu_group")")
  [ -e "$G" ] || fail "$G did not appear for $DEV"
  VGROUPS="$VGROUPS $G"
done
# One positional parameter per group (split on purpose).
# shellcheck disable=SC2086
set -- $VGROUPS
[ $# -ge 1 ] || fail 'no e1000e in the guest'
export VFIO_GROUP="$1" VFIO_GROUP2="${2:-}" VFIO_GROUPS="$VGROUPS" VFIO_ZP_LAB_KERNEL="$LAB_KERNEL" RESULTS
export TYPE1_LOAD
echo "lab: $(uname -r), VFIO groups$VGROUPS, type1 taint '$(cat /sys/module/vfio_iommu_type1/taint)'"
sh "$RESULTS/guest-cmd.sh"
echo $? > "$RESULTS/exit-code"
sync
