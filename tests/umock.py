"""umockdev helpers: USB-shaped mock devices whose uevents reach a process under test.

umockdev fakes ``/sys``, ``/dev`` and the uevent netlink socket through ``LD_PRELOAD``
(``libumockdev-preload.so``) in every process that has ``UMOCKDEV_DIR`` set to the testbed's
directory. ``Testbed.uevent()`` resolves the device with libudev *in the calling process*, so
the testbed itself must live in a preloaded process too: :class:`MockBed` runs this file as a
small server under the preload (``python tests/umock.py --serve``) and drives it with JSON
lines. The process under test is started with :meth:`MockBed.env` and sees the mock devices
as real ones: enumeration, sysfs attributes, ``/dev`` nodes, and ``add``/``remove`` uevents on
a udev netlink monitor.

What umockdev (0.17) does and does not do: adding a device sends its ``add`` uevent (with
the properties given, plus ``SEQNUM``); removing one sends nothing; any other action is sent
with :meth:`MockBed.uevent`. There is no udevd: no ``ID_*`` properties or symlinks unless a
record sets them.

The FTDI adapter is plugged and unplugged in the order a real one produces, as recorded in
the USB guest (``tests/usb/fixtures/plug.json`` and ``unplug.json``, udev's re-broadcast):
``add`` usb device, ``change`` usb device, ``add`` interface, port, tty, then ``bind`` port,
interface, usb device; and on unplug ``remove`` tty, ``unbind``/``remove`` port, interface,
usb device. Other gadgets are added parent first and removed child first (delete the node,
send ``remove``, then ``remove_device``).

Usage::

    with MockBed() as bed:
        proc = subprocess.Popen([...], env=bed.env())
        ftdi = plug_ftdi(bed, tty="ttyUSB0")
        unplug(bed, ftdi)
        plug_ftdi(bed, tty="ttyUSB1", port="1-2")
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
import subprocess
import sys
from typing import Any, Optional

import attrs

PRELOAD_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libumockdev-preload.so.0",
    "/usr/lib/aarch64-linux-gnu/libumockdev-preload.so.0",
    "/usr/lib64/libumockdev-preload.so.0",
    "/usr/lib/libumockdev-preload.so.0",
)
PCI_HOST = "/devices/pci0000:00/0000:00:14.0"
FIXTURES = Path(__file__).resolve().parent / "usb" / "fixtures"


def recorded_order(step: str) -> list[tuple[str, str]]:
    """(action, role) of a real FTDI adapter's uevents, as udevd re-broadcast them.

    Roles: ``usb_device``, ``interface``, ``port`` (usb-serial), ``tty``. Recorded in the QEMU
    USB guest by ``tests/usb/test_event_sequences.py``; module and driver events are left out.
    """
    doc = json.loads((FIXTURES / f"{step}.json").read_text())
    roles = ("usb_device", "interface", "port", "tty")
    return [(e["action"], e["role"]) for e in doc["udev"] if e["role"] in roles]


def preload_library() -> Optional[str]:
    for path in PRELOAD_CANDIDATES:
        if os.path.exists(path):
            return path
    found = glob.glob("/usr/lib*/**/libumockdev-preload.so*", recursive=True)
    return found[0] if found else None


def unavailable_reason() -> Optional[str]:
    """Why umockdev cannot be used here, or ``None`` when it can."""
    if preload_library() is None:
        return "umockdev's preload library is not installed (Debian package 'umockdev')"
    probe = subprocess.run(
        [sys.executable, "-c",
         "import gi; gi.require_version('UMockdev', '1.0'); from gi.repository import UMockdev"],
        capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["import failed"])[-1]
        return f"umockdev's GObject bindings (PyGObject, gir1.2-umockdev-1.0) do not load: {last}"
    return None


# -- the client side (test process) -----------------------------------------------------


class MockBed:
    """A umockdev testbed living in a preloaded helper process, driven over a pipe."""

    def __init__(self) -> None:
        lib = preload_library()
        if lib is None:
            raise RuntimeError(unavailable_reason() or "umockdev missing")
        self.preload = lib
        env = dict(os.environ, LD_PRELOAD=lib)
        env.pop("UMOCKDEV_DIR", None)
        self._proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, bufsize=1)
        hello = self._reply()
        self.root: str = hello["root"]

    def env(self, base: Optional[dict[str, str]] = None) -> dict[str, str]:
        """Environment for a process that should see this testbed instead of the host."""
        env = dict(os.environ if base is None else base)
        env["LD_PRELOAD"] = self.preload
        env["UMOCKDEV_DIR"] = self.root
        return env

    def _reply(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"umockdev bed exited (code {self._proc.poll()})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"umockdev bed: {reply['error']}")
        return reply

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self._proc.stdin.flush()
        return self._reply()

    def add(self, record: str) -> str:
        """Add one device from umockdev-record text (``P:``/``E:``/``A:``/``L:``/``N:`` lines)."""
        return self.call("add", record=record)["syspath"]

    def uevent(self, devpath: str, action: str) -> None:
        self.call("uevent", syspath=_sys(devpath), action=action)

    def remove_device(self, devpath: str) -> None:
        self.call("remove_device", syspath=_sys(devpath))

    def unlink_node(self, devnode: str) -> None:
        self.call("unlink_node", devnode=devnode)

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> MockBed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sys(devpath: str) -> str:
    return devpath if devpath.startswith("/sys/") else "/sys" + devpath


@attrs.frozen
class MockDevice:
    """One mock kernel device: its devpath and /dev node (if any)."""

    devpath: str
    devnode: Optional[str] = None


@attrs.frozen
class Plugged:
    """A plugged mock gadget: its devices, parents first."""

    devices: tuple[MockDevice, ...]
    # role -> device, for gadgets replayed in a recorded order (see recorded_order)
    roles: Optional[dict[str, MockDevice]] = None

    @property
    def usb(self) -> MockDevice:
        return self.devices[0]

    def node(self, name: str) -> MockDevice:
        return next(d for d in self.devices if d.devnode == f"/dev/{name}")


def _record(devpath: str, *, subsystem: str, props: dict[str, str] = {},
            attrs_: dict[str, str] = {}, links: dict[str, str] = {},
            node: Optional[str] = None, node_contents: Optional[str] = None,
            binary: dict[str, bytes] = {}) -> str:
    lines = [f"P: {devpath}", f"E: SUBSYSTEM={subsystem}"]
    lines += [f"E: {k}={v}" for k, v in props.items()]
    lines += [f"A: {k}={_escape_attr(v)}" for k, v in attrs_.items()]
    lines += [f"H: {k}={v.hex().upper()}" for k, v in binary.items()]  # any bytes, as sysfs gives them
    lines += [f"L: {k}={v}" for k, v in links.items()]
    if node is not None:
        lines.append(f"N: {node}" + (f"={node_contents}" if node_contents else ""))
    return "\n".join(lines) + "\n"


def _escape_attr(value: str) -> str:
    """umockdev-record's A: lines take C escapes: a newline or backslash in a value must be escaped."""
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _driver_link(devpath: str, bus: str, driver: str) -> str:
    ups = "../" * devpath.count("/")  # from the directory /sys<devpath> up to /sys
    return f"{ups}bus/{bus}/drivers/{driver}"


