"""A device's last sighting, reused when nothing the rules and the identity read has changed.

Most uevents of a claimed device repeat what devplug saw last time: a port's ``remove`` and
``add``, a ``change``, ``bind``, udevd's database repeat. Running the rules and deriving
the ID again gives the same answer whenever every input is the same, and those are few:

* the record: every property and the action, which fix the subsystem, kernel name, node,
  links and tags, and the driver if the pass asked for it. Left out: ``SEQNUM``
  (unless a rule names it) and what udev sets after the rules ran (``USEC_INITIALIZED``,
  new on every ``add`` with the udev source), which rules cannot see;
* the parent chain, if the pass asked for it: the same parent *record* (the udev adapter
  shares parent records while their sysfs directory is the same one, with the attribute
  values they read). Where the source can vouch that no uevent has named an ancestor since
  (``chain``: equal stamps, ``sources.udev.ancestry``), the chain is not looked up at all:
  that lookup was the one path lookup in sysfs of a remembered ``add``;
* the device's own sysfs attributes that were read: each is read again and compared;
* nothing from the rest of the machine: a pass that asked the host (``TEST``,
  ``SYSCTL{}``, ``CONST{}``, ``[subsystem/sysname]``) is not remembered.

Checking that costs a dictionary comparison and the attribute reads; on a cold CPU (a
uevent arrives after the process slept) it is a fraction of a rules pass plus the identity
derivation. Pure: the attribute reads go through the record's own reader. Bounded: at most
``limit`` devices are remembered, the least recently seen forgotten first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import attrs

from .device import Device, Report
from .inventory import Sighting
from .rules.evaluation import POST_RULES_PROPERTIES
from .rules.host import NO_HOST, Host


#: The pass never asked for this (the driver, the parent): its answer did not depend on it.
_UNASKED: Any = object()


@attrs.define(slots=True)
class _Memo:
    """One pass's inputs (``props`` is a private copy: see :meth:`Recall.recall`) and result."""

    action: str
    props: dict[str, str]
    driver: Any  # Optional[str], or _UNASKED
    parent: Any  # Optional[Device], or _UNASKED
    sysattrs: tuple[tuple[str, Optional[str]], ...]  # each attribute the pass read, and its value
    sighting: Sighting
    chain: Optional[int]  # the source's stamp for the parent chain (None: it cannot vouch)


def attrs_read(device: Device) -> Optional[dict[str, Optional[str]]]:
    """What the record's attribute reader has answered so far, when it keeps that
    (``None``: a reader that does not say, so the device is never remembered)."""
    return getattr(device.read_attr, "values", None)


#: The source's stamp for a device's parent chain (by its ``devpath``): equal stamps at two
#: moments mean no ancestor was added, removed or moved in between; None when it cannot tell.
ChainStamp = Callable[[Report], Optional[int]]


def no_stamp(report: Report) -> Optional[int]:
    return None


class Recall:
    """Remembered sightings by device key (its syspath)."""

    #: Devices remembered at most: a gadget replugging under new paths must not grow this.
    LIMIT = 1024

    def __init__(self, *, ignore_seqnum: bool = True, limit: int = LIMIT, chain: ChainStamp = no_stamp) -> None:
        self.limit = limit
        self.chain = chain
        self.ignore_seqnum = ignore_seqnum
        self.hits = 0
        self._memo: dict[str, _Memo] = {}

    @property
    def ignore_seqnum(self) -> bool:
        return "SEQNUM" in self._ignored

    @ignore_seqnum.setter
    def ignore_seqnum(self, value: bool) -> None:
        self._ignored = tuple(POST_RULES_PROPERTIES | ({"SEQNUM"} if value else set()))

    def __len__(self) -> int:
        return len(self._memo)

    def clear(self) -> None:
        self._memo.clear()

    def recall(self, report: Report, action: str) -> Optional[Sighting]:
        """The sighting of this device's last pass, if every input is still the same. The
        report's record is built only for an input that needs it (the driver, a parent
        chain no stamp vouches for, an attribute the pass read)."""
        key = report.syspath
        m = self._memo.get(key)
        if m is None:
            return None
        props = report.properties
        stored = m.props  # a private copy: the values rules cannot see are made equal
        for name in self._ignored:
            if name in props and name in stored:
                stored[name] = props[name]
        if m.action != action or stored != props or (m.driver is not _UNASKED and m.driver != report.device.driver):
            return None
        if m.parent is not _UNASKED:
            chain = self.chain(report)
            if chain is None or chain != m.chain:
                if report.device.parent is not m.parent:
                    return None
                m.chain = chain  # looked up now: vouched for until an ancestor's next uevent
        if m.sysattrs:
            read = report.device.read_attr
            for name, value in m.sysattrs:
                if read(name) != value:
                    return None
        del self._memo[key]
        self._memo[key] = m  # most recently seen last
        self.hits += 1
        return m.sighting

    def remember(self, report: Report, action: str, sighting: Sighting) -> None:
        """Keep a fresh sighting whose pass read only the record (see :func:`watching`).
        The properties kept are the report's own (as its event said them)."""
        device = report.device
        values = attrs_read(device)
        if values is None:
            return
        key = report.syspath
        self._memo.pop(key, None)
        # What the pass never asked for, its answer did not depend on.
        driver = device.driver if device.driver_known else _UNASKED
        parent = device.parent if device.parent_known else _UNASKED
        self._memo[key] = _Memo(action, dict(report.properties), driver, parent,
                                tuple(values.items()), sighting,
                                self.chain(report) if parent is not _UNASKED else None)
        while len(self._memo) > self.limit:
            del self._memo[next(iter(self._memo))]


class Touch:
    """Set when a rules pass asked the machine anything (see :func:`watching`)."""

    __slots__ = ("hit",)

    def __init__(self) -> None:
        self.hit = False


def watching(host: Host, touch: Touch) -> Host:
    """``host``, with every answer it gives noted in ``touch``: such a pass depends on more
    than the record, so its sighting is not remembered. ``NO_HOST`` stays itself (rules
    treat it specially, and it answers nothing)."""
    if host is NO_HOST:
        return host

    def noted(fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            touch.hit = True
            return fn(*args)
        return call

    return Host(noted(host.path_mode), list_dir=noted(host.list_dir), sysctl=noted(host.sysctl),
                device_syspath=noted(host.device_syspath), read_attr=noted(host.read_attr),
                arch=noted(host.arch), virt=noted(host.virt))
