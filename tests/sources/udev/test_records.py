"""Device records built from pyudev agree with what udev itself reports."""

from __future__ import annotations

import os
import re
import subprocess

import pyudev
import pytest

from devplug.sources.udev import DeviceNotFound, device_from_pyudev, find_device, read_sysattr
from devplug.core.device import Device
from devplug.sources.udev.records import ParentCache, device_from_uevent, parent_record, sysattr_reader

pytestmark = pytest.mark.udevd

VOLATILE = re.compile(r"stat|time|count|inflight|jiffies|bytes|packets|carrier_changes|_cnt")


def udevadm_info(path: str) -> dict:
    """``udevadm info --query=all`` parsed: devpath, devnode, symlinks, properties."""
    out = subprocess.run(["udevadm", "info", "--query=all", f"--path={path}"],
                         capture_output=True, text=True, check=True).stdout
    info: dict = {"symlinks": [], "properties": {}, "devnode": None}
    for line in out.splitlines():
        kind, _, value = line.partition(": ")
        if kind == "P":
            info["devpath"] = value
        elif kind == "N":
            info["devnode"] = "/dev/" + value
        elif kind == "S":
            info["symlinks"].append("/dev/" + value)
        elif kind == "E":
            key, _, val = value.partition("=")
            info["properties"][key] = val
    return info


def udevadm_attribute_walk(path: str) -> list[dict]:
    """``udevadm info -a`` parsed into one block per device of the chain."""
    out = subprocess.run(["udevadm", "info", "-a", f"--path={path}"],
                         capture_output=True, text=True, check=True).stdout
    blocks: list[dict] = []
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("looking at"):
            blocks.append({"devpath": line.split("'")[1], "attrs": {}})
            continue
        m = re.fullmatch(r'(KERNELS?|SUBSYSTEMS?|DRIVERS?)=="(.*)"', line)
        if m:
            blocks[-1][m.group(1).rstrip("S")] = m.group(2)
            continue
        m = re.fullmatch(r'ATTRS?\{(.+?)\}=="(.*)"', line)
        if m:
            blocks[-1]["attrs"][m.group(1)] = m.group(2)
    return blocks


def sample_devices() -> list[str]:
    """A spread of this machine's devices: every device node owner and each subsystem's first."""
    ctx = pyudev.Context()
    seen: set[str] = set()
    picked: list[str] = []
    for dev in ctx.list_devices():
        if dev.sys_name.startswith("zram") and dev.sys_name != "zram0":
            continue  # hot-added and removed by other tests and benchmarks meanwhile
        key = dev.subsystem or ""
        if dev.device_node and dev.subsystem != "tty" or key not in seen:
            seen.add(key)
            picked.append(dev.sys_path)
    picked.append("/sys/devices/virtual/tty/tty20")
    return picked


def normalized(props: dict[str, str]) -> dict[str, object]:
    """Links and tags as sets: libudev lists them in per-process hash order."""
    out: dict[str, object] = dict(props)
    for key in ("TAGS", "CURRENT_TAGS"):
        if key in out:
            out[key] = frozenset(t for t in props[key].split(":") if t)
    if "DEVLINKS" in out:
        out["DEVLINKS"] = frozenset(props["DEVLINKS"].split())
    return out


def test_records_match_udevadm_info(udevd):
    ctx = pyudev.Context()
    paths = sample_devices()
    assert len(paths) >= 10
    for path in paths:
        for attempt in range(3):  # other tests may be re-triggering devices meanwhile
            rec = device_from_pyudev(pyudev.Devices.from_sys_path(ctx, path))
            info = udevadm_info(path)
            got = (rec.devpath, rec.devnode, sorted(rec.symlinks), normalized(rec.properties))
            want = (info["devpath"], info["devnode"], sorted(info["symlinks"]),
                    normalized(info["properties"]))
            if got == want:
                break
        assert got == want, path
        assert list(rec.symlinks) == sorted(rec.symlinks)
        current = info["properties"].get("CURRENT_TAGS", "")
        assert rec.tags == frozenset(t for t in current.split(":") if t)
        assert rec.subsystem == info["properties"].get("SUBSYSTEM")
        assert rec.devtype == info["properties"].get("DEVTYPE")
        assert rec.sysname == path.rsplit("/", 1)[1]