def _plug(bed: MockBed, devices: list[tuple[MockDevice, str]]) -> Plugged:
    # Parents first. Testbed.add_from_string() already sends the "add" uevent.
    for _dev, record in devices:
        bed.add(record)
    return Plugged(tuple(dev for dev, _ in devices))


def ensure_host_controller(bed: MockBed) -> None:
    """The PCI xHCI controller and root hub every mock USB device hangs off (added once)."""
    if getattr(bed, "_host_added", False):
        return
    bed.add(_record(PCI_HOST, subsystem="pci", props={"DRIVER": "xhci_hcd",
                                                      "PCI_ID": "8086:A12F"},
                    attrs_={"vendor": "0x8086", "device": "0xa12f", "class": "0x0c0330"},
                    links={"driver": _driver_link(PCI_HOST, "pci", "xhci_hcd")}))
    hub = f"{PCI_HOST}/usb1"
    bed.add(_record(hub, subsystem="usb",
                    props={"DEVTYPE": "usb_device", "DRIVER": "usb", "PRODUCT": "1d6b/2/606",
                           "DEVNAME": "/dev/bus/usb/001/001", "BUSNUM": "001", "DEVNUM": "001",
                           "MAJOR": "189", "MINOR": "0"},
                    attrs_={"idVendor": "1d6b", "idProduct": "0002", "busnum": "1", "devnum": "1",
                            "product": "xHCI Host Controller", "dev": "189:0"},
                    links={"driver": _driver_link(hub, "usb", "usb")},
                    node="bus/usb/001/001", node_contents="00"))
    bed._host_added = True  # type: ignore[attr-defined]


