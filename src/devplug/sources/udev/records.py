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
from collections.abc import Callable
from typing import Optional

import pyudev

from ...core.device import AttrReader, Device, no_attrs

_LINK_ATTRS = frozenset({"driver", "subsystem", "module"})


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


class SysAttrs:
    """A lazy, caching :data:`AttrReader` for the device at ``syspath``; ``values`` is what
    it has answered so far (the pipeline re-checks those to reuse a device's last claim)."""

    __slots__ = ("syspath", "values")

    def __init__(self, syspath: str) -> None:
        self.syspath = syspath
        self.values: dict[str, Optional[str]] = {}

    def __call__(self, name: str) -> Optional[str]:
        try:
            return self.values[name]
        except KeyError:
            value = self.values[name] = read_sysattr(self.syspath, name)
            return value


def sysattr_reader(syspath: str) -> AttrReader:
    """A lazy, caching :data:`AttrReader` for the device at ``syspath``."""
    return SysAttrs(syspath)


_NO_TAGS: frozenset[str] = frozenset()


def _tags(props: dict[str, str]) -> frozenset[str]:
    tags = props.get("CURRENT_TAGS")
    if tags is None:
        tags = props.get("TAGS")
        if not tags:  # every kernel uevent: no generator to build
            return _NO_TAGS
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
    tags = props.get("TAGS")
    if tags:
        props["TAGS"] = _sorted_tags(tags)
    tags = props.get("CURRENT_TAGS")
    if tags:
        props["CURRENT_TAGS"] = _sorted_tags(tags)


def _sorted_tags(tags: str) -> str:
    return ":" + ":".join(sorted(t for t in tags.split(":") if t)) + ":"


def _driver(props: dict[str, str], syspath: str) -> Optional[str]:
    """libudev's rule: the ``DRIVER`` property (events carry it), else the ``driver`` link."""
    driver = props.get("DRIVER")
    if driver is not None:
        return driver
    try:
        return os.path.basename(os.readlink(syspath + "/driver"))
    except OSError:
        return None


def is_device(syspath: str) -> bool:
    """Whether ``syspath`` is a device directory now: it has a ``uevent`` file (as libudev
    decides). ``access(2)``, not ``stat``: a missing file is a False here, not an
    ``OSError`` to build and catch."""
    return os.access(syspath + "/uevent", os.F_OK)


def _has_subsystem(syspath: str) -> bool:
    return os.access(syspath + "/subsystem", os.F_OK, follow_symlinks=False)


def parent_devpath(devpath: str, *, sys_root: str = "/sys") -> Optional[str]:
    """The nearest ancestor directory that is a device (has a ``uevent`` file), as libudev
    finds parents; for a removed device, the nearest one still in sysfs.

    One :func:`is_device` per level and no memory of glue directories (``.../virtual/tty``): a device
    directory in the middle of its removal (the kernel deletes ``uevent`` first) looks like
    glue for a moment, and remembering that lost the next adapter plugged into the port.
    """
    path = devpath
    while True:
        path = path.rpartition("/")[0]
        if path.count("/") < 2:  # reached /devices itself
            return None
        if is_device(sys_root + path):
            return path


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


def parent_record(syspath: str, parent_cache: Optional[ParentCache],
                  read: Callable[[str], Device]) -> Optional[Device]:
    """The record of the ancestor device at ``syspath`` (``read`` builds it), through
    ``parent_cache``; ``None`` when it is gone.

    Half a record (attributes without a subsystem) would let rules match a device under
    another device's identity: a USB adapter read so is skipped by the identity, which
    then names the root hub. Two moments give one:

    * removal: the directory lost its ``uevent`` file between the lookup and the read. Not
      used, nor cached;
    * creation: ``device_add()`` makes the ``uevent`` file and the attributes before the
      ``subsystem`` link. A record without a subsystem is read again whenever the link is
      there now, cached or not (one ``access(2)``, only for such records).

    Devices that have no subsystem in sysfs (``pci0000:00``, ``platform``) keep their place
    in the chain, as udev keeps them.
    """
    ino, parent, valid = parent_cache.get(syspath) if parent_cache is not None else (None, None, False)
    if valid and not (parent is not None and parent.subsystem is None and _has_subsystem(syspath)):
        return parent
    for _ in range(2):
        try:
            parent = read(syspath)
        except (OSError, pyudev.DeviceNotFoundError):  # gone meanwhile
            parent = None
            break
        if parent.subsystem is not None:
            break
        if not is_device(syspath):
            return None
        if not _has_subsystem(syspath):
            break
    if parent_cache is not None:
        parent_cache.put(syspath, ino, parent)
    return parent


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
            parent = cache[parent_path] = parent_record(
                sys_root + parent_path, parent_cache,
                lambda syspath: device_from_pyudev(pyudev.Devices.from_sys_path(dev.context, syspath),
                                                   sys_root=sys_root, _parents=cache, parent_cache=parent_cache))
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


def device_from_uevent(props: dict[str, str], *, context: Optional[pyudev.Context] = None, sys_root: str = "/sys",
                       parent_cache: Optional[ParentCache] = None, gone: bool = False) -> Device:
    """The :class:`Device` record of one uevent's properties (``netlink.parse``).

    What the event says is used as is; the parent chain and (when the event names none) the
    driver are looked up only when a rule or the identity asks for them (in the same pass
    over the rules, so sysfs is read as it is then). Attribute reads stay lazy as for every
    record. ``gone`` (a remove or unbind, whose event only turns IDs Unhealthy and never
    runs the rules) reads nothing: no driver link, no attributes, no parent (and needs no
    ``context``, which only the parent lookup uses).
    """
    load_parent: Optional[Callable[[], Optional[Device]]] = None
    if not gone:
        if context is None:
            raise ValueError("device_from_uevent needs a pyudev context unless the device is gone")
        load_parent = _parent_loader(props["DEVPATH"], sys_root, context, parent_cache)
    _sorted_list_properties(props)
    devpath = props["DEVPATH"]
    syspath = sys_root + devpath
    devname = props.get("DEVNAME")
    if devname is not None and not devname.startswith("/"):
        devname = props["DEVNAME"] = "/dev/" + devname  # as libudev reports the kernel's name
    links = props.get("DEVLINKS")
    driver = props.get("DRIVER")
    return Device(
        devpath=devpath,
        sysname=devpath.rpartition("/")[2].replace("!", "/"),
        subsystem=props.get("SUBSYSTEM"),
        driver=driver,
        # An event names the driver bound when it was sent; without one, libudev reads the
        # ``driver`` link when asked (and a device that is gone has none).
        load_driver=None if driver is not None or gone else lambda: _driver(props, syspath),
        devtype=props.get("DEVTYPE"),
        devnode=devname,
        symlinks=tuple(links.split()) if links else (),
        properties=props,
        tags=_tags(props),
        read_attr=no_attrs if gone else SysAttrs(syspath),
        sys_root=sys_root,
        load_parent=load_parent,
    )


def _parent_loader(devpath: str, sys_root: str, context: pyudev.Context,
                   parent_cache: Optional[ParentCache]) -> Callable[[], Optional[Device]]:
    """Finds an event's parent record when first asked (see :func:`device_from_uevent`)."""
    def load_parent() -> Optional[Device]:
        parent_path = parent_devpath(devpath, sys_root=sys_root)
        if parent_path is None:
            return None
        return parent_record(
            sys_root + parent_path, parent_cache,
            lambda syspath: device_from_pyudev(pyudev.Devices.from_sys_path(context, syspath),
                                               sys_root=sys_root, parent_cache=parent_cache))
    return load_parent


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
