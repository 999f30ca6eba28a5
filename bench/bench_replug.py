"""Memory under a gadget that replugs itself with a new serial forever (issue 10, item 3).

A USB gadget (a $5 microcontroller) can unplug and replug with new strings as often as it
likes; each new serial is a new device ID, and before ``Inventory.collect`` every one stayed
listed Unhealthy forever. This drives the real record layer and core with umockdev: each
replug adds an FTDI-shaped device (usb device, interface, usb-serial port, ttyUSB0) with serial
``G<n>`` on one port and removes it again; the uevents come from a pyudev monitor, records are
built as ``UdevSource`` builds them (``device_from_pyudev`` with a ``ParentCache``), and
``Pipeline.handle`` folds them into the inventory. A fake clock advances one second per replug
(a gadget replugging once a second).

Modes, each in a fresh process (RSS is per process):

- ``keep``: no collection (what main did: every ID stays);
- ``collect``: ``Inventory.collect(grace=300 s, in_use=∅, cap=1024)`` every 10 replugs, as the
  daemon's task does while kubelet's PodResources answers (the grace period binds);
- ``unreachable``: ``in_use=None`` (PodResources unreachable), cap 256 per resource.

    python bench/bench_replug.py [--replugs 10000] [--modes keep,collect,unreachable]

Needs umockdev (its preload library and GObject bindings); re-runs itself under
``LD_PRELOAD`` with the testbed on tmpfs. About 20 ms a replug (mostly umockdev creating
sysfs trees): ~3.5 minutes a mode at 10,000. Prints one JSON object, then a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

GRACE = 300.0
CAP = {"collect": 1024, "unreachable": 256}
EVERY = 10
HEAD = "/devices/pci0000:00/0000:00:14.0"


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _records(serial: str) -> list[tuple[str, str]]:
    """(devpath, umockdev record) of one FTDI-shaped gadget on port 1-1, parents first."""
    usb = f"{HEAD}/usb1/1-1"
    iface = f"{usb}/1-1:1.0"
    port = f"{iface}/ttyUSB0"
    tty = f"{port}/tty/ttyUSB0"
    return [
        (usb, f"P: {usb}\nE: SUBSYSTEM=usb\nE: DEVTYPE=usb_device\nE: DRIVER=usb\nE: DEVNAME=/dev/bus/usb/001/002\n"
              f"E: BUSNUM=001\nE: DEVNUM=002\nA: idVendor=0403\nA: idProduct=6001\nA: serial={serial}\n"
              f"A: product=FT232R USB UART\nA: busnum=1\nA: devnum=2\n"),
        (iface, f"P: {iface}\nE: SUBSYSTEM=usb\nE: DEVTYPE=usb_interface\nE: DRIVER=ftdi_sio\n"
                f"A: bInterfaceNumber=00\n"),
        (port, f"P: {port}\nE: SUBSYSTEM=usb-serial\nE: DRIVER=ftdi_sio\nA: port_number=0\n"),
        # No N: line: umockdev 0.17 cannot create the same /dev node again after a removal; the
        # records carry DEVNAME all the same.
        (tty, f"P: {tty}\nE: SUBSYSTEM=tty\nE: DEVNAME=/dev/ttyUSB0\nE: MAJOR=188\nE: MINOR=0\nA: dev=188:0\n"),
    ]


_LINKS = ("/sys/bus/usb/devices/1-1", "/sys/bus/usb/devices/1-1:1.0", "/sys/bus/usb-serial/devices/ttyUSB0",
          "/sys/class/tty/ttyUSB0", "/sys/dev/char/188:0", "/dev/.node/ttyUSB0")


def run_mode(mode: str, replugs: int) -> dict:
    """One mode, in this (preloaded) process."""
    import gi

    gi.require_version("UMockdev", "1.0")
    import pyudev
    from gi.repository import UMockdev

    from devplug.core.claims import Pipeline
    from devplug.core.inventory import Inventory
    from devplug.core.rules import RuleSet, parse_rules
    from devplug.sources.udev.records import ParentCache, device_from_pyudev

    testbed = UMockdev.Testbed.new()
    root = testbed.get_root_dir()
    testbed.add_from_string(f"P: {HEAD}\nE: SUBSYSTEM=pci\nA: vendor=0x8086\n")
    testbed.add_from_string(f"P: {HEAD}/usb1\nE: SUBSYSTEM=usb\nE: DEVTYPE=usb_device\nA: idVendor=1d6b\n")
    context = pyudev.Context()
    monitor = pyudev.Monitor.from_netlink(context, source="udev")
    monitor.start()
    rules, errors = parse_rules('SUBSYSTEM=="tty", ATTRS{idVendor}=="0403", RESOURCE="ftdi"\n', "bench.rules")
    assert not errors
    clock = [0.0]
    inventory = Inventory(clock=lambda: clock[0])
    pipeline = Pipeline(RuleSet(["bench.rules"], rules), inventory)
    cache = ParentCache()
    events = 0

    def drain(expected: int) -> None:
        nonlocal events
        for _ in range(expected):
            dev = monitor.poll(timeout=5)
            if dev is None:
                raise RuntimeError("umockdev sent no uevent")
            cache.forget(context.sys_path + dev.device_path)
            record = device_from_pyudev(dev, sys_root=context.sys_path, parent_cache=cache)
            pipeline.handle(record, dev.action)
            events += 1

    def replug(n: int) -> None:
        gadget = _records(f"G{n:08d}")
        for _path, record in gadget:
            testbed.add_from_string(record)  # sends "add"
        drain(len(gadget))
        for path, _record in reversed(gadget):
            testbed.uevent("/sys" + path, "remove")
        # What Testbed.remove_device does, without its cost (~12 ms a device): the device
        # directories and the links umockdev made for them.
        shutil.rmtree(root + "/sys" + gadget[0][0])
        for link in _LINKS:
            os.unlink(root + link)
        drain(len(gadget))
        clock[0] += 1.0
        if mode != "keep" and n % EVERY == 0:
            inventory.collect(clock[0], grace=GRACE, in_use=None if mode == "unreachable" else frozenset(),
                              cap=CAP[mode])

    warmup = 100
    for n in range(warmup):
        replug(n)
    rss0 = _rss_kib()
    t0 = time.perf_counter()
    for n in range(warmup, warmup + replugs):
        replug(n)
    seconds = time.perf_counter() - t0
    rss1 = _rss_kib()
    entries = sum(len(inventory.entries(r)) for r in inventory.resources())
    return {
        "mode": mode, "replugs": replugs, "uevents": events,
        "rss_mib_after_warmup": round(rss0 / 1024, 1), "rss_mib_after": round(rss1 / 1024, 1),
        "rss_growth_kib_per_1000_replugs": round((rss1 - rss0) / replugs * 1000, 1),
        "inventory_ids": entries, "forgotten_ids": inventory.forgotten_total,
        "parent_cache_entries": len(cache._entries),
        "ms_per_replug": round(seconds / replugs * 1e3, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replugs", type=int, default=10_000)
    ap.add_argument("--modes", default="keep,collect,unreachable")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one mode here
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_mode(args.one, args.replugs)))
        return
    from tests import umock

    reason = umock.unavailable_reason()
    if reason:
        raise SystemExit(reason)
    # The testbed on tmpfs: on this machine's disk, creating and removing sysfs trees costs 10×.
    env = dict(os.environ, LD_PRELOAD=umock.preload_library() or "", TMPDIR="/dev/shm")
    env.pop("UMOCKDEV_DIR", None)
    results = []
    for mode in args.modes.split(","):
        p = subprocess.run([sys.executable, __file__, "--one", mode, "--replugs", str(args.replugs)],
                           env=env, capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise SystemExit(f"{mode} failed:\n{p.stderr[-3000:]}")
        results.append(json.loads(p.stdout.strip().splitlines()[-1]))
    report = {"benchmark": "replug", "grace_s": GRACE, "cap": CAP, "collect_every": EVERY, "results": results}
    lines = [f"{'mode':<12} {'replugs':>8} {'RSS start':>10} {'RSS end':>9} {'KiB/1k':>8} {'IDs':>7} "
             f"{'forgotten':>9} {'parents':>8} {'ms/replug':>9}"]
    for r in results:
        lines.append(f"{r['mode']:<12} {r['replugs']:>8} {r['rss_mib_after_warmup']:>9.1f}M {r['rss_mib_after']:>8.1f}M "
                     f"{r['rss_growth_kib_per_1000_replugs']:>8} {r['inventory_ids']:>7} {r['forgotten_ids']:>9} "
                     f"{r['parent_cache_entries']:>8} {r['ms_per_replug']:>9}")
    print(json.dumps(report, indent=1))
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
