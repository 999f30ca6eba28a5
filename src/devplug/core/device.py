"""The device record every core module works on.

Only the udev adapter (``devplug.udev``) builds these from pyudev; tests build them by hand
with :func:`static_attrs`. Nothing here does I/O on its own: attribute values and file
tests come through callables the adapter supplies, so the rules engine stays pure and
attribute reads stay lazy (most rules never look at most attributes).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Optional, Protocol

import attrs

#: Reads one sysfs attribute of a device, as udev's ``sd_device_get_sysattr_value`` would
#: (trailing newline removed; symlink attributes such as ``driver`` give the link's basename).
#: Returns ``None`` when the attribute is missing or unreadable.
AttrReader = Callable[[str], Optional[str]]

#: ``stat`` seam for ``TEST{mode}``: the st_mode of a path, or ``None`` when it does not exist.
PathMode = Callable[[str], Optional[int]]

_SYSNUM = re.compile(r"[0-9]+$")


def static_attrs(values: Mapping[str, str]) -> AttrReader:
    """An attribute reader over a fixed mapping, for tests and recorded devices."""
    frozen = dict(values)
    return frozen.get


def no_attrs(_name: str) -> None:
    return None


@attrs.define(slots=True, eq=False, repr=False)
class Device:
    """One kernel device with what udev knows of it, plus its parent chain.

    Written once rather than frozen, as the inventory's per-event records are (see
    :mod:`.entries`): never assigned after it is built, except the lazy ``driver`` and
    ``parent`` filling themselves in.

    ``devpath`` is the kernel's DEVPATH (``/devices/...``, no ``/sys`` prefix).
    ``properties`` are the udev/uevent properties (``ID_VENDOR_ID`` …).
    ``symlinks`` are absolute ``/dev/...`` paths udev created for the node.
    """

    devpath: str
    sysname: str
    subsystem: Optional[str] = None
    _driver: Optional[str] = attrs.field(default=None, alias="driver")
    devtype: Optional[str] = None
    devnode: Optional[str] = None
    symlinks: tuple[str, ...] = ()
    properties: Mapping[str, str] = attrs.field(factory=dict)
    tags: frozenset[str] = frozenset()
    read_attr: AttrReader = no_attrs
    _parent: Optional[Device] = attrs.field(default=None, alias="parent")
    sys_root: str = "/sys"
    #: Finds the parent when first asked (events: a ``remove`` never needs it); None: ``parent``.
    _load_parent: Optional[Callable[[], Optional[Device]]] = attrs.field(default=None, alias="load_parent")
    #: Finds the driver when first asked (events: most rules never look, and the lookup is a
    #: ``readlink`` in sysfs); None: ``driver`` as given.
    _load_driver: Optional[Callable[[], Optional[str]]] = attrs.field(default=None, alias="load_driver")

    @property
    def driver(self) -> Optional[str]:
        load = self._load_driver
        if load is not None:
            object.__setattr__(self, "_driver", load())
            object.__setattr__(self, "_load_driver", None)
        return self._driver

    @property
    def driver_known(self) -> bool:
        """Whether ``driver`` was given or has been asked for (and so was looked up)."""
        return self._load_driver is None

    @property
    def parent_known(self) -> bool:
        """Whether ``parent`` was given or has been asked for."""
        return self._load_parent is None

    @property
    def parent(self) -> Optional[Device]:
        load = self._load_parent
        if load is not None:
            object.__setattr__(self, "_parent", load())
            object.__setattr__(self, "_load_parent", None)
        return self._parent

    @property
    def syspath(self) -> str:
        return self.sys_root + self.devpath

    @property
    def sysnum(self) -> str:
        """udev's ``%n``: the trailing digits of the kernel name, or empty."""
        m = _SYSNUM.search(self.sysname)
        return m.group(0) if m else ""

    def chain(self) -> Iterator[Device]:
        """The device itself, then each ancestor up to the root."""
        dev: Optional[Device] = self
        while dev is not None:
            yield dev
            dev = dev.parent

    def find_parent(self, subsystem: str, devtype: Optional[str] = None) -> Optional[Device]:
        """The nearest ancestor (not self) with this subsystem (and devtype)."""
        for dev in self.chain():
            if dev is self:
                continue
            if dev.subsystem == subsystem and (devtype is None or dev.devtype == devtype):
                return dev
        return None

    @property
    def device(self) -> Device:
        """Itself: a record is its own :class:`Report`."""
        return self

    def __repr__(self) -> str:
        return f"Device({self.devpath!r}, subsystem={self.subsystem!r}, devnode={self.devnode!r})"


class Report(Protocol):
    """What one event says of a device, with the device's record only when asked.

    The udev source's uevents build their record lazily: a device whose inputs did not
    change since its last pass (``core.recall``) or that left (``Inventory.gone``) needs
    none, and building one was ~40 µs of each event on a CPU that just woke. A
    :class:`Device` is its own report. ``properties`` are as the event said them: compare
    them only with another report's of the same kind (a record normalises ``DEVNAME``).
    """

    @property
    def syspath(self) -> str: ...
    @property
    def devpath(self) -> str: ...
    @property
    def properties(self) -> Mapping[str, str]: ...
    @property
    def device(self) -> Device: ...
