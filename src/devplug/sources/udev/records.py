"""pyudev devices → :class:`devplug.device.Device` records, and device lookup by path.

The rules engine checks its matcher against ``udevadm test``, so the records mirror what
udev itself sees:

* ``driver`` is the device's own driver (libudev: the ``DRIVER`` property of an event, else
  the basename of the ``driver`` link); ``devnode`` is ``/dev/`` + ``DEVNAME``; ``symlinks``
  are the ``DEVLINKS``, sorted.
* ``properties`` are every udev property (uevent + database, including the synthesized
  ``DEVLINKS``/``TAGS``/``CURRENT_TAGS``), as plain ``str``. libudev lists links and tags in
  hash-table order, which differs from process to process (``udevadm info`` may print
  ``:uaccess:seat:`` where we read ``:seat:uaccess:``), so these three are rewritten sorted:
  records are deterministic.
* ``tags`` are the *current* tags (``CURRENT_TAGS``, udev ≥ 247: tags set by the rules of the
  device's last event), which is what rules' ``TAG``/``TAGS`` match; databases written by
  older udev only have ``TAGS``, used then.
* ``read_attr`` reads sysfs attributes like ``sd_device_get_sysattr_value``: ``lstat`` the
  path; the symlinks ``driver``/``subsystem``/``module`` give the basename of their target,
  any other symlink, a directory, a missing or a non-user-readable file gives ``None``;
  otherwise the file content with trailing ``\\n``/``\\r`` removed and cut at the first NUL
  (udev compares C strings). Values are cached per record, as sd-device caches per device.
* ``parent`` is the chain udev walks for ``KERNELS``/``ATTRS``…: the nearest ancestor
  directory with a ``uevent`` file, as libudev finds it. Built eagerly (chains are short);
  within one call (or one enumeration) shared ancestors are built once.
"""

from __future__ import annotations

import os
import stat
from typing import Optional

import pyudev

from ...core.device import AttrReader, Device

_LINK_ATTRS = frozenset({"driver", "subsystem", "module"})


class DeviceNotFound(LookupError):
    """A user-given device spec that names no device; ``str()`` is one clear line."""

    def __init__(self, spec: str, reason: str) -> None:
        super().__init__(spec, reason)
        self.spec = spec
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.spec}: {self.reason}"


def read_sysattr(syspath: str, name: str) -> Optional[str]:
    """One sysfs attribute, exactly as ``sd_device_get_sysattr_value`` reads it (uncached)."""
    path = os.path.join(syspath, name)
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        if name not in _LINK_ATTRS:
            return None
        try:
            return os.path.basename(os.readlink(path))
        except OSError:
            return None
    if stat.S_ISDIR(st.st_mode) or not st.st_mode & stat.S_IRUSR:
        return None
    try:
        with open(path, "rb", buffering=0) as f:
            raw = f.read()
    except OSError:
        return None
    raw = raw.rstrip(b"\n\r").split(b"\0", 1)[0]
    return raw.decode("utf-8", "surrogateescape")


def sysattr_reader(syspath: str) -> AttrReader:
    """A lazy, caching :data:`AttrReader` for the device at ``syspath``."""
    cache: dict[str, Optional[str]] = {}

    def read(name: str) -> Optional[str]:
        try:
            return cache[name]
        except KeyError:
            value = cache[name] = read_sysattr(syspath, name)
            return value

    return read


def _tags(props: dict[str, str]) -> frozenset[str]:
    tags = props.get("CURRENT_TAGS")
    if tags is None:
        tags = props.get("TAGS", "")
    return frozenset(t for t in tags.split(":") if t)


def _properties(dev: pyudev.Device) -> dict[str, str]:
    """All udev properties in one pass over libudev's list (pyudev's mapping does two).

    That pass uses pyudev internals (``pyudev._util``, ``Device._libudev``); they are
    imported here, not at module level, so if a pyudev release moves them the public (slower)
    mapping takes over instead of devplug failing to import.
    """
    try:
        from pyudev._util import udev_list_iterate

        entry = dev._libudev.udev_device_get_properties_list_entry(dev)
        return {
            k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape")
            for k, v in udev_list_iterate(dev._libudev, entry)
        }
    except (ImportError, AttributeError):
        out: dict[str, str] = {}
        for key in dev.properties:
            try:
                out[str(key)] = str(dev.properties[key])
            except UnicodeDecodeError:  # pyudev decodes strictly: keep the rest of the device
                continue
        return out


