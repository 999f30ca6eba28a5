"""One device's pass over the rules: udev's ``UdevEvent`` as far as match keys see it.

Two things here are udev's and easy to miss:

* **What rules see of the device.** A record holds what udev's database holds *after* the
  event, but rules run *before* udev adds some properties: ``USEC_INITIALIZED`` is set
  after the last rule (``device_ensure_usec_initialized``), so ``ENV{USEC_INITIALIZED}``
  and ``$env{USEC_INITIALIZED}`` see nothing, as in udev. This is decided here, not in the
  records: the record stays udev's view of the device for people (``devplug devices``)
  and every record source (netlink, database, tests) gets the same rule-time view.
* **The remembered ancestor** (``$id``, ``$driver``, ``$attr{}``): every parent search
  starts over, and one that fails forgets the ancestor an earlier rule found. The engine
  skips rules its index proves cannot match, without running them, so the effect of a
  skipped rule's (certainly failing) parent search is worked out only when a substitution
  asks for the ancestor: :meth:`Evaluation.parent` asks the engine whether any rule it
  skipped since would have reached its parent search.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

from ..device import Device
from .host import Host

#: Properties udev sets only after the rules ran.
POST_RULES_PROPERTIES = frozenset({"USEC_INITIALIZED"})

#: udev refuses an ``ENV{}`` value that does not fit its 512-byte buffer with the NUL.
ENV_VALUE_MAX_BYTES = 511

# (first rule, end rule, evaluation) -> whether a rule skipped in [first, end) would have
# run a parent search (which fails, so the remembered ancestor is forgotten).
Scan = Callable[[int, int, "Evaluation"], bool]


class Evaluation:
    """Mutable state of one device's pass over the rules."""

    __slots__ = ("device", "action", "host", "overlay", "name", "at", "_parent", "_known", "_scan")

    def __init__(self, device: Device, action: str, host: Host, scan: Optional[Scan] = None) -> None:
        self.device = device
        self.action = action
        self.host = host
        self.overlay: dict[str, Optional[str]] = {"ACTION": action}
        # udev's event->name, which only NAME= sets; Debian's 80-net-setup-link.rules sets it
        # from ID_NET_NAME for network interfaces, so that is what later rules see.
        self.name: Optional[str] = device.properties.get("ID_NET_NAME") if device.subsystem == "net" else None
        self.at = 0  # the rule being evaluated (its number in the rule set)
        self._parent: Optional[Device] = None
        self._known = 0  # rules before this one are accounted for in _parent
        self._scan = scan

    def env(self, key: str) -> Optional[str]:
        overlay = self.overlay
        if key in overlay:
            return overlay[key]
        if key in POST_RULES_PROPERTIES:
            return None
        return self.device.properties.get(key)

    def parent(self) -> Optional[Device]:
        """The ancestor the last parent search found, as udev would have it now."""
        if self._known < self.at:
            first, self._known = self._known, self.at  # no re-entry from the scan's own checks
            if self._scan is not None and self._parent is not None and self._scan(first, self.at, self):
                self._parent = None
        return self._parent

    def set_parent(self, node: Optional[Device]) -> None:
        self._parent = node
        self._known = self.at
