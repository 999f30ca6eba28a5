"""Hostile USB gadgets end to end (issue 10): umockdev → ``devplug run`` → kubelet stand-in.

Each gadget picks its own serial, product and properties, and they reach devplug through
real libudev and sysfs shapes: a serial of ``../../../etc`` (on the old code: host ``/etc``
mounted read-write), ``..`` and an empty one (old: the whole ``/var/lib/devdata``), 126
characters, bytes that are not UTF-8, a newline in the product, and a property that is not
UTF-8 (old: every Allocate failed with gRPC UNKNOWN while the device was listed Healthy).
"""

from __future__ import annotations

import time

import grpc
import pytest

from devplug.cli.inventory import fetch_inventory, http_get
from devplug.core.identity import sanitize_id
from tests import umock

pytestmark = pytest.mark.umockdev

DONGLE = "devplug.io/dongle"
RULES = """\
SUBSYSTEM=="tty", ATTRS{idVendor}=="0403", RESOURCE="dongle", \\
    MOUNT+="/var/lib/devdata/%s{serial}:/data", CONTAINER_PATH="/dev/serial/%s{serial}", \\
    CONTAINER_ENV{PRODUCT}="%s{product}", CONTAINER_ENV{MODEL}="$env{ID_MODEL}"
"""
LONG = "S" * 126


@pytest.fixture
def bed():
    reason = umock.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with umock.MockBed() as bed:
        yield bed


def ftdi_id(serial: str) -> str:
    return sanitize_id(f"0403-6001-{serial}-if00")


def allocate_one(kubelet, dev_id: str):
    (c,) = kubelet.allocate(DONGLE, [dev_id]).container_responses
    return c


def test_hostile_gadgets_are_escaped_or_refused_never_half_offered(tmp_path, bed, kubelet, plugin_dir):
    from tests.e2e.conftest import Devplug

    rules = tmp_path / "hostile.rules"
    rules.write_text(RULES)
    sock = str(tmp_path / "debug.sock")
    dp = Devplug(plugin_dir, rules, "--udev-source", "udev", "--debug-socket", sock,
                 log_path=tmp_path / "devplug.log", env=bed.env())
    try:
        watch = kubelet.wait_watch(DONGLE, timeout=15)
        good = umock.plug_ftdi(bed, tty="ttyUSB0", port="1-1", devnum=2, serial="A10K1ABC")
        umock.plug_ftdi(bed, tty="ttyUSB1", port="1-2", devnum=3, serial="../../../etc")
        dotdot = umock.plug_ftdi(bed, tty="ttyUSB2", port="1-3", devnum=4, serial="..")
        umock.plug_ftdi(bed, tty="ttyUSB3", port="1-4", devnum=5, serial="")
        umock.plug_ftdi(bed, tty="ttyUSB4", port="1-5", devnum=6, serial=LONG)
        umock.plug_ftdi(bed, tty="ttyUSB5", port="1-6", devnum=7, serial=b"\xff\xfe../x",
                        product=b"Evil\nDEVPLUG_X=1\xff")
        offered = {ftdi_id("A10K1ABC"), ftdi_id(".._.._.._etc"), ftdi_id(LONG), ftdi_id("_.._x")}
        listed = watch.wait_for(lambda dl: set(dl.ids) == offered, timeout=15)
        assert all(health == "Healthy" for _i, health in listed.devices)

        # Every path under the prefix the rule wrote; one component per serial.
        paths = {}
        for dev_id in sorted(offered):
            c = allocate_one(kubelet, dev_id)
            (m,) = c.mounts
            nodes = {d.container_path for d in c.devices}
            assert m.host_path.startswith("/var/lib/devdata/") and m.host_path.count("/") == 4, m.host_path
            assert m.container_path == "/data"
            (node,) = nodes
            assert node.startswith("/dev/serial/") and node.count("/") == 3, node
            paths[dev_id] = (m.host_path, c.envs["PRODUCT"])
        assert paths[ftdi_id(".._.._.._etc")][0] == "/var/lib/devdata/.._.._.._etc"
        assert paths[ftdi_id(LONG)][0] == f"/var/lib/devdata/{LONG}"
        assert paths[ftdi_id("_.._x")] == ("/var/lib/devdata/__.._x", "Evil DEVPLUG_X=1_")

        # '..' and '' are refused, with the reason, in /inventory.
        inventory = fetch_inventory(sock)
        refused = {r["devnode"]: r["reason"] for r in inventory["refused"]}
        assert set(refused) == {"/dev/ttyUSB2", "/dev/ttyUSB3"}
        assert "%s{serial} makes the path component '..'" in refused["/dev/ttyUSB2"]
        assert "%s{serial} is empty" in refused["/dev/ttyUSB3"]
        assert all(reason.startswith(f"{rules}:2:") for reason in refused.values())  # the assignment's line
        assert {r["rule"] for r in inventory["refused"]} == {f"{rules}:1"}  # where the rule starts

        # A property that is not UTF-8: Allocate still answers (old: UNKNOWN, UnicodeEncodeError).
        good_id = ftdi_id("A10K1ABC")
        umock.set_property(bed, good.devices[-1], "ID_MODEL", b"caf\xe9")
        deadline = time.monotonic() + 10
        while True:
            try:
                c = allocate_one(kubelet, good_id)
            except grpc.RpcError as exc:  # the old code's answer
                pytest.fail(f"Allocate failed: {exc.code()} {exc.details()}")
            if c.envs.get("MODEL") or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert c.envs["MODEL"] == "caf\\xe9"

        # Refused devices are logged once: a later uevent for one is no new refusal.
        umock.set_property(bed, dotdot.devices[-1], "ID_MODEL", b"again")
        umock.set_property(bed, good.devices[-1], "ID_MODEL", b"last")
        deadline = time.monotonic() + 10
        while allocate_one(kubelet, good_id).envs.get("MODEL") != "last" and time.monotonic() < deadline:
            time.sleep(0.02)
        log = dp.log()
        assert log.count("device refused") == 2, log
        metrics = http_get(sock, "/metrics").body.decode()
        assert f'devplug_devices_refused_total{{resource="{DONGLE}"}} 2.0' in metrics.splitlines()
    finally:
        rc, _ = dp.stop()
    assert rc == 0, dp.log()