def test_parent_chain_and_attributes_match_udevadm_attribute_walk(udevd):
    ctx = pyudev.Context()
    checked = 0
    for path in sample_devices():
        rec = device_from_pyudev(pyudev.Devices.from_sys_path(ctx, path))
        blocks = udevadm_attribute_walk(path)
        chain = list(rec.chain())
        assert [d.devpath for d in chain] == [b["devpath"] for b in blocks], path
        for dev, block in zip(chain, blocks):
            assert dev.sysname == block["KERNEL"]
            assert (dev.subsystem or "") == block["SUBSYSTEM"]
            assert (dev.driver or "") == block["DRIVER"]
            for name, value in block["attrs"].items():
                if VOLATILE.search(name):
                    continue
                mine = dev.read_attr(name)
                if value == "(not readable)":  # write-only files: udev has no value
                    assert mine is None, (dev.devpath, name)
                    continue
                assert mine is not None, (dev.devpath, name)
                # newlines stripped, other trailing whitespace kept (as udevadm prints it)
                assert mine == value, (dev.devpath, name)
                checked += 1
    assert checked > 100


def test_event_records_have_the_chain_udevadm_walks(udevd):
    """A uevent's record (the event path) walks the same parents as coldplug's and udev's,
    roots without a subsystem included (a PCI device's pci0000:00, a platform device's
    platform): an event record that stopped below them matched fewer rules than coldplug."""
    ctx = pyudev.Context()
    roots = 0
    for path in sample_devices():
        dev = pyudev.Devices.from_sys_path(ctx, path)
        props = dict(dev.properties)
        props.setdefault("ACTION", "change")
        chain = [d.devpath for d in device_from_uevent(props, context=ctx, parent_cache=ParentCache()).chain()]
        assert chain == [b["devpath"] for b in udevadm_attribute_walk(path)], path
        roots += any(not b["SUBSYSTEM"] for b in udevadm_attribute_walk(path)[1:])
    assert roots  # the machine has such parents (pci0000:00, platform): the case was exercised


def test_a_gone_devices_record_says_what_its_event_said_and_reads_nothing(tmp_path):
    """A remove or unbind only turns IDs Unhealthy: its record is the event's properties,
    and nothing is read from sysfs for it (here the directory is still there, with an
    attribute, a driver link and a parent; a present device's record would read them)."""
    dev = tmp_path / "devices" / "platform" / "serial8250" / "tty" / "ttyS9"
    dev.mkdir(parents=True)
    (dev / "uevent").write_text("")
    (dev / "dev").write_text("4:73\n")
    (dev / "driver").symlink_to(tmp_path)
    (dev.parent.parent / "uevent").write_text("")
    props = {"ACTION": "remove", "DEVPATH": "/devices/platform/serial8250/tty/ttyS9", "SUBSYSTEM": "tty",
             "DEVNAME": "ttyS9", "MAJOR": "4", "MINOR": "73", "DEVLINKS": "/dev/b /dev/a", "TAGS": ":y:x:"}
    for gone in (True, False):
        record = device_from_uevent(dict(props), context=pyudev.Context(), sys_root=str(tmp_path), gone=gone)
        assert (record.subsystem, record.sysname, record.devnode) == ("tty", "ttyS9", "/dev/ttyS9")
        assert record.symlinks == ("/dev/a", "/dev/b") and record.tags == frozenset({"x", "y"})
        assert record.properties["TAGS"] == ":x:y:"
        if gone:
            assert (record.read_attr("dev"), record.driver, record.parent) == (None, None, None)
        else:
            assert record.read_attr("dev") == "4:73" and record.driver == os.path.basename(tmp_path)


