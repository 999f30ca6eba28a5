"""A hostile serial number plugged for real (issue 10: a USB device is untrusted input).

QEMU puts the ``serial=`` string into the device's string descriptor byte by byte (UTF-16
code units of 0–255), so the longest it can send is 126 bytes, and UTF-8 input arrives as
Latin-1 mojibake ("é" → "Ã©"): still non-ASCII in the guest's sysfs. The serial used here
has ``../../etc``, a space, udev/devplug substitution syntax (``%k``, ``$id``) and non-ASCII,
padded to 126 bytes.

A rule that puts the serial into a host path and a container path (the attack of issue 10)
is loaded next to the shipped rules. What must hold, whatever devplug decides to do with the
device: the daemon stays responsive (a benign adapter plugged after it turns Healthy; SIGTERM
still ends it cleanly), every ID it offers is valid, and if it offers the hostile device,
every path in the Allocate response stays under the literal prefix the rule wrote, as one
path component; a device whose templates cannot be made safe is not offered at all.
"""

from __future__ import annotations

import posixpath

import pytest

from tests.usb.bed import VALID_ID, Bed

pytestmark = pytest.mark.usb_guest

DATA = "devplug.io/ftdi-data"
HOSTILE = "../../etc/ %k$id " + "é" * 8
HOSTILE += "A" * (126 - len(HOSTILE.encode()))
assert len(HOSTILE.encode()) == 126
CANARY = "CANARY01"
CANARY_ID = f"0403-6001-{CANARY}-if00"
RULES = {"90-hostile.rules": (
    'SUBSYSTEM=="tty", ATTRS{idVendor}=="0403", ATTRS{idProduct}=="6001", RESOURCE="ftdi-data", \\\n'
    '    MOUNT+="/var/lib/devdata/%s{serial}:/data", CONTAINER_PATH="/dev/serial/%s{serial}"\n')}


def under(path: str, prefix: str) -> bool:
    """``path`` is ``prefix`` + exactly one component that is not ``.``/``..``, once normalized."""
    norm = posixpath.normpath(path)
    if norm != path.rstrip("/") or not norm.startswith(prefix):
        return False
    rest = norm[len(prefix):]
    return bool(rest) and "/" not in rest and rest not in (".", "..")


def test_hostile_serial_no_escape_no_wedge(bed: Bed) -> None:
    g = bed.guest
    dp = bed.start_devplug("udev", RULES)
    assert bed.wait(DATA, timeout=180).lists == ({},)

    hostile = g.plug_serial(HOSTILE, port=1)
    canary = None
    try:
        canary = g.plug_serial(CANARY, port=2)
        # The canary is plugged after the hostile device: once it is Healthy, devplug has
        # handled the hostile one's events and is not wedged.
        stream = bed.wait(DATA, {CANARY_ID: "Healthy"}, subset=True)
        sysfs = g.run("sh", "-c", "cat /sys/bus/usb/devices/1-1/serial")["stdout"]
        assert sysfs.startswith("../../etc/ %k$id Ã©"), sysfs  # the string really arrived

        offered = {i: h for i, h in stream.latest.items() if i != CANARY_ID}
        for dev_id in offered:
            assert VALID_ID.fullmatch(dev_id), dev_id
        for dev_id in offered:
            reply = bed.allocate(DATA, [dev_id])
            assert reply["code"] == "OK", reply
            (c,) = reply["response"]["containerResponses"]
            for m in c.get("mounts", []):
                assert under(m["hostPath"], "/var/lib/devdata/"), m
            for d in c.get("devices", []):
                if d["containerPath"].startswith("/dev/serial/") and "/by-" not in d["containerPath"]:
                    assert under(d["containerPath"], "/dev/serial/"), d
                assert posixpath.normpath(d["containerPath"]).startswith("/dev/"), d
                assert posixpath.normpath(d["hostPath"]).startswith("/dev/"), d
    finally:
        g.unplug(hostile)
        if canary is not None:
            g.unplug(canary)
    bed.wait(DATA, {CANARY_ID: "Unhealthy"}, subset=True)
    r = bed.stop_devplug(dp)
    assert r["rc"] == 0 and not r["killed"], r["log"][-3000:]
    assert "Traceback" not in r["log"], r["log"][-3000:]