ID_RULES = """\
SUBSYSTEM=="tty", ATTRS{idVendor}=="0403", RESOURCE="dongle", DEVICE_ID="%s{serial}"
SUBSYSTEM=="tty", ATTRS{serial}=="X", SHARE="2"
"""


def test_ids_collide_neither_with_share_copies_nor_between_clones_and_survive_a_restart(
        tmp_path, bed, kubelet, plugin_dir):
    """Old: B's serial 'X-s0' took over A's first SHARE copy, and of two clones the second to
    arrive got '<serial>-ttyUSBn' (so a restart could swap them)."""
    from devplug.core.identity import twin_id
    from tests.e2e.conftest import Devplug

    rules = tmp_path / "ids.rules"
    rules.write_text(ID_RULES)

    def start(n: int) -> Devplug:
        return Devplug(plugin_dir, rules, "--udev-source", "udev", log_path=tmp_path / f"devplug-{n}.log",
                       env=bed.env())

    a = umock.plug_ftdi(bed, tty="ttyUSB0", port="1-1", devnum=2, serial="X")
    b = umock.plug_ftdi(bed, tty="ttyUSB1", port="1-2", devnum=3, serial="X-s0")
    c1 = umock.plug_ftdi(bed, tty="ttyUSB2", port="1-3", devnum=4, serial="CLONE")
    dp = start(0)
    try:
        watch = kubelet.wait_watch(DONGLE, timeout=15)
        watch.wait_for(lambda dl: len(dl.ids) == 4, timeout=15)
        c2 = umock.plug_ftdi(bed, tty="ttyUSB3", port="1-4", devnum=5, serial="CLONE")  # a twin arrives later
        # Both clones are told apart by their kernel path, whichever came first.
        tag = {c.devices[-1].devnode[5:]: twin_id("CLONE", "/sys" + c.devices[-1].devpath) for c in (c1, c2)}
        want = {"X-s0": "Healthy", "X-s1": "Healthy", "X_s0": "Healthy", "CLONE": "Unhealthy",
                tag["ttyUSB2"]: "Healthy", tag["ttyUSB3"]: "Healthy"}
        watch.wait_for(lambda dl: dl.as_dict() == want, timeout=15)
        assert "devices derive the same ID" in dp.log()
        # B leaving touches only B's ID.
        umock.unplug(bed, b)
        want["X_s0"] = "Unhealthy"
        watch.wait_for(lambda dl: dl.as_dict() == want, timeout=15)
        (ca,) = kubelet.allocate(DONGLE, ["X-s0"]).container_responses
        assert [d.host_path for d in ca.devices] == ["/dev/ttyUSB0"]
    finally:
        rc, _ = dp.stop()
    assert rc == 0, dp.log()
    # A restart: the same devices get the same IDs (Unhealthy ones are not remembered).
    dp = start(1)
    try:
        watch = kubelet.wait_watch(DONGLE, not_before=watch, timeout=15)
        restarted = watch.wait_for(lambda dl: len(dl.ids) == 4, timeout=15)
        assert restarted.as_dict() == {"X-s0": "Healthy", "X-s1": "Healthy", tag["ttyUSB2"]: "Healthy",
                                       tag["ttyUSB3"]: "Healthy"}
        assert a  # plugged throughout
    finally:
        rc, _ = dp.stop()
    assert rc == 0, dp.log()
