"""UdevSource on real kernel uevents (tty2N, zram), through both netlink sources."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable

import pytest
import trio

from devplug.sources.udev import DeviceEvent, Uevent, Resync, UdevSource, resolve_source, udevd_reachable
from realdev import tty_uevent, zram_device, zram_remove  # tests/udev, put on sys.path by conftest

pytestmark = [pytest.mark.netlink, pytest.mark.udevd]

Item = DeviceEvent | Uevent | Resync


def collect(src: UdevSource, want: Callable[[Item], bool], count: int, *,
            timeout: float = 10, coldplug: bool = False,
            then: Callable[[list[Item]], None] | None = None) -> list[Item]:
    """Iterate ``src.events()`` in trio until ``count`` wanted items arrived.

    ``then`` runs (in the trio thread) after each wanted item, to trigger the next step.
    """
    got: list[Item] = []

    async def main() -> None:
        with trio.fail_after(timeout):
            async for item in src.events(coldplug=coldplug):
                if want(item):
                    got.append(item)
                    if len(got) == count:
                        return
                    if then is not None:
                        then(got)

    trio.run(main)
    return got


def is_event(sysname: str) -> Callable[[Item], bool]:
    return lambda item: isinstance(item, (DeviceEvent, Uevent)) and item.device.sysname == sysname


@pytest.fixture(params=["udev", "kernel"])
def source(request, udevd, netlink):
    src = UdevSource(source=request.param, subsystems=frozenset({"tty"}))
    src.open()
    yield src
    src.close()


def test_auto_resolves_to_udev_when_udevd_answers(udevd, tmp_path):
    assert udevd_reachable()
    assert resolve_source("auto") == "udev"
    assert resolve_source("kernel") == "kernel"
    assert not udevd_reachable(str(tmp_path / "missing"))
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(str(tmp_path / "stale"))  # a socket file nobody listens on
    stale.close()
    assert not udevd_reachable(str(tmp_path / "stale"))
    with pytest.raises(ValueError):
        resolve_source("netlink")


def test_change_remove_add_arrive_in_order(source):
    start = time.perf_counter_ns()
    try:
        for action in ("change", "remove", "add"):
            tty_uevent(21, action)
        events = collect(source, is_event("tty21"), 3)
    finally:
        tty_uevent(21, "add")
    assert [e.action for e in events] == ["change", "remove", "add"]
    # A record is built only when asked (here), from both sources (the kernel source merges
    # what udev's database adds into the event's properties, and into the record).
    assert [type(e) for e in events] == [Uevent, Uevent, Uevent]
    for e in events:
        assert e.syspath == "/sys/devices/virtual/tty/tty21" and e.subsystem == "tty"
        assert e.devpath == "/devices/virtual/tty/tty21"
    seqnums = [e.seqnum for e in events]
    assert all(isinstance(s, int) for s in seqnums) and seqnums == sorted(seqnums)
    assert all(start < e.read_ns < e.received_ns <= time.perf_counter_ns() for e in events)  # read: before the span
    for e in events:
        assert e.device.devpath == "/devices/virtual/tty/tty21"
        assert e.device.subsystem == "tty" and e.device.devnode == "/dev/tty21"
        assert e.device.properties["ACTION"] == e.action
        # A remove's record reads nothing (its event never runs the rules; see records).
        assert e.device.read_attr("dev") == (None if e.action == "remove" else "4:21")


def test_kernel_source_without_udevs_database_builds_records_only_when_asked(netlink, tmp_path):
    """A node without ``/run/udev`` (a pod without it mounted): every event is a ``Uevent``,
    and the record it builds when asked is what the event says, with sysfs read lazily."""
    src = UdevSource(source="kernel", subsystems=frozenset({"tty"}), db_dir=str(tmp_path / "no-udev"))
    src.open()
    try:
        tty_uevent(25, "change")
        (event,) = collect(src, lambda i: isinstance(i, Uevent) and i.devpath.endswith("/tty25"), 1)
    finally:
        src.close()
    assert event.action == "change" and event.properties["DEVNAME"] == "tty25"  # as the kernel said it
    record = event.device
    assert record.syspath == event.syspath == "/sys/devices/virtual/tty/tty25"
    assert (record.sysname, record.subsystem, record.devnode) == ("tty25", "tty", "/dev/tty25")
    assert record.read_attr("dev") == "4:25"  # read from sysfs when asked
    assert event.properties["DEVNAME"] == "tty25"  # the record normalised its own copy


def test_udev_source_events_carry_udevs_properties(udevd, netlink):
    src = UdevSource(source="udev", subsystems=frozenset({"tty"}))
    src.open()
    tty_uevent(26, "change")
    (event,) = collect(src, is_event("tty26"), 1)
    # set by udevd while processing, never by the kernel
    assert "USEC_INITIALIZED" in event.device.properties


def test_coldplug_enumerates_present_devices(source):
    devices = source.enumerate()
    by_name = {d.sysname: d for d in devices}
    assert "tty20" in by_name and by_name["tty20"].devnode == "/dev/tty20"
    assert {d.subsystem for d in devices} == {"tty"}
    (first,) = collect(source, lambda item: True, 1, coldplug=True)
    assert isinstance(first, Resync) and first.reason == "coldplug"
    assert {d.devpath for d in first.devices} == {d.devpath for d in devices}


@pytest.mark.parametrize("kind", ["udev", "kernel"])
def test_block_device_hot_add_and_remove(kind, udevd, netlink):
    src = UdevSource(source=kind, subsystems=frozenset({"block"}))
    src.open()
    with zram_device() as name:
        tty_uevent(22, "change")  # filtered out: not a block device

        def unplug(got: list[Item]) -> None:
            # attributes are read lazily (then cached): read one while sysfs still has it
            assert got[0].device.read_attr("disksize") == "0"
            zram_remove(name)

        add, remove = collect(src, lambda i: isinstance(i, (DeviceEvent, Uevent))
                              and i.device.sysname.startswith("zram")
                              and i.action in ("add", "remove"), 2, then=unplug)
    assert (add.action, remove.action) == ("add", "remove")
    for e in (add, remove):
        assert e.device.sysname == name and e.device.subsystem == "block"
        assert e.device.devtype == "disk" and e.device.devnode == f"/dev/{name}"
    assert add.device.read_attr("disksize") == "0"  # cached before the removal
    # sysfs is gone: the record comes from the event's own properties
    assert not os.path.exists(f"/sys/block/{name}")
    assert remove.device.read_attr("disksize") is None
    assert remove.device.properties["DEVNAME"] == f"/dev/{name}"


@pytest.mark.parametrize("kind", ["udev", "kernel"])
def test_every_subsystems_messages_move_the_chain_stamps_below_them(kind, udevd, netlink):
    """The recall trusts a chain while no message named an ancestor: the source must note
    the messages it filters out too (a USB adapter's own events, when rules want ``tty``)."""
    from devplug.core.device import Device

    src = UdevSource(source=kind, subsystems=frozenset({"block"}))
    src.open()
    try:
        below = Device(devpath="/devices/virtual/tty/tty23/child", sysname="child")
        beside = Device(devpath="/devices/virtual/tty/tty24/child", sysname="child")
        before = src.chain_stamp(below), src.chain_stamp(beside)
        tty_uevent(23, "change")  # not a block device: filtered out, but noted
        if kind == "udev":  # udevd handles unrelated events in parallel: let it send this one first
            subprocess.run(["udevadm", "settle", "--timeout=10"], check=True)
        with zram_device():  # then one that is: read after it

            def zram_added(i: Item) -> bool:
                return isinstance(i, (DeviceEvent, Uevent)) and i.device.sysname.startswith("zram") and i.action == "add"

            collect(src, zram_added, 1)
        assert src.chain_stamp(below) > before[0]
        assert src.chain_stamp(beside) == before[1]
    finally:
        src.close()


def _shrink_receive_buffer(src: UdevSource) -> None:
    with socket.socket(fileno=os.dup(src.fileno())) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel's minimum
    assert src.receive_buffer_bytes < 8192


@pytest.mark.parametrize("kind", ["udev", "kernel"])
def test_overflow_is_counted_and_resynced(kind, udevd, netlink):
    src = UdevSource(source=kind, subsystems=frozenset({"tty"}), receive_buffer=0)
    src.open()
    _shrink_receive_buffer(src)
    with open("/sys/class/tty/tty27/uevent", "w") as f:
        for _ in range(200):
            f.write("change")
            f.flush()
    if kind == "udev":
        subprocess.run(["udevadm", "settle", "-t", "10"], check=True)

    def after_resync(got: list[Item]) -> None:
        tty_uevent(28, "change")  # the source still works afterwards

    resync, event = collect(src, lambda i: isinstance(i, Resync) or is_event("tty28")(i), 2,
                            then=after_resync)
    assert isinstance(resync, Resync) and resync.reason == "overflow"
    assert src.overflows >= 1
    assert "tty27" in {d.sysname for d in resync.devices}
    assert isinstance(event, (DeviceEvent, Uevent)) and event.action == "change"


def test_large_receive_buffer_is_granted(udevd, netlink):
    src = UdevSource(source="kernel", receive_buffer=64 * 1024 * 1024)
    src.open()
    assert src.receive_buffer_bytes >= 64 * 1024 * 1024  # root: SO_RCVBUFFORCE


RULE = """\
KERNEL=="tty25", SYMLINK+="devplug-test-tty25", ENV{DEVPLUG_UDEV_TEST}="yes", TAG+="devplug_test"
"""


def test_kernel_source_is_enriched_from_the_udev_database(udevd, netlink):
    rules = "/run/udev/rules.d/99-devplug-udev-source-test.rules"
    made_dir = not os.path.isdir(os.path.dirname(rules))  # a fresh udevd does not create it
    os.makedirs(os.path.dirname(rules), exist_ok=True)
    with open(rules, "w") as f:
        f.write(RULE)
    try:
        subprocess.run(["udevadm", "control", "--reload"], check=True)
        subprocess.run(["udevadm", "trigger", "--settle", "--action=change",
                        "/sys/class/tty/tty25"], check=True)
        src = UdevSource(source="kernel", subsystems=frozenset({"tty"}))
        src.open()
        tty_uevent(25, "change")
        (event,) = collect(src, is_event("tty25"), 1)
    finally:
        os.unlink(rules)
        if made_dir:
            os.rmdir(os.path.dirname(rules))  # remove what this test created, no more
        subprocess.run(["udevadm", "control", "--reload"], check=True)
        subprocess.run(["udevadm", "trigger", "--settle", "--action=change",
                        "/sys/class/tty/tty25"], check=True)
    dev = event.device
    assert dev.symlinks == ("/dev/devplug-test-tty25",)
    assert dev.properties["DEVLINKS"] == "/dev/devplug-test-tty25"
    assert dev.properties["DEVPLUG_UDEV_TEST"] == "yes"
    assert "devplug_test" in dev.tags
    assert dev.properties["SEQNUM"] == str(event.seqnum)  # the kernel's own keys stay
    assert not os.path.exists("/dev/devplug-test-tty25")  # cleaned up


def test_events_wait_on_the_fd_without_busy_looping(udevd, netlink):
    """Idle: the iterator sleeps in wait_readable, using (almost) no CPU."""
    src = UdevSource(source="kernel", subsystems=frozenset({"tty"}))
    src.open()

    async def main() -> float:
        cpu = time.process_time()
        with trio.move_on_after(0.5):
            async for _ in src.events():
                pass
        return time.process_time() - cpu

    assert trio.run(main) < 0.05


def test_kernel_source_repeats_an_event_once_udevd_writes_the_database(netlink, tmp_path):
    """udevd writes a device's database entry after the kernel's event; the kernel source
    repeats the device's last event with that entry merged in (origin "udev-db")."""
    from devplug.sources.udev import Drained

    db_dir = tmp_path / "data"
    db_dir.mkdir()
    src = UdevSource(source="kernel", subsystems=frozenset({"tty"}), db_dir=str(db_dir))
    src.open()
    try:
        def write_db(got: list[Item]) -> None:
            if len(got) == 1:  # after the kernel's add: udevd's rename into place
                tmp = db_dir / ".tmp-c4:20"
                tmp.write_text("S:serial/by-id/usb-devplug-test\nE:ID_SERIAL=devplug-test\n")
                os.rename(tmp, db_dir / "c4:20")

        def wanted(item: Item) -> bool:
            return isinstance(item, (DeviceEvent, Uevent)) and item.device.sysname == "tty20"

        async def poke_then_collect() -> list[Item]:
            got: list[Item] = []
            drained = 0
            with trio.fail_after(10):
                tty_uevent(20, "add")
                async for item in src.events():
                    if isinstance(item, Drained):
                        drained += 1
                        if len(got) == 2:
                            break  # the consumer learns when the socket was emptied
                    elif wanted(item):
                        got.append(item)
                        write_db(got)
            assert drained >= 1
            return got

        first, again = trio.run(poke_then_collect)
    finally:
        src.close()
    assert (first.action, first.origin) == ("add", "uevent") and first.device.symlinks == ()
    assert (again.action, again.origin) == ("add", "udev-db")
    assert again.device.symlinks == ("/dev/serial/by-id/usb-devplug-test",)
    assert again.device.properties["ID_SERIAL"] == "devplug-test"
    assert again.device.properties["SUBSYSTEM"] == "tty" and again.device.devnode == "/dev/tty20"
    # What the recall compares carries the entry too, as the event said it.
    assert isinstance(again, Uevent) and again.properties["ID_SERIAL"] == "devplug-test"
    assert again.properties["DEVLINKS"] == "/dev/serial/by-id/usb-devplug-test"


def test_kernel_source_reads_a_database_file_only_after_udevd_wrote_it(netlink, tmp_path):
    """The watch keeps each entry as last read: the device's next events read no file, and
    merge the same entry, into the record as ``_record`` merges a file it reads."""
    db_dir = tmp_path / "data"
    db_dir.mkdir()
    (db_dir / "c4:24").write_text("S:devplug-kept\nE:ID_SERIAL=kept\nG:seat\nQ:seat\nV:1\n")
    src = UdevSource(source="kernel", subsystems=frozenset({"tty"}), db_dir=str(db_dir))
    src.open()
    try:
        assert src._dbwatch is not None
        for action in ("change", "change", "change"):
            tty_uevent(24, action)
        events = collect(src, is_event("tty24"), 3)
        reads = src._dbwatch.reads
        said = {k: v for k, v in events[0].properties.items()  # what the kernel said
                if k not in ("ID_SERIAL", "DEVLINKS", "TAGS", "CURRENT_TAGS")}
        record, stamp = src._record(said, "change")  # reads the file and merges it at once
    finally:
        src.close()
    assert reads == 1, "one read for three events: udevd wrote nothing in between"
    for e in events:
        assert isinstance(e, Uevent) and e.properties["ID_SERIAL"] == "kept"
        lazy = e.device
        assert (lazy.symlinks, lazy.tags) == (record.symlinks, record.tags) == (("/dev/devplug-kept",), {"seat"})
        assert {k: v for k, v in lazy.properties.items() if k != "SEQNUM"} == \
            {k: v for k, v in record.properties.items() if k != "SEQNUM"}
    assert stamp is not None


def test_kernel_source_reads_a_database_that_appears_later(netlink, tmp_path):
    """No udev database at start (no udevd on the node): events are not enriched and cost no
    failing open each; once the directory appears it is read within ``db_recheck``."""
    db_dir = tmp_path / "data"
    src = UdevSource(source="kernel", subsystems=frozenset({"tty"}), db_dir=str(db_dir), db_recheck=1.0)
    src.open()
    try:
        tty_uevent(20, "change")
        (before,) = collect(src, is_event("tty20"), 1)
        db_dir.mkdir()
        (db_dir / "c4:20").write_text("S:serial/by-id/usb-devplug-late\nE:ID_SERIAL=devplug-late\n")
        tty_uevent(20, "change")
        (soon,) = collect(src, is_event("tty20"), 1)
        time.sleep(1.05)
        tty_uevent(20, "change")
        (later,) = collect(src, is_event("tty20"), 1)
    finally:
        src.close()
    assert before.device.symlinks == () and "ID_SERIAL" not in before.device.properties
    assert soon.device.symlinks == ()  # looked at again only after db_recheck
    assert later.device.symlinks == ("/dev/serial/by-id/usb-devplug-late",)
    assert later.device.properties["ID_SERIAL"] == "devplug-late"