def _sorted_list_properties(props: dict[str, str]) -> None:
    links = props.get("DEVLINKS")
    if links:
        props["DEVLINKS"] = " ".join(sorted(links.split()))
    for key in ("TAGS", "CURRENT_TAGS"):
        tags = props.get(key)
        if tags:
            props[key] = ":" + ":".join(sorted(t for t in tags.split(":") if t)) + ":"


def _driver(props: dict[str, str], syspath: str) -> Optional[str]:
    """libudev's rule: the ``DRIVER`` property (events carry it), else the ``driver`` link."""
    driver = props.get("DRIVER")
    if driver is not None:
        return driver
    try:
        return os.path.basename(os.readlink(syspath + "/driver"))
    except OSError:
        return None


def parent_devpath(devpath: str, *, sys_root: str = "/sys") -> Optional[str]:
    """The nearest ancestor directory that is a device (has a ``uevent`` file), as libudev
    finds parents; for a removed device, the nearest one still in sysfs."""
    path = devpath
    while True:
        path = path.rpartition("/")[0]
        if path.count("/") < 2:  # reached /devices itself
            return None
        key = sys_root + path
        if key in _GLUE:
            continue
        if os.path.exists(key + "/uevent"):
            return path
        if os.path.isdir(key) and len(_GLUE) < _GLUE_MAX:
            # An existing directory without uevent is kernel glue (a class directory such as
            # .../virtual/tty): it never turns into a device, so stop asking sysfs about it.
            _GLUE.add(key)


_GLUE: set[str] = set()
_GLUE_MAX = 4096


class ParentCache:
    """Parent records shared across events, so a USB chain is built once, not per uevent.

    An entry is reused only while its sysfs directory is the same one (same inode): a
    device unplugged and another plugged into the same port gets a new directory, even
    when the monitor's subsystem filter hid the parent's own remove/add events.
    """

    #: Parent directories remembered at most (least recently used go first): a gadget that
    #: emulates a hub and replugs forever must not grow this without bound.
    LIMIT = 1024

    def __init__(self, limit: int = LIMIT) -> None:
        self._entries: dict[str, tuple[int, Optional[Device]]] = {}
        self._limit = limit

    def get(self, syspath: str) -> tuple[Optional[int], Optional[Device], bool]:
        """(current inode or None, cached record, whether the cached record is valid)."""
        try:
            ino = os.stat(syspath).st_ino
        except OSError:
            return None, None, False
        hit = self._entries.pop(syspath, None)
        if hit is not None and hit[0] == ino:
            self._entries[syspath] = hit  # most recently used last
            return ino, hit[1], True
        return ino, None, False

    def put(self, syspath: str, ino: Optional[int], record: Optional[Device]) -> None:
        if ino is not None:
            self._entries.pop(syspath, None)
            self._entries[syspath] = (ino, record)
            while len(self._entries) > self._limit:
                del self._entries[next(iter(self._entries))]

    def __len__(self) -> int:
        return len(self._entries)

    def forget(self, syspath: str) -> None:
        """An event for this device: its properties or driver may have changed."""
        self._entries.pop(syspath, None)


def device_from_pyudev(
    dev: pyudev.Device,
    *,
    sys_root: str = "/sys",
    _parents: Optional[dict[str, Optional[Device]]] = None,
    parent_cache: Optional[ParentCache] = None,
) -> Device:
    """Build the :class:`Device` record (with its parent chain) for a pyudev device.

    Everything but the parent chain comes from one pass over the device's udev properties
    (libudev derives its getters from the same ones): fast enough for the event path.
    Works for monitor events too, including ``remove`` (sysfs gone): identity and
    properties then come from the event itself, attributes read as ``None`` and the parent
    is the nearest ancestor still in sysfs.
    """
    props = _properties(dev)
    _sorted_list_properties(props)
    devpath = props.get("DEVPATH") or dev.device_path
    syspath = sys_root + devpath
    parent: Optional[Device] = None
    parent_path = parent_devpath(devpath, sys_root=sys_root)
    if parent_path is not None:
        cache = {} if _parents is None else _parents
        if parent_path in cache:
            parent = cache[parent_path]
        else:
            ino, parent, valid = (parent_cache.get(sys_root + parent_path) if parent_cache is not None
                                  else (None, None, False))
            if not valid:
                try:
                    pdev = pyudev.Devices.from_sys_path(dev.context, sys_root + parent_path)
                    parent = device_from_pyudev(pdev, sys_root=sys_root, _parents=cache,
                                                parent_cache=parent_cache)
                except (OSError, pyudev.DeviceNotFoundError):  # gone meanwhile
                    parent = None
                if parent_cache is not None:
                    parent_cache.put(sys_root + parent_path, ino, parent)
            cache[parent_path] = parent
    devname = props.get("DEVNAME")
    if devname is not None and not devname.startswith("/"):
        devname = "/dev/" + devname
    links = props.get("DEVLINKS")
    return Device(
        devpath=devpath,
        sysname=devpath.rpartition("/")[2].replace("!", "/"),
        subsystem=props.get("SUBSYSTEM"),
        driver=_driver(props, syspath),
        devtype=props.get("DEVTYPE"),
        devnode=devname,
        symlinks=tuple(links.split()) if links else (),
        properties=props,
        tags=_tags(props),
        read_attr=sysattr_reader(syspath),
        parent=parent,
        sys_root=sys_root,
    )