def _usb_device(port: str, devnum: int, vid: str, pid: str, *, serial: Optional[str | bytes],
                manufacturer: str, product: str | bytes, bcd: str = "0600",
                dev_class: str = "00") -> tuple[MockDevice, str]:
    """A USB device whose strings are ours to choose; ``bytes`` strings reach sysfs as they
    are (umockdev's binary ``H:`` attributes), so they may be anything a gadget sends."""
    devpath = f"{PCI_HOST}/usb1/{port}"
    node = f"bus/usb/001/{devnum:03d}"
    attrs_ = {"idVendor": vid, "idProduct": pid, "bcdDevice": bcd, "busnum": "1",
              "devnum": str(devnum), "manufacturer": manufacturer,
              "bDeviceClass": dev_class, "speed": "12", "dev": f"189:{devnum - 1}"}
    binary: dict[str, bytes] = {}
    for name, value in (("serial", serial), ("product", product)):
        if isinstance(value, bytes):
            binary[name] = value
        elif value is not None:
            attrs_[name] = value
    props = {"DEVTYPE": "usb_device", "DRIVER": "usb",
             "PRODUCT": f"{vid.lstrip('0')}/{pid.lstrip('0')}/{bcd.lstrip('0')}",
             "DEVNAME": f"/dev/{node}", "BUSNUM": "001", "DEVNUM": f"{devnum:03d}",
             "MAJOR": "189", "MINOR": str(devnum - 1)}
    rec = _record(devpath, subsystem="usb", props=props, attrs_=attrs_,
                  links={"driver": _driver_link(devpath, "usb", "usb")},
                  node=node, node_contents="00", binary=binary)
    return MockDevice(devpath, f"/dev/{node}"), rec


def _usb_interface(usb: MockDevice, number: int, cls: str, sub: str, proto: str,
                   driver: str) -> tuple[MockDevice, str]:
    port = usb.devpath.rsplit("/", 1)[1]
    devpath = f"{usb.devpath}/{port}:1.{number}"
    rec = _record(devpath, subsystem="usb",
                  props={"DEVTYPE": "usb_interface", "DRIVER": driver,
                         "INTERFACE": f"{int(cls, 16)}/{int(sub, 16)}/{int(proto, 16)}"},
                  attrs_={"bInterfaceNumber": f"{number:02x}", "bInterfaceClass": cls,
                          "bInterfaceSubClass": sub, "bInterfaceProtocol": proto,
                          "bAlternateSetting": " 0", "bNumEndpoints": "02"},
                  links={"driver": _driver_link(devpath, "usb", driver)})
    return MockDevice(devpath), rec


def plug_ftdi(bed: MockBed, *, tty: str = "ttyUSB0", port: str = "1-1", devnum: int = 2,
              serial: Optional[str | bytes] = "A10K1ABC", product: str | bytes = "FT232R USB UART") -> Plugged:
    """An FTDI FT232R USB serial adapter (0403:6001): usb device, interface, port, tty node.

    ``serial`` and ``product`` are what the gadget claims (``bytes``: raw, maybe not UTF-8)."""
    ensure_host_controller(bed)
    usb = _usb_device(port, devnum, "0403", "6001", serial=serial, manufacturer="FTDI",
                      product=product)
    iface = _usb_interface(usb[0], 0, "ff", "ff", "ff", "ftdi_sio")
    port_path = f"{iface[0].devpath}/{tty}"
    serial_port = (MockDevice(port_path), _record(
        port_path, subsystem="usb-serial", props={"DRIVER": "ftdi_sio"},
        attrs_={"port_number": "0", "latency_timer": "16"},
        links={"driver": _driver_link(port_path, "usb-serial", "ftdi_sio")}))
    minor = int(tty.removeprefix("ttyUSB"))
    tty_path = f"{port_path}/tty/{tty}"
    tty_dev = (MockDevice(tty_path, f"/dev/{tty}"), _record(
        tty_path, subsystem="tty",
        props={"DEVNAME": f"/dev/{tty}", "MAJOR": "188", "MINOR": str(minor)},
        attrs_={"dev": f"188:{minor}"}, node=tty))
    parts = {"usb_device": usb, "interface": iface, "port": serial_port, "tty": tty_dev}
    for action, role in recorded_order("plug"):
        dev, record = parts[role]
        if action == "add":
            bed.add(record)  # sends the add uevent
        else:
            bed.uevent(dev.devpath, action)
    return Plugged(tuple(parts[r][0] for r in ("usb_device", "interface", "port", "tty")),
                   roles={r: d for r, (d, _rec) in parts.items()})


