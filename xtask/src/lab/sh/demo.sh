# shellcheck shell=dash disable=SC2034 # status: the guest command's exit status
# The demo's body (after libvirt-up.sh): a libvirt domain with the vfio-pci
# device as its <hostdev>, or QEMU alone, named as libvirt would name it,
# should libvirtd not start.
if [ -n "$LV_OK" ]; then
  "$BIN/vfio-zp-workload" --scenario libvirt-destroy || status=1
  kill "$LVP"
else
  "$BIN/vfio-zp-workload" --scenario qemu-pc-quit || status=1
fi
