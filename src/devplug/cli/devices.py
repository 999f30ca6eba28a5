"""``devplug devices``: show what a rule can match on, like a condensed ``udevadm info -a``.

For each device: its kernel name, subsystem, node, symlinks and notable properties, then its
own attributes (``ATTR{}``) and each ancestor's ``KERNELS``/``SUBSYSTEMS``/``DRIVERS`` with
the short printable ``ATTRS{}`` — the keys to copy into a rule. Only devices with a node by
default (those are what devplug hands to containers); ``--all`` for every device.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Iterator
from typing import Any, Optional, TextIO

from ..core.device import Device
from ..sources.udev import DeviceNotFound, find_device, list_devices, sysattr_names

#: Properties shown elsewhere in the output, or bookkeeping no rule wants to match.
_HIDDEN_PROPERTIES = frozenset({
    "ACTION", "CURRENT_TAGS", "DEVLINKS", "DEVNAME", "DEVPATH", "DEVTYPE", "DRIVER", "MAJOR",
    "MINOR", "SEQNUM", "SUBSYSTEM", "SYNTH_UUID", "TAGS", "USEC_INITIALIZED",
})
#: Attributes ``udevadm info -a`` leaves out too.
_HIDDEN_ATTRS = frozenset({"uevent", "dev", "subsystem", "driver", "module"})
_MAX_VALUE = 64
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_DIGITS = re.compile(r"(\d+)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "devices",
        help="list devices with the keys rules can match (like udevadm info -a, condensed)",
        description="List this machine's devices with what a rule can match on: kernel name, "
        "subsystem, node, symlinks, properties, and the attributes of the device and its "
        "ancestors (KERNELS/SUBSYSTEMS/DRIVERS/ATTRS of one ancestor can be combined in a rule).",
    )
    p.add_argument("device", nargs="*", metavar="DEVICE",
                   help="only these devices: /sys path, devpath (/devices/...) or /dev node")
    p.add_argument("--subsystem", "-s", action="append", default=None, metavar="S",
                   help="only devices of this subsystem (repeatable)")
    p.add_argument("--all", "-a", action="store_true",
                   help="also devices without a device node")
    p.add_argument("--json", action="store_true", help="one JSON object per device per line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: Optional[TextIO] = None) -> int:
    out = out or sys.stdout
    try:
        devices = _select(args)
    except DeviceNotFound as exc:
        print(f"devplug devices: {exc}", file=sys.stderr)
        return 2
    for dev in devices:
        if args.json:
            out.write(json.dumps(describe(dev), ensure_ascii=False) + "\n")
        else:
            out.write(render(dev) + "\n")
    if not devices and not args.json:
        hint = "" if args.all or args.device else " with a device node (--all shows every device)"
        print(f"no devices{hint}", file=sys.stderr)
    return 0


def _select(args: argparse.Namespace) -> list[Device]:
    subsystems = frozenset(args.subsystem or ())
    if args.device:
        found = [find_device(spec) for spec in args.device]
        return [d for d in found if not subsystems or d.subsystem in subsystems]
    devices = list_devices(subsystems or None)
    if not args.all:
        devices = tuple(d for d in devices if d.devnode)
    return sorted(devices, key=_natural_key)


def _natural_key(dev: Device) -> tuple:
    parts = _DIGITS.split(dev.sysname)
    name = tuple(int(p) if p.isdigit() else p for p in parts)
    return (dev.subsystem or "", name, dev.devpath)


def _shown(value: Optional[str]) -> bool:
    return value is not None and len(value) <= _MAX_VALUE and _PRINTABLE.fullmatch(value) is not None


def rule_attributes(dev: Device) -> dict[str, str]:
    """The device's own attributes worth matching: short, printable, read as udev reads them."""
    attrs: dict[str, str] = {}
    for name in sysattr_names(dev):
        if name in _HIDDEN_ATTRS:
            continue
        value = dev.read_attr(name)
        if value is not None and _shown(value):
            attrs[name] = value
    return attrs


def notable_properties(dev: Device) -> dict[str, str]:
    return {k: v for k, v in sorted(dev.properties.items()) if k not in _HIDDEN_PROPERTIES}


def describe(dev: Device) -> dict[str, Any]:
    """The JSON shape: the device and, under ``parents``, each ancestor nearest first."""
    return {
        "syspath": dev.syspath,
        "devpath": dev.devpath,
        "kernel": dev.sysname,
        "subsystem": dev.subsystem,
        "devtype": dev.devtype,
        "driver": dev.driver,
        "devnode": dev.devnode,
        "symlinks": list(dev.symlinks),
        "tags": sorted(dev.tags),
        "properties": dict(sorted(dev.properties.items())),
        "attributes": rule_attributes(dev),
        "parents": [
            {
                "devpath": p.devpath,
                "kernel": p.sysname,
                "subsystem": p.subsystem,
                "driver": p.driver,
                "attributes": rule_attributes(p),
            }
            for p in _ancestors(dev)
        ],
    }


def _ancestors(dev: Device) -> Iterator[Device]:
    chain = dev.chain()
    next(chain)
    return chain


def _q(value: Optional[str]) -> str:
    return json.dumps(value or "", ensure_ascii=False)


def _lines(prefix: str, items: Iterable[str]) -> list[str]:
    return [prefix + item for item in items]


def render(dev: Device) -> str:
    """Human output: rule keys ready to copy, the device first, then its ancestors."""
    head = dev.devnode or dev.syspath
    lines = [f"{head}  ({dev.subsystem or '-'} {dev.sysname})"]
    lines.append(f"    DEVPATH=={_q(dev.devpath)}")
    keys = [f"KERNEL=={_q(dev.sysname)}", f"SUBSYSTEM=={_q(dev.subsystem)}",
            f"DRIVER=={_q(dev.driver)}"]
    if dev.devtype:
        keys.append(f"ENV{{DEVTYPE}}=={_q(dev.devtype)}")
    lines.append("    " + ", ".join(keys))
    lines += _lines("    SYMLINK==", (_q(s) for s in dev.symlinks))
    if dev.tags:
        lines.append("    " + ", ".join(f"TAG=={_q(t)}" for t in sorted(dev.tags)))
    lines += _lines("    ", (f"ENV{{{k}}}=={_q(v)}" for k, v in notable_properties(dev).items()))
    lines += _lines("    ", (f"ATTR{{{k}}}=={_q(v)}" for k, v in rule_attributes(dev).items()))
    for parent in _ancestors(dev):
        lines.append(f"  parent {parent.devpath}")
        lines.append(f"    KERNELS=={_q(parent.sysname)}, SUBSYSTEMS=={_q(parent.subsystem)}, "
                     f"DRIVERS=={_q(parent.driver)}")
        lines += _lines("    ", (f"ATTRS{{{k}}}=={_q(v)}"
                                 for k, v in rule_attributes(parent).items()))
    return "\n".join(lines) + "\n"