def plug_uvc_camera(bed: MockBed, *, port: str = "1-3", devnum: int = 4,
                    serial: str = "200901010001", first_video: int = 0) -> Plugged:
    """A UVC webcam (046d:0825): usb device, control+streaming interfaces, a capture node
    (``videoN``, index 0) and its metadata node (``videoN+1``, index 1)."""
    ensure_host_controller(bed)
    usb = _usb_device(port, devnum, "046d", "0825", serial=serial, manufacturer="Logitech",
                      product="Webcam C270", bcd="0012", dev_class="ef")
    control = _usb_interface(usb[0], 0, "0e", "01", "00", "uvcvideo")
    streaming = _usb_interface(usb[0], 1, "0e", "02", "00", "uvcvideo")
    nodes = []
    for index in (0, 1):
        n = first_video + index
        path = f"{control[0].devpath}/video4linux/video{n}"
        nodes.append((MockDevice(path, f"/dev/video{n}"), _record(
            path, subsystem="video4linux",
            props={"DEVNAME": f"/dev/video{n}", "MAJOR": "81", "MINOR": str(n)},
            attrs_={"index": str(index), "name": "Webcam C270", "dev": f"81:{n}",
                    "dev_debug": "0"},
            node=f"video{n}", node_contents="00")))
    return _plug(bed, [usb, control, streaming, *nodes])


def set_property(bed: MockBed, dev: MockDevice, key: str, value: bytes) -> None:
    """Give a device a property with raw bytes (its sysfs ``uevent`` file) and send ``change``:
    the event, enumeration and libudev all see it, as they would a property udevd stored."""
    with open(bed.root + _sys(dev.devpath) + "/uevent", "ab") as f:
        f.write(key.encode() + b"=" + value + b"\n")
    bed.uevent(dev.devpath, "change")


def unplug(bed: MockBed, plugged: Plugged) -> None:
    """Remove a gadget as the kernel would: children first, each node gone, then ``remove``.

    A gadget with roles (the FTDI adapter) follows the recorded unplug order, ``unbind``
    events included.
    """
    if plugged.roles is not None:
        for action, role in recorded_order("unplug"):
            dev = plugged.roles[role]
            if action == "remove":
                _remove(bed, dev)
            else:
                bed.uevent(dev.devpath, action)
        return
    for dev in reversed(plugged.devices):
        _remove(bed, dev)


def _remove(bed: MockBed, dev: MockDevice) -> None:
    if dev.devnode:
        bed.unlink_node(dev.devnode)
    bed.uevent(dev.devpath, "remove")
    bed.remove_device(dev.devpath)


# -- the server side (runs under LD_PRELOAD) --------------------------------------------


def _serve() -> int:
    import gi

    gi.require_version("UMockdev", "1.0")
    from gi.repository import UMockdev

    testbed = UMockdev.Testbed.new()
    root = testbed.get_root_dir()
    out = sys.stdout

    def reply(**data: Any) -> None:
        out.write(json.dumps(data) + "\n")
        out.flush()

    reply(root=root)
    for line in sys.stdin:
        try:
            cmd = json.loads(line)
            op = cmd["op"]
            if op == "add":
                testbed.add_from_string(cmd["record"])
                devpath = cmd["record"].split("\n", 1)[0].removeprefix("P: ")
                reply(syspath="/sys" + devpath)
            elif op == "uevent":
                testbed.uevent(cmd["syspath"], cmd["action"])
                reply(ok=True)
            elif op == "remove_device":
                testbed.remove_device(cmd["syspath"])
                reply(ok=True)
            elif op == "unlink_node":
                os.unlink(root + cmd["devnode"])
                reply(ok=True)
            else:
                reply(error=f"unknown op {op!r}")
        except Exception as exc:  # report to the client, keep serving
            reply(error=f"{type(exc).__name__}: {exc}")
    del testbed  # removes the testbed directory
    return 0


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    sys.exit(_serve())
