#!/bin/busybox sh
# shellcheck shell=dash
# busybox ash, checked as dash: Debian's shellcheck has no busybox dialect.
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
