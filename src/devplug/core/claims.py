"""From device records and host paths to inventory changes: rules → identity → inventory.

The one place where a uevent's action decides presence, so the udev source, coldplug,
resyncs and host-path watching all fold into the inventory the same way. Pure: the file
system is reached only through the ``path_mode`` seam the caller passes (``TEST{}`` keys
and host paths), and nothing is logged here; the daemon logs what changed.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterable
from typing import Optional

from . import identity
from .device import Device, PathMode, Report
from .inventory import HOSTPATH_PREFIX, Change, Inventory, Refusal, Sighting
from .recall import ChainStamp, Recall, Touch, no_stamp, watching
from .rules import Claim, RuleSet
from .rules.host import as_host
from .rules.escape import safe_paths
from .rules.model import DEFAULT_DOMAIN, OPT_SYMLINKS, OPT_USB_NODE

#: Actions after which the device (or its driver) is gone: its IDs turn Unhealthy.
ABSENT_ACTIONS = frozenset({"remove", "unbind"})


def _no_paths(path: str) -> Optional[int]:
    return None


def _always(device: Device) -> bool:
    return True


def refusal(key: str, claim: Claim, *, base_id: Optional[str] = None, devnode: Optional[str] = None,
            subsystem: Optional[str] = None, symlinks: tuple[str, ...] = (), usb_node: Optional[str] = None,
            node_root: str = "/dev") -> Optional[Refusal]:
    """Why a claimed device must not be offered, or ``None``.

    Template errors (``Claim.errors``) come first, with their ``file:line:column`` (``rule``
    is the ``file:line`` where the first one's rule starts). Then the
    paths the kernel and udev gave, which a container gets as they are: the node (under
    ``node_root``), and the symlinks and USB node when the rule's OPTIONS ask for them.
    """
    assert claim.resource is not None
    if claim.errors:
        rule = claim.error_rule or claim.rule
        return Refusal(key=key, resource=claim.resource, rule=str(rule) if rule else None,
                       reason="; ".join(str(e) for e in claim.errors), base_id=base_id,
                       devnode=devnode, subsystem=subsystem)
    paths = [devnode] if devnode else []
    if OPT_SYMLINKS in claim.options:
        paths += symlinks
    if OPT_USB_NODE in claim.options and usb_node:
        paths.append(usb_node)
    why = safe_paths(paths, node_root)
    if why is None:
        return None
    return Refusal(key=key, resource=claim.resource, rule=str(claim.rule) if claim.rule else None,
                   reason=why, base_id=base_id, devnode=devnode, subsystem=subsystem)


class Pipeline:
    """Evaluates rules for what the sources report and folds it into the inventory.

    ``path_mode`` answers ``TEST{}`` keys and tells whether a host path exists (and is a
    device node); the daemon passes the real file system.

    ``present`` tells whether a device is still there once its pass was read. A device
    being removed while its rules read its ancestors shows a cut chain: the kernel removes
    children first, so ``uevent`` files vanish bottom-up and the walk can skip from a tty
    straight to the root hub, whose ID the device would then be offered under. Still there
    after the pass means its ancestors were there during it; gone means its remove is on
    the way, and the sighting says so instead.

    ``chain`` is the source's stamp for a device's parent chain (see :mod:`.recall`).
    """

    def __init__(self, ruleset: RuleSet, inventory: Inventory, *, domain: str = DEFAULT_DOMAIN,
                 path_mode: PathMode = _no_paths, recall: bool = True,
                 present: Callable[[Device], bool] = _always, chain: ChainStamp = no_stamp) -> None:
        self.inventory = inventory
        self.present = present
        self.domain = domain
        self.path_mode = path_mode
        self._touch = Touch()
        self._plain_host = as_host(path_mode)
        self._host = watching(self._plain_host, self._touch)
        self.recall: Optional[Recall] = Recall(chain=chain) if recall else None
        self.ruleset = ruleset

    @property
    def ruleset(self) -> RuleSet:
        return self._ruleset

    @ruleset.setter
    def ruleset(self, ruleset: RuleSet) -> None:
        """New rules: nothing remembered under the old ones is reused."""
        self._ruleset = ruleset
        if self.recall is not None:
            self.recall.clear()
            self.recall.ignore_seqnum = not ruleset.mentions("SEQNUM")

    # ---- udev devices ---------------------------------------------------------------
    def sight(self, report: Report, action: str = "add", *, recall: bool = True) -> Sighting:
        """What one uevent says of a device: its last sighting when none of the inputs
        changed (:mod:`.recall`), else a fresh pass over the rules and the identity. A
        :class:`~.device.Report` builds its record only for a pass (or an input the recall
        must read); a :class:`~.device.Device` is its own report.

        ``recall=False`` (enumerations, which run in a worker thread) neither uses nor
        feeds what is remembered: that stays with the event path's thread."""
        if action in ABSENT_ACTIONS:
            return Sighting(key=report.syspath, present=False)
        memo = self.recall if recall else None
        if memo is None:
            device = report.device
            return self._checked(device, self._sight(device, action, self._plain_host))
        hit = memo.recall(report, action)  # inputs of a pass that was checked: no check again
        if hit is not None:
            return hit
        device = report.device
        self._touch.hit = False
        sighting = self._checked(device, self._sight(device, action, self._host))
        if sighting.present and not self._touch.hit:
            memo.remember(report, action, sighting)
        return sighting

    def _checked(self, device: Device, sighting: Sighting) -> Sighting:
        """The sighting, or the device gone when it vanished while its pass was read. Asked
        only where it matters: a claim, or a device that holds an ID (unclaimed by a cut
        chain, it would leave its resource)."""
        if (sighting.resource is None and self.inventory.binding(sighting.key) is None) or self.present(device):
            return sighting
        return Sighting(key=sighting.key, present=False)

    def _sight(self, device: Device, action: str, host: PathMode) -> Sighting:
        key = device.syspath
        claim = self.ruleset.evaluate(device, action=action, domain=self.domain, path_mode=host)
        if claim.resource is None:
            return Sighting(key=key, present=True)
        usb = identity.usb_ancestors(device)
        base_id = identity.device_id(device, claim, usb)
        usb_node = identity.usb_node(device, usb[0])
        refused = refusal(key, claim, base_id=base_id, devnode=device.devnode, subsystem=device.subsystem,
                          symlinks=device.symlinks, usb_node=usb_node)
        if refused is not None:
            return Sighting(key=key, present=True, resource=claim.resource, claim=claim, refusal=refused)
        return Sighting(
            key=key,
            present=True,
            resource=claim.resource,
            base_id=base_id,
            claim=claim,
            devnode=device.devnode,
            subsystem=device.subsystem,
            symlinks=device.symlinks,
            usb_node=usb_node,
            topology=identity.topology(device, usb[0]),
        )

    def handle(self, report: Report, action: str) -> Change:
        """One uevent (not logged here: see :meth:`log_change`). ``move`` is the old path
        leaving and the new one arriving; a device that left needs no record
        (:meth:`Inventory.gone`)."""
        if action in ABSENT_ACTIONS:
            return self.inventory.gone(report.syspath)
        if action == "move" and report.properties.get("DEVPATH_OLD"):
            device = report.device
            old = Sighting(key=device.sys_root + device.properties["DEVPATH_OLD"], present=False)
            return self.inventory.apply(old, self.sight(device, "add"))
        return self.inventory.apply(self.sight(report, action))

    def sight_all(self, devices: Iterable[Device]) -> list[Sighting]:
        """The sightings of a full enumeration. Not remembered: an enumeration's records
        (udev's database) never equal an event's, and it may run in a worker thread."""
        return [self.sight(d, "add", recall=False) for d in devices]

    def resync(self, devices: Iterable[Device]) -> Change:
        """A full enumeration (coldplug, after an overflow, after a rules reload)."""
        return self.inventory.resync(self.sight_all(devices), hostpath=False)

    # ---- host paths -----------------------------------------------------------------
    def sight_path(self, path: str) -> Sighting:
        key = HOSTPATH_PREFIX + path
        mode = self.path_mode(path)
        if mode is None:
            return Sighting(key=key, present=False)
        claim = self.ruleset.evaluate_path(path, domain=self.domain, path_mode=self.path_mode)
        if claim.resource is None:
            return Sighting(key=key, present=True)
        is_node = stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        base_id = identity.sanitize_id(claim.device_id or path.strip("/"))
        refused = refusal(key, claim, base_id=base_id, devnode=path, node_root="/")
        if refused is not None:
            return Sighting(key=key, present=True, resource=claim.resource, claim=claim, refusal=refused,
                            hostpath=True)
        return Sighting(
            key=key,
            present=True,
            resource=claim.resource,
            base_id=base_id,
            claim=claim,
            devnode=path if is_node else None,
            hostpath=True,
        )

    def resync_paths(self, paths: Iterable[str]) -> Change:
        return self.inventory.resync((self.sight_path(p) for p in paths), hostpath=True)
