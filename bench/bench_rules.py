"""Rules engine throughput: N rules x M devices, all pure (hand-built device records).

Rules look like real ones (subsystem plus USB vendor/product, kernel globs, properties,
some parent-key and negated matches); devices are USB serial adapters, cameras, disks,
network interfaces and misc nodes with realistic parent chains. Prints one JSON object,
then a short table. ``python bench/bench_rules.py [--rules N] [--devices M] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from devplug.core.device import Device, static_attrs  # noqa: E402
from devplug.core.rules import RuleSet, parse_rules  # noqa: E402

SUBSYSTEMS = ["tty", "video4linux", "block", "net", "input", "misc", "usb", "sound", "hidraw"]


def make_devices(n: int, rnd: random.Random) -> list[Device]:
    root = Device("/devices/pci0000:00", "pci0000:00")
    pci = Device("/devices/pci0000:00/0000:00:14.0", "0000:00:14.0", subsystem="pci", driver="xhci_hcd",
                 parent=root, read_attr=static_attrs({"vendor": "0x8086", "device": "0xa36d", "class": "0x0c0330"}))
    devices = []
    for i in range(n):
        sub = SUBSYSTEMS[i % len(SUBSYSTEMS)]
        vid, pid = f"{rnd.randrange(0x10000):04x}", f"{rnd.randrange(0x10000):04x}"
        port = f"1-{i % 12 + 1}"
        usb = Device(f"{pci.devpath}/usb1/{port}", port, subsystem="usb", devtype="usb_device", driver="usb",
                     parent=pci, read_attr=static_attrs({"idVendor": vid, "idProduct": pid, "serial": f"S{i:06d}",
                                                         "manufacturer": "ACME", "product": f"Gadget {i}  "}))
        iface = Device(f"{usb.devpath}/{port}:1.0", f"{port}:1.0", subsystem="usb", devtype="usb_interface",
                       driver=rnd.choice(["ftdi_sio", "cp210x", "uvcvideo", "usb-storage", "cdc_acm"]), parent=usb,
                       read_attr=static_attrs({"bInterfaceNumber": "00", "bInterfaceClass": "ff"}))
        name = {"tty": f"ttyUSB{i}", "video4linux": f"video{i}", "block": f"sd{i}", "net": f"eth{i}",
                "input": f"event{i}", "misc": f"misc{i}", "usb": f"hiddev{i}", "sound": f"pcmC{i}D0p",
                "hidraw": f"hidraw{i}"}[sub]
        props = {"SUBSYSTEM": sub, "DEVNAME": f"/dev/{name}", "ID_VENDOR_ID": vid, "ID_MODEL_ID": pid,
                 "ID_SERIAL_SHORT": f"S{i:06d}", "ID_PATH": f"pci-0000:00:14.0-usb-0:{i % 12 + 1}:1.0"}
        devices.append(Device(f"{iface.devpath}/{name}", name, subsystem=sub, devnode=f"/dev/{name}",
                              properties=props, parent=iface, tags=frozenset({"systemd"}) if i % 3 else frozenset(),
                              read_attr=static_attrs({"index": str(i % 2), "dev": f"188:{i}"})))
    return devices


def make_rules(n: int, devices: list[Device], rnd: random.Random) -> str:
    lines = []
    for i in range(n):
        dev = rnd.choice(devices)
        usb = dev.parent.parent  # type: ignore[union-attr]
        vid, pid = usb.read_attr("idVendor"), usb.read_attr("idProduct")
        style = i % 5
        if style in (0, 1):
            keys = [f'SUBSYSTEM=="{dev.subsystem}"', f'ATTRS{{idVendor}}=="{vid}"', f'ATTRS{{idProduct}}=="{pid}"']
        elif style == 2:
            keys = [f'SUBSYSTEM=="{dev.subsystem}"', f'KERNEL=="{dev.sysname[:-1]}*"', f'ENV{{ID_VENDOR_ID}}=="{vid}"']
        elif style == 3:
            keys = [f'KERNEL=="{dev.sysname}|nomatch"', 'TAG=="systemd"', f'DRIVERS=="{dev.parent.driver}"']  # type: ignore[union-attr]
        else:
            keys = ['SUBSYSTEMS=="usb"', f'ATTRS{{product}}=="Gadget {rnd.randrange(len(devices))}"',
                    'ATTR{index}!="1"']
        keys.append(f'RESOURCE="res{i % 50}"')
        lines.append(", ".join(keys))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", type=int, default=1000)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    devices = make_devices(args.devices, rnd)
    text = make_rules(args.rules, devices, rnd)
    t0 = time.perf_counter()
    rules, errors = parse_rules(text, "bench.rules")
    assert not errors, errors[:3]
    ruleset = RuleSet(["bench.rules"], rules)
    parse_s = time.perf_counter() - t0
    best = float("inf")
    claimed = matched = 0
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        claims = [ruleset.evaluate(d) for d in devices]
        best = min(best, time.perf_counter() - t0)
        claimed = sum(c.resource is not None for c in claims)
        matched = sum(len(c.matched) for c in claims)
    pairs = args.rules * args.devices
    result = {
        "rules": args.rules,
        "devices": args.devices,
        "parse_seconds": round(parse_s, 4),
        "seconds": round(best, 4),
        "rule_device_pairs_per_second": round(pairs / best),
        "devices_per_second": round(args.devices / best),
        "claimed_devices": claimed,
        "matched_rules": matched,
        "python": sys.version.split()[0],
    }
    print(json.dumps(result))
    print(f"{'rules':>6} {'devices':>8} {'seconds':>8} {'matches/s':>12} {'devices/s':>10}")
    print(f"{args.rules:>6} {args.devices:>8} {best:>8.3f} {pairs / best:>12.0f} {args.devices / best:>10.0f}")


if __name__ == "__main__":
    main()
