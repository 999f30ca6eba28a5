"""The uevents a real FTDI adapter produces, checked against the recorded fixtures.

Order and content, never timing: see :mod:`tests.usb.sequences`. With
``DEVPLUG_RECORD_USB_FIXTURES=1`` the test records the fixtures instead (and still checks the
structural facts below), e.g. after a kernel or QEMU upgrade changed the sequence on purpose.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.usb import sequences
from tests.usb.bed import Bed

pytestmark = pytest.mark.usb_guest

RECORD = os.environ.get("DEVPLUG_RECORD_USB_FIXTURES") == "1"
PLUG_DONE = ({"source": "udev", "action": "add", "subsystem": "tty"},
             {"source": "udev", "action": "bind", "subsystem": "usb-serial"},
             {"source": "udev", "action": "bind", "devtype": "usb_interface"},
             {"source": "udev", "action": "bind", "devtype": "usb_device"})
UNLOADED = ("/module/ftdi_sio", "/module/usbserial", "/bus/usb/drivers/ftdi_sio",
            "/bus/usb-serial/drivers/ftdi_sio", "/bus/usb/drivers/usbserial_generic",
            "/bus/usb-serial/drivers/generic")
UNPLUG_DONE = ({"source": "udev", "action": "remove", "devtype": "usb_device"},)


def usb_devpath(bed: Bed, port: int) -> str:
    out = bed.guest.run("sh", "-c", f"readlink -f /sys/bus/usb/devices/1-{port}")["stdout"].strip()
    return out.removeprefix("/sys")


def test_plug_unplug_replug_and_module_load_sequences(bed: Bed) -> None:
    g = bed.guest
    meta = {"recorded": {"kernel": g.image.version, "qemu": g.qemu_version(),
                         "date": time.strftime("%Y-%m-%d"),
                         "device": "QEMU usb-serial (FTDI 0403:6001) on qemu-xhci, serial A10K1ABC"}}
    live: dict[str, dict] = {}
    # Nothing may hold the serial drivers, so the first plug below loads them. The unload's
    # own uevents must be through udevd before the recording starts.
    mark = bed.mark()
    g.run("modprobe", "-r", "ftdi_sio", "usbserial")
    bed.wait_events(mark, *({"source": "udev", "action": "remove", "devpath": p} for p in UNLOADED))
    try:
        mark = bed.mark()
        a = g.plug_serial("A10K1ABC", port=1)
        events = bed.wait_events(mark, *PLUG_DONE)
        path1 = usb_devpath(bed, 1)
        live["first_plug_module_load"] = sequences.reduce(events, path1)
    finally:
        g.run("modprobe", "ftdi_sio")
    mark = bed.mark()
    g.unplug(a)
    live["unplug"] = sequences.reduce(bed.wait_events(mark, *UNPLUG_DONE), path1)

    mark = bed.mark()
    a = g.plug_serial("A10K1ABC", port=1)
    live["plug"] = sequences.reduce(bed.wait_events(mark, *PLUG_DONE), path1)
    mark = bed.mark()
    g.unplug(a)
    bed.wait_events(mark, *UNPLUG_DONE)

    mark = bed.mark()
    a = g.plug_serial("A10K1ABC", port=3)
    live["replug"] = sequences.reduce(bed.wait_events(mark, *PLUG_DONE), usb_devpath(bed, 3))
    mark = bed.mark()
    g.unplug(a)
    bed.wait_events(mark, *UNPLUG_DONE)

    # Facts that hold whatever was recorded: the kernel's add of the tty comes without links;
    # udevd's copy of it has them; without a module load the two sources agree on the order.
    for step in ("plug", "replug"):
        tty_k = [r for r in live[step]["kernel"] if r["role"] == "tty"]
        tty_u = [r for r in live[step]["udev"] if r["role"] == "tty"]
        assert [r["action"] for r in tty_k] == ["add"] and "links" not in tty_k[0]
        assert tty_u[0]["links"] == ["serial/by-id", "serial/by-path"]
        assert [sequences.comparable(r)[:3] for r in live[step]["kernel"]] == \
            [sequences.comparable(r)[:3] for r in live[step]["udev"]]
    assert any(r["role"].startswith("module:") for r in live["first_plug_module_load"]["kernel"])

    if RECORD:
        for step, seq in live.items():
            sequences.save(step, seq, meta)
        return
    problems = []
    for step, seq in live.items():
        problems += [f"{step}: {p}" for p in sequences.differences(step, seq, sequences.load(step))]
    assert not problems, "\n".join(problems)