def test_a_parent_that_loses_its_uevent_file_while_read_is_left_out(tmp_path):
    """Half a record (no subsystem) of a parent being removed stays out of the chain and the
    cache; a parent that simply has no subsystem (its uevent file is there) stays in."""
    root = tmp_path / "pci0000:00"
    root.mkdir()
    (root / "uevent").write_text("")
    cache = ParentCache()

    def read(syspath: str) -> Device:
        return Device(devpath=syspath.removeprefix(str(tmp_path)), sysname=os.path.basename(syspath))

    kept = parent_record(str(root), cache, read)
    assert kept is not None and kept.sysname == "pci0000:00"
    assert cache.get(str(root))[2]

    going = tmp_path / "1-1"
    going.mkdir()
    (going / "uevent").write_text("")

    def read_while_removed(syspath: str) -> Device:
        os.unlink(os.path.join(syspath, "uevent"))  # the kernel removes it meanwhile
        return read(syspath)

    assert parent_record(str(going), cache, read_while_removed) is None
    assert not cache.get(str(going))[2]


def test_a_parent_read_before_its_subsystem_link_is_read_again(tmp_path):
    """``device_add()`` creates a device's ``uevent`` file and attributes before its
    ``subsystem`` link. A record read in that window (a USB adapter without ``usb``) made
    the identity skip the adapter and name the root hub, for as long as it was cached."""
    adapter = tmp_path / "1-1"
    adapter.mkdir()
    (adapter / "uevent").write_text("DEVTYPE=usb_device\n")
    (tmp_path / "bus-usb").mkdir()
    reads = []

    def read(syspath: str) -> Device:  # as libudev: the subsystem is the link's target
        link = os.path.join(syspath, "subsystem")
        subsystem = os.path.basename(os.readlink(link)) if os.path.islink(link) else None
        reads.append(subsystem)
        return Device(devpath=syspath.removeprefix(str(tmp_path)), sysname="1-1",
                      subsystem=subsystem, devtype="usb_device")

    cache = ParentCache()
    assert parent_record(str(adapter), cache, read).subsystem is None  # in the window
    assert parent_record(str(adapter), cache, read).subsystem is None  # still: the cached one
    assert reads == [None]
    (adapter / "subsystem").symlink_to(tmp_path / "bus-usb")  # bus_add_device()
    assert parent_record(str(adapter), cache, read).subsystem == "bus-usb"
    assert parent_record(str(adapter), cache, read).subsystem == "bus-usb"
    assert reads == [None, "bus-usb"]  # read again once, then cached

    # The link appearing between the read and the check: read again at once.
    other = tmp_path / "1-2"
    other.mkdir()
    (other / "uevent").write_text("")

    def read_as_link_appears(syspath: str) -> Device:
        record = read(syspath)
        if not os.path.islink(os.path.join(syspath, "subsystem")):
            os.symlink(tmp_path / "bus-usb", os.path.join(syspath, "subsystem"))
        return record

    assert parent_record(str(other), cache, read_as_link_appears).subsystem == "bus-usb"


def test_sysattr_reads_like_sd_device():
    syspath = next(d.sys_path for d in pyudev.Context().list_devices(subsystem="pci")
                   if os.path.islink(f"{d.sys_path}/driver"))
    # driver/subsystem links give the basename of their target
    assert read_sysattr(syspath, "subsystem") == "pci"
    assert read_sysattr(syspath, "driver") == os.path.basename(os.readlink(f"{syspath}/driver"))
    # any other link, a directory, a missing or write-only file: no value
    if os.path.islink(f"{syspath}/firmware_node"):
        assert read_sysattr(syspath, "firmware_node") is None
    assert read_sysattr(syspath, "power") is None
    assert read_sysattr(syspath, "no-such-attribute") is None
    assert oct(os.stat(f"{syspath}/rescan").st_mode & 0o777) == "0o200"
    assert read_sysattr(syspath, "rescan") is None
    # a file: trailing newline removed, nothing else
    with open(f"{syspath}/vendor") as f:
        raw = f.read()
    assert raw.endswith("\n") and read_sysattr(syspath, "vendor") == raw.rstrip("\n")
    # subdirectory attributes work as in ATTR{power/control}
    assert read_sysattr(syspath, "power/control") in ("auto", "on")


