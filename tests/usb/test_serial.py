"""FTDI adapters plugged for real, end to end: QEMU usb-serial → guest kernel (xhci, ftdi_sio)
→ udevd → ``devplug run`` on its embedded rules → the kubelet stand-in, all in the guest.

The embedded ``10-serial.rules`` claims 0403:6001 as ``devplug.io/ftdi-serial`` with
``OPTIONS+="symlinks"``; QEMU's usb-serial is exactly that VID:PID, so an adapter with serial
S gets the ID ``0403-6001-S-if00`` whichever port it is in.

What the kernel source sees at ``add`` time (observed here, see fixtures/plug.json): the
kernel's ``add`` of ``ttyUSB0`` reaches devplug before udevd has run its rules for it; udevd's
own copy of that ``add``, carrying ``DEVLINKS`` (the by-id and by-path links), comes after
the kernel's whole burst (add, change, add, add, add, bind, bind, bind). devplug's kernel
source reads udev's database when the kernel event arrives, when the tty's entry is usually
not written yet, and the tty gets no later kernel event (ttys have no driver, so no
``bind``). So the kernel source watches udev's database directory and, when udevd writes the
entry of a device it reported, repeats that device's last event with udevd's view:
``test_kernel_source_allocate_has_udev_links`` checks Allocate then returns the links.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.usb.bed import VALID_ID, Bed, allocated_paths

pytestmark = pytest.mark.usb_guest

FTDI = "devplug.io/ftdi-serial"
SERIAL_A, SERIAL_B = "A10K1ABC", "B20K2XYZ"
ID_A, ID_B = f"0403-6001-{SERIAL_A}-if00", f"0403-6001-{SERIAL_B}-if00"


def by_id(serial: str) -> str:
    # udev's 60-serial.rules: usb-<ID_SERIAL>-if<NN>-port<N>; QEMU's strings make ID_SERIAL.
    return f"/dev/serial/by-id/usb-QEMU_QEMU_USB_SERIAL_{serial}-if00-port0"


def by_path(paths: list[tuple[str, str]], node: str, port: int) -> None:
    """The by-path link of ``node`` names the USB port it is plugged into."""
    want = re.compile(rf"/dev/serial/by-path/pci-[0-9a-f:.]+-usb-0:{port}:1\.0-port0")
    links = [c for h, c in paths if h == node and c.startswith("/dev/serial/by-path/")]
    assert len(links) == 1 and want.fullmatch(links[0]), paths


def check_bytes_reach(bed: Bed, plugged, node: str, payload: bytes) -> None:
    """Bytes the host writes into the adapter's chardev arrive, unchanged, on ``node``."""
    name = f"reader-{plugged.qdev_id}"
    # raw -echo: no line discipline editing, nothing echoed back to the "device". The host
    # sends only once the reader says so: bytes arriving while the tty is still in cooked
    # mode would be edited and echoed.
    bed.guest.call("spawn", name=name, argv=[
        "sh", "-c", f"exec 3<>{node}; stty -F {node} raw -echo; echo ready; head -c {len(payload)} <&3 | od -An -tx1"])
    bed.guest.call("wait_log", name=name, needle="ready\n", timeout=60, wait=90)
    with bed.guest.serial_connection(plugged) as conn:
        conn.sendall(payload)
        r = bed.guest.call("wait", name=name, timeout=60, wait=90)
    assert r["rc"] == 0, r
    assert bytes.fromhex(r["log"].split("ready\n", 1)[1].replace("\n", " ")) == payload


