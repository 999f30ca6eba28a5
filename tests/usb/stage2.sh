#!/bin/sh
# Stage 2 of the USB test guest: runs as PID 1 in the host's root (9p + tmpfs overlay).
#
# It makes the guest look like a small Debian system with the real USB stack: fresh /run and
# /tmp, the host's own systemd-udevd with its database populated (coldplug trigger), the USB
# drivers the tests use loaded *before* the first plug (the first plug otherwise loads modules
# and that changes the kernel's event order; the module-load sequence is tested on purpose by
# unloading them), then the command agent on the virtio-serial port named devplug.agent.
# Parameters come from the kernel command line: devplug.python= (interpreter), devplug.repo=
# (checkout whose tests/usb/agent.py runs), devplug.modules= (comma-separated, to preload).
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { echo "devplug-guest: [$(cut -d' ' -f1 /proc/uptime)] $*" > /dev/console; }
die() { log "$*"; echo o > /proc/sysrq-trigger; sleep 60; }

# init.sh moved these, but mount them again if that failed: nothing here works without them.
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev

python= repo= modules= pycache=
for word in $(cat /proc/cmdline); do
    case "$word" in
        devplug.python=*) python=${word#devplug.python=} ;;
        devplug.repo=*) repo=${word#devplug.repo=} ;;
        devplug.modules=*) modules=${word#devplug.modules=} ;;
        devplug.pycache=*) pycache=${word#devplug.pycache=} ;;
    esac
done

mount -t tmpfs -o mode=0755,nosuid,nodev run /run
# A fresh /tmp, unless the checkout, its interpreter or the bytecode cache live there (a CI
# checkout under /tmp): then the host's /tmp stays visible, writable through the overlay.
keep_tmp=
for p in "$python" "$repo" "$pycache"; do
    case "$p" in /tmp/*) keep_tmp=1 ;; esac
done
if [ -z "$keep_tmp" ]; then
    mount -t tmpfs -o mode=1777,nosuid,nodev tmp /tmp
fi
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620 devpts /dev/pts
mount -t tmpfs -o mode=1777 shm /dev/shm
hostname devplug-usb-guest

log "stage 2 started"
modprobe virtio_console || die "modprobe virtio_console failed"
udevd=/lib/systemd/systemd-udevd
[ -x "$udevd" ] || udevd=/usr/lib/systemd/systemd-udevd
"$udevd" --daemon || die "systemd-udevd did not start"
log "udevd started"
udevadm trigger --type=subsystems --action=add
udevadm trigger --type=devices --action=add
udevadm settle -t 60
log "coldplug settled"
for m in $(echo "$modules" | tr , ' '); do
    modprobe "$m" || die "modprobe $m failed"
done
udevadm settle -t 60
# configfs (a module here) is where the tests build USB gadgets (CDC-ACM over dummy_hcd).
modprobe configfs && mount -t configfs configfs /sys/kernel/config || die "configfs mount failed"

port=
for n in /sys/class/virtio-ports/*; do
    [ "$(cat "$n/name" 2>/dev/null)" = devplug.agent ] && port=/dev/$(basename "$n")
done
[ -n "$port" ] || die "no virtio-serial port named devplug.agent"
log "stage 2 ready, agent on $port"
cd /tmp
# The host compiled every module into $pycache (image.warm_bytecode): compiling under TCG
# would cost the first import of trio + h2 + protobuf ~20 s. New files compile into the overlay.
export PYTHONPYCACHEPREFIX=$pycache HOME=/root
exec "$python" "$repo/tests/usb/agent.py" "$port" "$repo"
