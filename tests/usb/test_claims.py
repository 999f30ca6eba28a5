"""Which real USB devices the shipped rules claim: a CDC-ACM board yes; a stick and a keyboard no.

QEMU 7.2 has no CDC-ACM device, so the board is a USB gadget built inside the guest with
configfs + ``dummy_hcd`` (a software USB device controller wired to a software host
controller): the guest's real ``cdc_acm`` driver binds it and creates ``/dev/ttyACM0``. It
says it is an Arduino Uno (2341:0043), which ``10-serial.rules`` claims as
``devplug.io/arduino`` (every 2341 product). The gadget side's own tty (``ttyGS0``) is a
virtual device with no USB parent and must stay unclaimed.
"""

from __future__ import annotations

import json
import sys

import pytest

from tests.usb.bed import Bed, allocated_paths

pytestmark = pytest.mark.usb_guest

ARDUINO = "devplug.io/arduino"
ACM_SERIAL = "ACM0001"
ACM_ID = f"2341-0043-{ACM_SERIAL}-if00"
GADGET = "/sys/kernel/config/usb_gadget/devplug-acm"

GADGET_UP = f"""
modprobe dummy_hcd
modprobe usb_f_acm
G={GADGET}
mkdir -p $G/strings/0x409 $G/configs/c.1/strings/0x409 $G/functions/acm.usb0
echo 0x2341 > $G/idVendor
echo 0x0043 > $G/idProduct
echo {ACM_SERIAL} > $G/strings/0x409/serialnumber
echo 'Arduino (www.arduino.cc)' > $G/strings/0x409/manufacturer
echo 'Arduino Uno' > $G/strings/0x409/product
echo acm > $G/configs/c.1/strings/0x409/configuration
ln -s $G/functions/acm.usb0 $G/configs/c.1/
ls /sys/class/udc | head -n1 > $G/UDC
"""
GADGET_UNPLUG = f"echo '' > {GADGET}/UDC"
GADGET_DOWN = f"""
G={GADGET}
[ -d $G ] || exit 0
[ -z "$(cat $G/UDC)" ] || echo '' > $G/UDC
rm -f $G/configs/c.1/acm.usb0
rmdir $G/configs/c.1/strings/0x409 $G/configs/c.1 $G/functions/acm.usb0 $G/strings/0x409 $G
modprobe -r dummy_hcd
"""


def test_cdc_acm_gadget_is_claimed_by_the_shipped_rules(bed: Bed) -> None:
    g = bed.guest
    dp = bed.start_devplug("udev")
    assert bed.wait(ARDUINO, timeout=180).lists == ({},)
    mark = bed.mark()
    try:
        g.sh(GADGET_UP)
        events = bed.wait_events(mark, {"source": "udev", "action": "bind", "subsystem": "usb",
                                        "driver": "cdc_acm"},
                                 {"source": "udev", "action": "add", "sys_name": "ttyACM0"})
        assert ("add", "tty", "ttyGS0") in {(e["action"], e["subsystem"], e["sys_name"]) for e in events}
        stream = bed.wait(ARDUINO, {ACM_ID: "Healthy"})
        assert stream.lists == ({}, {ACM_ID: "Healthy"})
        paths = allocated_paths(bed.allocate(ARDUINO, [ACM_ID]))
        assert ("/dev/ttyACM0", "/dev/ttyACM0") in paths
        assert any(c.startswith("/dev/serial/by-id/usb-Arduino") for h, c in paths if h == "/dev/ttyACM0"), paths

        inventory = bed.inventory()["devices"]
        claimed = {d["devnode"] for d in inventory}
        assert "/dev/ttyGS0" not in claimed, "the gadget side's tty is not a USB device"

        g.sh(GADGET_UNPLUG)
        bed.wait(ARDUINO, {ACM_ID: "Unhealthy"})
    finally:
        g.sh(GADGET_DOWN, check=False)
    r = bed.stop_devplug(dp)
    assert r["rc"] == 0, r["log"][-3000:]


def test_storage_and_keyboard_stay_unclaimed(bed: Bed) -> None:
    g = bed.guest
    dp = bed.start_devplug("udev")
    bed.wait("devplug.io/ftdi-serial", timeout=180)
    mark = bed.mark()
    stick = g.plug_storage("STICK0001", port=4)
    kbd = g.plug_keyboard("KBD0001", port=5)
    events = bed.wait_events(mark, {"source": "udev", "action": "add", "subsystem": "block", "devtype": "disk"},
                             {"source": "udev", "action": "add", "subsystem": "input", "sys_name": "event*"},
                             {"source": "udev", "action": "add", "subsystem": "hidraw"})
    usb_paths = [e["devpath"] for e in events if e["devtype"] == "usb_device" and e["action"] == "add"
                 and e["source"] == "udev"]
    assert len(usb_paths) == 2, usb_paths
    nodes = sorted({e["devnode"] for e in events if e["source"] == "udev" and e["action"] == "add"
                    and e["subsystem"] in ("block", "input", "hidraw") and e["devnode"]})
    assert any(n.startswith("/dev/sd") for n in nodes) and any(n.startswith("/dev/input/event") for n in nodes)

    # devplug saw their events (it is alive and current: a later FTDI shows up) and claimed none.
    ftdi = g.plug_serial("CANARY01", port=6)
    bed.wait("devplug.io/ftdi-serial", {"0403-6001-CANARY01-if00": "Healthy"})
    inventory = bed.inventory()["devices"]
    for d in inventory:
        assert not any(d["syspath"].startswith("/sys" + p) for p in usb_paths), d
    # And the CLI a user would ask says the same, device by device.
    out = g.run(sys.executable, "-m", "devplug", "rules", "test", "--json", *nodes, timeout=180)["stdout"]
    results = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert [r["devnode"] for r in results] == nodes
    assert all(r["claim"]["resource"] in (None, "") and r["claim"]["matched"] == [] for r in results), results

    for p in (stick, kbd, ftdi):
        g.unplug(p)
    bed.wait("devplug.io/ftdi-serial", {"0403-6001-CANARY01-if00": "Unhealthy"})
    r = bed.stop_devplug(dp)
    assert r["rc"] == 0, r["log"][-3000:]
