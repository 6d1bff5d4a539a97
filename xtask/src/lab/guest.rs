//! What runs inside the guest: /init (in the initramfs) mounts the host
//! root read-only and the results directory read-write at the same path, then
//! chroots into the host tree and runs the set-up script (VFIO binding) and
//! the caller's command. Host paths therefore work unchanged in the guest.
use std::path::Path;

use super::kernels::Kernel;

/// /init: PID 1 in the initramfs (busybox sh).
pub const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in /mods/*.ko; do insmod "$m" || echo "lab: insmod $m failed"; done
results=$(sed -n 's/.*vfiozp_results=\([^ ]*\).*/\1/p' /proc/cmdline)
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 hostroot /host; then
  echo "lab: cannot mount the host root over 9p"; poweroff -f
fi
mount -t proc proc /host/proc; mount -t sysfs sys /host/sys; mount -t devtmpfs dev /host/dev
mount -t tmpfs run /host/run
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results "/host$results" || echo "lab: results share missing"
mount -t cgroup2 none /host/sys/fs/cgroup
mount -t tracefs none /host/sys/kernel/tracing 2>/dev/null
mount -t debugfs none /host/sys/kernel/debug 2>/dev/null
mount -t bpf none /host/sys/fs/bpf 2>/dev/null
chroot /host /bin/sh "$results/guest-setup.sh"
echo "lab: guest done"
sync
poweroff -f
"#;

/// The set-up script: loads VFIO from the kernel's own tree (the leaky
/// type1 in place of the stock one for 5.10-leaky), binds every e1000e to
/// vfio-pci (each its own IOMMU group), then runs guest-cmd.sh and stores its exit code.
pub fn setup_script(k: &Kernel, results: &Path) -> String {
    let tree = k.tree.display();
    let leaky = match &k.leaky_module {
        Some(ko) => format!(
            "rmmod vfio_iommu_type1 2>/dev/null\ninsmod {} || fail 'cannot insert the leaky vfio_iommu_type1'\n",
            ko.display()
        ),
        None => String::new(),
    };
    // How guest commands load type1 again after unloading it (fault tests).
    let reload = match &k.leaky_module {
        Some(ko) => format!("insmod {}", ko.display()),
        None => format!("modprobe -d {tree} vfio_iommu_type1"),
    };
    format!(
        r#"set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
export HOME=/run TMPDIR=/run
RESULTS={results}
fail() {{ echo "lab: $*"; echo 90 > $RESULTS/exit-code; exit 90; }}
modprobe -d {tree} vfio-pci || fail 'modprobe vfio-pci failed'
modprobe -d {tree} vfio_iommu_type1 2>/dev/null
{leaky}GROUPS=
for d in /sys/bus/pci/devices/*; do
  [ "$(cat $d/vendor)" = 0x8086 ] && [ "$(cat $d/device)" = 0x10d3 ] || continue
  DEV=$(basename $d)
  echo vfio-pci > $d/driver_override
  [ -e $d/driver ] && echo $DEV > $d/driver/unbind
  echo $DEV > /sys/bus/pci/drivers_probe
  G=/dev/vfio/$(basename "$(readlink $d/iommu_group)")
  [ -e $G ] || fail "$G did not appear for $DEV"
  GROUPS="$GROUPS $G"
done
set -- $GROUPS
[ $# -ge 1 ] || fail 'no e1000e in the guest'
export VFIO_GROUP=$1 VFIO_GROUP2=${{2:-}} VFIO_GROUPS="$GROUPS" VFIO_ZP_LAB_KERNEL={name} RESULTS
export TYPE1_LOAD="{reload}"
echo "lab: $(uname -r), VFIO groups$GROUPS, type1 taint '$(cat /sys/module/vfio_iommu_type1/taint)'"
sh $RESULTS/guest-cmd.sh
echo $? > $RESULTS/exit-code
sync
"#,
        results = results.display(),
        name = k.name,
    )
}