def test_sysattr_trailing_newlines_and_nul(tmp_path):
    (tmp_path / "a").write_bytes(b"value  \n\r\n")
    (tmp_path / "b").write_bytes(b"ab\n\x00cd\n")
    (tmp_path / "c").write_bytes(b"")
    (tmp_path / "d").write_bytes(b"x")
    (tmp_path / "d").chmod(0o044)  # not readable by owner: udev skips it even as root
    reader = sysattr_reader(str(tmp_path))
    assert reader("a") == "value  "  # only newlines go; the matcher handles whitespace
    assert reader("b") == "ab\n"  # C string: cut at the NUL after stripping the tail
    assert reader("c") == ""
    assert reader("d") is None
    (tmp_path / "a").write_bytes(b"changed")
    assert reader("a") == "value  "  # cached per record, as sd-device does


def test_find_device_accepts_every_spec_form(udevd, tmp_path):
    want = "/devices/virtual/tty/tty20"
    for spec in ("/sys/class/tty/tty20", "/sys/devices/virtual/tty/tty20", want, "/dev/tty20",
                 "/sys/class/tty/tty20/"):
        dev = find_device(spec)
        assert dev.devpath == want, spec
        assert dev.devnode == "/dev/tty20" and dev.subsystem == "tty"
    link = "/dev/devplug-test-find-device"
    os.symlink("tty20", link)
    try:
        assert find_device(link).devpath == want
    finally:
        os.unlink(link)
    vda = find_device("/sys/class/block/" + os.listdir("/sys/class/block")[0])
    assert vda.subsystem == "block"


@pytest.mark.parametrize("spec, reason", [
    ("nonsense", "expected a /sys path"),
    ("", "empty"),
    ("/etc/passwd", "expected a /sys path"),
    ("/dev/no-such-node", "no such device node"),
    ("/dev/", "not a character or block device node"),
    ("/sys/kernel", "not a device directory"),
    ("/sys/devices/does/not/exist", "no such device"),
    ("/devices/virtual/tty/tty999", "no such device"),
])
def test_find_device_explains_what_is_wrong(spec, reason):
    with pytest.raises(DeviceNotFound) as err:
        find_device(spec)
    assert isinstance(err.value, LookupError)
    assert reason in str(err.value) and str(err.value).startswith(f"{spec}: ")


def test_parent_cache_is_bounded_and_keeps_the_recently_used(tmp_path):
    from devplug.sources.udev.records import ParentCache

    cache = ParentCache(limit=3)
    dirs = []
    for n in range(5):  # a hub gadget replugging: new parent directories forever
        d = tmp_path / f"1-{n}"
        d.mkdir()
        dirs.append(str(d))
        ino, _rec, valid = cache.get(str(d))
        assert not valid
        cache.put(str(d), ino, None)
        if n == 2:
            assert cache.get(dirs[0])[2]  # used again: now the most recent
    assert len(cache) == 3
    assert [cache.get(d)[2] for d in dirs] == [True, False, False, True, True]


def test_a_device_directory_seen_mid_removal_is_not_glue_forever(tmp_path):
    """The kernel deletes a device's uevent file before its directory: a parent lookup at
    that moment takes the directory for glue. The next device in that port (a new
    directory) must be found again (a replugged USB adapter lost its interface otherwise)."""
    from devplug.sources.udev.records import parent_devpath

    root = tmp_path / "sys"
    port = root / "devices" / "usb1" / "1-1"
    iface = port / "1-1:1.0"
    iface.mkdir(parents=True)
    (port / "uevent").write_text("")
    # Mid-removal: the interface directory is still there, its uevent file is not.
    assert parent_devpath("/devices/usb1/1-1/1-1:1.0/ttyUSB0", sys_root=str(root)) == "/devices/usb1/1-1"
    iface.rmdir()
    iface.mkdir()  # replugged: a new directory, a device this time
    (iface / "uevent").write_text("")
    assert parent_devpath("/devices/usb1/1-1/1-1:1.0/ttyUSB0", sys_root=str(root)) == "/devices/usb1/1-1/1-1:1.0"
