"""USB-shaped devices end to end: umockdev testbed → ``devplug run`` → kubelet stand-in.

An FTDI adapter matched by ``ATTRS{idVendor}`` is unplugged (Unhealthy, ID kept) and
replugged into another port as another ttyUSB number (Healthy, same ID, new node); a UVC
camera offers its capture node, not its metadata node.
"""

from __future__ import annotations

import pytest

from tests import umock

pytestmark = pytest.mark.umockdev

FTDI = "devplug.io/ftdi-serial"
CAMERA = "devplug.io/camera"
RULES = """\
SUBSYSTEM=="tty", ATTRS{idVendor}=="0403", ATTRS{idProduct}=="6001", RESOURCE="ftdi-serial", \\
    OPTIONS+="usb_node", CONTAINER_PATH="/dev/modbus0"
SUBSYSTEM=="video4linux", ATTR{index}=="0", RESOURCE="camera"
"""


@pytest.fixture
def bed():
    reason = umock.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with umock.MockBed() as bed:
        yield bed


def test_ftdi_unplug_replug_and_uvc_camera(tmp_path, bed, kubelet, plugin_dir):
    from tests.e2e.conftest import Devplug

    rules = tmp_path / "usb.rules"
    rules.write_text(RULES)
    dp = Devplug(plugin_dir, rules, "--udev-source", "udev", log_path=tmp_path / "devplug.log", env=bed.env())
    try:
        watch = kubelet.wait_watch(FTDI, timeout=15)
        assert watch.wait_count(1)[0].devices == ()

        first = umock.plug_ftdi(bed, tty="ttyUSB0", port="1-1", devnum=2, serial="A10K1ABC")
        listed = watch.wait_for(lambda dl: len(dl.devices) == 1)
        ((dev_id, health),) = listed.devices
        assert (dev_id, health) == ("0403-6001-A10K1ABC-if00", "Healthy")
        (c,) = kubelet.allocate(FTDI, [dev_id]).container_responses
        assert sorted((d.host_path, d.container_path) for d in c.devices) == [
            ("/dev/bus/usb/001/002", "/dev/bus/usb/001/002"), ("/dev/ttyUSB0", "/dev/modbus0")]

        umock.unplug(bed, first)
        assert watch.wait_for(lambda dl: dl.as_dict() == {dev_id: "Unhealthy"}).ids == [dev_id]

        # Same adapter, another port, another tty number: same ID, new node.
        umock.plug_ftdi(bed, tty="ttyUSB1", port="1-2", devnum=5, serial="A10K1ABC")
        assert watch.wait_for(lambda dl: dl.as_dict() == {dev_id: "Healthy"}).ids == [dev_id]
        (c,) = kubelet.allocate(FTDI, [dev_id]).container_responses
        assert sorted((d.host_path, d.container_path) for d in c.devices) == [
            ("/dev/bus/usb/001/005", "/dev/bus/usb/001/005"), ("/dev/ttyUSB1", "/dev/modbus0")]

        cams = kubelet.wait_watch(CAMERA, timeout=5)
        umock.plug_uvc_camera(bed, port="1-3", devnum=4, serial="200901010001")
        cam = cams.wait_for(lambda dl: len(dl.devices) == 1)
        (cam_id,) = cam.ids
        assert cam_id == "046d-0825-200901010001-if00"
        (c,) = kubelet.allocate(CAMERA, [cam_id]).container_responses
        assert [d.host_path for d in c.devices] == ["/dev/video0"]  # not the metadata node video1
    finally:
        rc, _ = dp.stop()
    assert rc == 0, dp.log()
