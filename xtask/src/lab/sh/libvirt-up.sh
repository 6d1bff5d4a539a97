# shellcheck shell=dash disable=SC2034 # LVP, LV_OK: used by vmm.sh and demo.sh
# libvirtd in the guest, as the notes on the lab found it runs: no
# systemd, dbus or virtlogd; its state on tmpfs over the host's (empty,
# read-only) directories; a writable /etc/libvirt with a qemu.conf that
# runs QEMU as an unprivileged `libvirt-qemu` (so its memlock limit
# holds) without relabelling or namespaces; the memory, cpu and pids
# controllers enabled for its cgroups. Sets LVP (libvirtd) and LV_OK.
libvirt_up() {
  for d in /var/lib/libvirt /var/cache/libvirt /var/log/libvirt; do mount -t tmpfs libvirt $d || return 1; done
  mkdir -p /run/libvirt-etc && cp -a /etc/libvirt/. /run/libvirt-etc/ && mount --bind /run/libvirt-etc /etc/libvirt || return 1
  printf 'user = "libvirt-qemu"\ngroup = "libvirt-qemu"\ndynamic_ownership = 0\nremember_owner = 0\nnamespaces = [ ]\nstdio_handler = "file"\n' > /etc/libvirt/qemu.conf
  cp /etc/passwd /run/passwd && echo 'libvirt-qemu:x:64055:64055::/var/lib/libvirt:/usr/sbin/nologin' >> /run/passwd && mount --bind /run/passwd /etc/passwd || return 1
  cp /etc/group /run/group && printf 'libvirt-qemu:x:64055:\nkvm:x:64056:\n' >> /run/group && mount --bind /run/group /etc/group || return 1
  chmod 0666 /dev/vfio/*
  echo "+memory +cpu +pids" > /sys/fs/cgroup/cgroup.subtree_control || return 1
  # Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK: libvirt's
  # cgroup v2 device filter (a BPF map) needs more than the default 64 KiB.
  prlimit --memlock=67108864:67108864 libvirtd > "$RESULTS/libvirtd.log" 2>&1 &
  LVP=$!
  i=0
  until virsh -c qemu:///system version > /dev/null 2>&1; do
    sleep 1; i=$((i+1)); [ $i -gt 120 ] && return 1
  done
  echo "lab: libvirtd up after ${i}s"
}
LVP=
LV_OK=
if libvirt_up; then LV_OK=1; else echo "lab: libvirtd did not start (see libvirtd.log)"; fi