def list_devices(
    subsystems: Optional[frozenset[str]] = None, *, context: Optional[pyudev.Context] = None
) -> tuple[Device, ...]:
    """Every device now in sysfs (of these subsystems; ``None``/empty: all), udev's view."""
    ctx = context or pyudev.Context()
    enumerator = ctx.list_devices()
    for subsystem in sorted(subsystems or ()):
        enumerator.match_subsystem(subsystem)
    parents: dict[str, Optional[Device]] = {}
    out: list[Device] = []
    for dev in enumerator:
        try:
            out.append(device_from_pyudev(dev, sys_root=ctx.sys_path, _parents=parents))
        except (OSError, pyudev.DeviceNotFoundError):  # vanished while we looked
            continue
    return tuple(out)


def sysattr_names(device: Device) -> list[str]:
    """The attribute names directly in the device's sysfs directory, as ``udevadm info -a``
    offers them: regular files and the ``driver``/``subsystem``/``module`` links, sorted."""
    names: list[str] = []
    try:
        entries = list(os.scandir(device.syspath))
    except OSError:
        return names
    for entry in entries:
        try:
            if entry.is_symlink():
                if entry.name in _LINK_ATTRS:
                    names.append(entry.name)
            elif entry.is_file(follow_symlinks=False):
                names.append(entry.name)
        except OSError:
            continue
    return sorted(names)


def _pyudev_from_spec(spec: str, context: pyudev.Context, sys_root: str) -> pyudev.Device:
    if not spec:
        raise DeviceNotFound(spec, "empty device name")
    if spec.startswith("/dev/"):
        try:
            st = os.stat(spec)
        except FileNotFoundError:
            raise DeviceNotFound(spec, "no such device node") from None
        except OSError as exc:
            raise DeviceNotFound(spec, f"cannot stat: {exc.strerror}") from None
        if stat.S_ISCHR(st.st_mode):
            kind = "char"
        elif stat.S_ISBLK(st.st_mode):
            kind = "block"
        else:
            raise DeviceNotFound(spec, "not a character or block device node")
        try:
            return pyudev.Devices.from_device_number(context, kind, st.st_rdev)
        except pyudev.DeviceNotFoundError:
            raise DeviceNotFound(
                spec, f"no {kind} device {os.major(st.st_rdev)}:{os.minor(st.st_rdev)} in sysfs"
            ) from None
    if spec.startswith("/devices/"):
        syspath = sys_root + spec
    elif spec == sys_root or spec.startswith(sys_root + "/"):
        syspath = spec
    else:
        raise DeviceNotFound(spec, "expected a /sys path, a devpath (/devices/...) or a /dev node")
    real = os.path.realpath(syspath)
    if not os.path.isdir(real):
        raise DeviceNotFound(spec, "no such device in sysfs")
    if not os.path.exists(os.path.join(real, "uevent")):
        raise DeviceNotFound(spec, "not a device directory (no uevent file)")
    try:
        return pyudev.Devices.from_sys_path(context, real)
    except pyudev.DeviceNotFoundError:
        raise DeviceNotFound(spec, "no such device in sysfs") from None


def find_device(spec: str, *, context: Optional[pyudev.Context] = None) -> Device:
    """Look a device up by ``/sys`` path (``/sys/class/...`` too), devpath or ``/dev`` node.

    ``/dev`` symlinks such as ``/dev/serial/by-id/...`` resolve to their node. Raises
    :class:`DeviceNotFound` with a user-facing reason otherwise.
    """
    ctx = context or pyudev.Context()
    sys_root = ctx.sys_path
    return device_from_pyudev(_pyudev_from_spec(spec, ctx, sys_root), sys_root=sys_root)