@pytest.mark.parametrize("source", ["udev", "kernel"])
def test_ftdi_plug_allocate_unplug_replug_restart(bed: Bed, source: str) -> None:
    g = bed.guest
    dp = bed.start_devplug(source)
    assert bed.wait(FTDI, timeout=180).lists == ({},)

    # Plug: Healthy under the ID derived from the serial.
    a = g.plug_serial(SERIAL_A, port=1)
    stream = bed.wait(FTDI, {ID_A: "Healthy"})
    assert stream.lists == ({}, {ID_A: "Healthy"}), "one list per change, nothing in between"
    assert VALID_ID.fullmatch(ID_A)

    # Allocate: the node and (with OPTIONS+="symlinks") udevd's links, once udevd is done
    # (with the kernel source only the node: see the module docstring).
    g.run("udevadm", "settle", "-t", "60")
    paths = allocated_paths(bed.allocate(FTDI, [ID_A]))
    assert ("/dev/ttyUSB0", "/dev/ttyUSB0") in paths
    if source == "udev":
        assert ("/dev/ttyUSB0", by_id(SERIAL_A)) in paths
        by_path(paths, "/dev/ttyUSB0", 1)
    check_bytes_reach(bed, a, "/dev/ttyUSB0", b"devplug\x00\x01\xfe\xffhello\r\n")

    # Unplug: Unhealthy in the next list, the ID kept.
    g.unplug(a)
    stream = bed.wait(FTDI, {ID_A: "Unhealthy"})
    assert stream.lists[-2:] == ({ID_A: "Healthy"}, {ID_A: "Unhealthy"})
    reply = bed.allocate(FTDI, [ID_A])
    assert reply["code"] == "FAILED_PRECONDITION", reply

    # Replug into another port: the same ID, Healthy again, the links of the new port.
    a = g.plug_serial(SERIAL_A, port=3)
    bed.wait(FTDI, {ID_A: "Healthy"})
    g.run("udevadm", "settle", "-t", "60")
    paths = allocated_paths(bed.allocate(FTDI, [ID_A]))
    assert ("/dev/ttyUSB0", "/dev/ttyUSB0") in paths
    if source == "udev":
        assert ("/dev/ttyUSB0", by_id(SERIAL_A)) in paths
        by_path(paths, "/dev/ttyUSB0", 3)

    # A second adapter: a second ID, on the next node.
    b = g.plug_serial(SERIAL_B, port=2)
    bed.wait(FTDI, {ID_A: "Healthy", ID_B: "Healthy"})
    g.run("udevadm", "settle", "-t", "60")
    paths = allocated_paths(bed.allocate(FTDI, [ID_B]))
    assert ("/dev/ttyUSB1", "/dev/ttyUSB1") in paths
    if source == "udev":
        assert ("/dev/ttyUSB1", by_id(SERIAL_B)) in paths
    check_bytes_reach(bed, b, "/dev/ttyUSB1", b"second adapter\n")

    # Restart devplug with both plugged: coldplug finds them under the same IDs.
    old = bed.wait(FTDI).number
    r = bed.stop_devplug(dp)
    assert r["rc"] == 0, r["log"][-3000:]
    dp = bed.start_devplug(source)
    stream = bed.wait(FTDI, {ID_A: "Healthy", ID_B: "Healthy"}, newer_than=old, timeout=180)
    assert stream.lists[0] == {ID_A: "Healthy", ID_B: "Healthy"}, "the first list is complete"
    # Coldplug reads udev's database with either source: the links are there now.
    paths = allocated_paths(bed.allocate(FTDI, [ID_A]))
    assert ("/dev/ttyUSB0", by_id(SERIAL_A)) in paths
    by_path(paths, "/dev/ttyUSB0", 3)
    paths = allocated_paths(bed.allocate(FTDI, [ID_B]))
    assert ("/dev/ttyUSB1", by_id(SERIAL_B)) in paths

    g.unplug(a)
    g.unplug(b)
    bed.wait(FTDI, {ID_A: "Unhealthy", ID_B: "Unhealthy"})
    r = bed.stop_devplug(dp)
    assert r["rc"] == 0, r["log"][-3000:]
    assert "Traceback" not in r["log"] and "level=error" not in r["log"], r["log"][-3000:]


def test_kernel_source_allocate_has_udev_links(bed: Bed) -> None:
    g = bed.guest
    dp = bed.start_devplug("kernel")
    bed.wait(FTDI, timeout=180)
    a = g.plug_serial(SERIAL_A, port=2)
    try:
        bed.wait(FTDI, {ID_A: "Healthy"})
        g.run("udevadm", "settle", "-t", "60")
        assert g.run("readlink", "-f", by_id(SERIAL_A))["stdout"].strip() == "/dev/ttyUSB0"
        # The kernel's add came before udevd wrote the links; devplug sees udevd's database
        # write (inotify) and repeats the add with them. Wait for that, not for time.
        deadline = time.monotonic() + 60
        while not any(by_id(SERIAL_A) in d["symlinks"] for d in bed.inventory()["devices"] if d["id"] == ID_A):
            assert time.monotonic() < deadline, bed.inventory()
            time.sleep(0.2)
        paths = allocated_paths(bed.allocate(FTDI, [ID_A]))
        assert ("/dev/ttyUSB0", by_id(SERIAL_A)) in paths
        by_path(paths, "/dev/ttyUSB0", 2)
    finally:
        g.unplug(a)
        bed.wait(FTDI, {ID_A: "Unhealthy"})
        assert bed.stop_devplug(dp)["rc"] == 0


@pytest.mark.parametrize("source", ["udev", "kernel"])
def test_replug_into_the_same_port(bed: Bed, source: str) -> None:
    """The common case on a real node: the dongle comes back into the port it left."""
    g = bed.guest
    dp = bed.start_devplug(source)
    bed.wait(FTDI, timeout=180)
    for _ in range(4):
        a = g.plug_serial(SERIAL_A, port=4)
        try:
            stream = bed.wait(FTDI, {ID_A: "Healthy"}, timeout=60)
        finally:
            g.unplug(a)
        stream = bed.wait(FTDI, {ID_A: "Unhealthy"}, timeout=60)
    assert {i for lst in stream.lists for i in lst} == {ID_A}, stream.lists
    healths = [lst[ID_A] for lst in stream.lists if ID_A in lst]
    assert healths == ["Healthy", "Unhealthy"] * 4, healths
    # Another adapter into the port the first one left: the same kernel paths, its own ID
    # (devplug reuses a device's last answer only while no uevent named its ancestors).
    b = g.plug_serial(SERIAL_B, port=4)
    try:
        stream = bed.wait(FTDI, {ID_A: "Unhealthy", ID_B: "Healthy"}, timeout=60)
    finally:
        g.unplug(b)
    bed.wait(FTDI, {ID_A: "Unhealthy", ID_B: "Unhealthy"}, timeout=60)
    r = bed.stop_devplug(dp)
    assert r["rc"] == 0, r["log"][-3000:]
