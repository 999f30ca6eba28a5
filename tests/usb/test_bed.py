"""The bed itself: the guest runs this checkout on a real USB stack, and /xfer is live."""

from __future__ import annotations

import hashlib

import pytest

from tests.usb.guest import REPO, Guest

pytestmark = pytest.mark.usb_guest


def test_guest_runs_this_checkout_with_real_usb_drivers(guest: Guest) -> None:
    probe = REPO / "tests" / "usb" / "guest.py"
    out = guest.run("sha256sum", str(probe))["stdout"].split()[0]
    assert out == hashlib.sha256(probe.read_bytes()).hexdigest()
    drivers = set(guest.run("ls", "/sys/bus/usb/drivers")["stdout"].split())
    assert {"ftdi_sio", "cdc_acm", "usb-storage", "usbhid", "usb"} <= drivers
    assert guest.run("uname", "-r")["stdout"].strip() == guest.image.version


def test_xfer_share_sees_host_rewrites_at_once(guest: Guest) -> None:
    path = guest.xfer / "live.txt"
    try:
        for text in ("first\n", "second, rewritten in place\n"):
            path.write_text(text)
            assert guest.run("cat", "/xfer/live.txt")["stdout"] == text
        guest.run("sh", "-c", "echo from-guest > /xfer/back.txt")
        assert (guest.xfer / "back.txt").read_text() == "from-guest\n"
    finally:
        path.unlink(missing_ok=True)
        (guest.xfer / "back.txt").unlink(missing_ok=True)
