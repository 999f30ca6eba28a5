"""Recorded uevent sequences of a real USB serial adapter, and how a live one is compared.

The fixtures in ``fixtures/*.json`` were recorded in the USB guest (``test_event_sequences.py``
with ``DEVPLUG_RECORD_USB_FIXTURES=1``): for one QEMU usb-serial (FTDI 0403:6001) plugged,
unplugged, replugged into another port, and plugged while ``ftdi_sio``/``usbserial`` were
not loaded. Each event is reduced to what does not depend on the run: the action, the
device's *role* in the adapter (``usb_device``, ``interface``, ``port`` for the usb-serial
device, ``tty``, or ``module:NAME`` / ``driver:BUS/NAME`` for the module load), the driver of
a ``bind``, and which kinds of ``/dev`` links udev reported. Names (``1-3``, ``ttyUSB1``) are
kept for reading but not compared; times are not recorded at all.

Other tests use the fixtures where they used to assume an order: ``tests/umock.py`` replays
the plug and unplug sequences into umockdev.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent / "fixtures"
STEPS = ("first_plug_module_load", "plug", "unplug", "replug")


def role(event: dict[str, Any]) -> str:
    subsystem, devtype, name = event["subsystem"], event["devtype"], event["sys_name"]
    if subsystem == "usb":
        return "usb_device" if devtype == "usb_device" else "interface"
    if subsystem == "usb-serial":
        return "port"
    if subsystem == "tty":
        return "tty"
    if subsystem == "module":
        return f"module:{name}"
    if subsystem == "drivers":
        # devpath /bus/usb-serial/drivers/ftdi_sio → driver:usb-serial/ftdi_sio
        parts = event["devpath"].strip("/").split("/")
        return f"driver:{parts[1]}/{parts[-1]}" if len(parts) >= 4 else f"driver:{name}"
    return f"{subsystem}:{name}"


def link_kinds(event: dict[str, Any]) -> list[str]:
    """``serial/by-id``, ``serial/by-path``… for the links udev reported (none from the kernel)."""
    kinds = set()
    for link in event.get("devlinks") or ():
        parts = link.removeprefix("/dev/").split("/")
        kinds.add("/".join(parts[:-1]) or parts[0])
    return sorted(kinds)


def reduce(events: list[dict[str, Any]], usb_devpath: str) -> dict[str, list[dict[str, Any]]]:
    """The adapter's events per source, in arrival order, reduced to comparable records.

    ``usb_devpath`` is the USB device's devpath (``/devices/.../usb1/1-1``): events below it
    belong to the adapter; module and driver events (a first plug loads them) are kept too.
    """
    out: dict[str, list[dict[str, Any]]] = {"kernel": [], "udev": []}
    for e in events:
        below = e["devpath"] == usb_devpath or e["devpath"].startswith(usb_devpath + "/")
        if not below and e["subsystem"] not in ("module", "drivers"):
            continue
        rec: dict[str, Any] = {"action": e["action"], "role": role(e), "name": e["sys_name"]}
        if e["action"] in ("bind", "unbind"):
            rec["driver"] = e["driver"]
        if e["source"] == "udev" and rec["role"] == "tty":
            rec["links"] = link_kinds(e)
        out[e["source"]].append(rec)
    return out


def comparable(rec: dict[str, Any]) -> tuple:
    return (rec["action"], rec["role"], rec.get("driver"), tuple(rec.get("links", ())))


def load(step: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{step}.json").read_text())


def save(step: str, seq: dict[str, list[dict[str, Any]]], meta: dict[str, Any]) -> None:
    FIXTURES.mkdir(exist_ok=True)
    doc = {"step": step, **meta, "kernel": seq["kernel"], "udev": seq["udev"]}
    (FIXTURES / f"{step}.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


def differences(step: str, live: dict[str, list[dict[str, Any]]], recorded: dict[str, Any]) -> list[str]:
    """What differs between a live sequence and the recorded one (empty when they agree).

    Without module loading the whole order is fixed per source: the kernel emits the events
    of one adapter from one thread, and udevd handles events of a device and of its parents
    and children one after the other, so its re-broadcasts keep that order. With a module
    load, udevd handles the ``module`` and ``drivers`` events in parallel with the adapter's
    (unrelated devpaths), so only these are compared: the same events, the same order per
    role, and (kernel source) every driver registered before the ``port`` appears. (A
    module's own ``add`` comes when its init returned: ``module:ftdi_sio`` follows the binds
    its init caused.)
    """
    problems = []
    for source in ("kernel", "udev"):
        got = [comparable(r) for r in live[source]]
        want = [comparable(r) for r in recorded[source]]
        if step != "first_plug_module_load":
            if got != want:
                problems.append(f"{source}: order/content differs:\n  got  {got}\n  want {want}")
            continue
        if Counter(got) != Counter(want):
            problems.append(f"{source}: different events:\n  got  {sorted(got)}\n  want {sorted(want)}")
        for r in {w[1] for w in want}:
            g_r = [x for x in got if x[1] == r]
            w_r = [x for x in want if x[1] == r]
            if g_r != w_r:
                problems.append(f"{source}: order of {r} differs: got {g_r}, want {w_r}")
        if source != "kernel":
            continue  # udevd may re-broadcast a driver's add after the port's (parallel workers)
        port_at = next((i for i, x in enumerate(got) if x[:2] == ("add", "port")), None)
        for i, x in enumerate(got):
            if x[1].startswith("driver:") and (port_at is None or i > port_at):
                problems.append(f"{source}: {x[1]} registered after the port appeared: {got}")
    return problems
