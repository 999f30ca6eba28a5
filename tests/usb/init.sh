#!/bin/busybox sh
# /init of the USB test guest's initramfs (busybox, run as PID 1 by the guest kernel).
#
# Why an initramfs at all: the guest's root is the *host's* / shared read-only over
# virtio-9p, and the 9p/virtio modules it needs are modules (not built in) in Debian's kernel.
# This script loads them (the list, in dependency order, is /modules.order, written at build
# time from `modprobe --show-depends`), stacks a tmpfs overlay on the shared root so the guest
# can write (/etc, /var, pyc files) without touching the host, mounts the host directory for
# live files (`xfer`, cache=none: files the host rewrites during a run are seen at once), and
# switch_roots into the host's root to run the stage-2 script named on the kernel command line
# (`devplug.stage2=PATH`). Everything that can change between runs lives in stage 2, so this
# file (hashed into the cache key) rarely changes.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() {
    echo "devplug-guest-init: $*" > /dev/console
    sleep 1
    poweroff -f
}

for m in $(cat /modules.order); do
    insmod "/modules/$m" || fail "insmod $m failed"
done

stage2=
for word in $(cat /proc/cmdline); do
    case "$word" in
        devplug.stage2=*) stage2=${word#devplug.stage2=} ;;
    esac
done
[ -n "$stage2" ] || fail "no devplug.stage2= on the kernel command line"

mkdir -p /lower /rw /newroot
# cache=loose: the host's root does not change under a test session that matters to the
# guest (the code under test is read once per process); it makes imports several times faster.
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=524288 hostroot /lower \
    || fail "mounting the host root over 9p failed"
mount -t tmpfs -o mode=0755,size=512m rw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot \
    || fail "overlay mount failed"
mkdir -p /newroot/xfer
mount -t 9p -o trans=virtio,version=9p2000.L,cache=none,msize=524288 xfer /newroot/xfer \
    || fail "mounting the xfer share failed"

for d in proc sys dev; do
    mount --move /$d /newroot/$d
done
exec switch_root /newroot /bin/sh "$stage2"
