"""Compiled match keys: each checks one device (or, for parent keys, one device of the chain).

Semantics are systemd 252's ``udev_rule_apply_token_to_event``: a missing value compares as
``""``; a missing attribute fails the key whatever the operator; ``SYMLINK``/``TAG``/``TAGS``
ask whether *any* element matches the pattern (``==``) or *none* does (``!=``, true for an
empty list too), as checked against ``udevadm test``; attribute values lose trailing
whitespace unless the pattern's first alternative ends in whitespace.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Optional

from ..device import Device
from .host import NO_HOST, split_subsys_kernel, sysctl_normalize
from .pattern import Pattern
from .template import Template

if TYPE_CHECKING:
    from .evaluation import Evaluation

#: udev's token type order (``UdevRuleTokenType``): tokens of a rule run sorted by it.
ORDER = {
    "ACTION": 0, "DEVPATH": 1, "KERNEL": 2, "SYMLINK": 3, "NAME": 4, "ENV": 5, "CONST": 6, "TAG": 7,
    "SUBSYSTEM": 8, "DRIVER": 9, "ATTR": 11, "SYSCTL": 12, "KERNELS": 13, "SUBSYSTEMS": 14, "DRIVERS": 15,
    "ATTRS": 16, "TAGS": 17, "TEST": 18,
}
PARENT_KEYS = frozenset({"KERNELS", "SUBSYSTEMS", "DRIVERS", "ATTRS", "TAGS"})
_UDEV_NAME_SIZE = 512


def attr_value(value: Optional[str], strip: bool) -> Optional[str]:
    """An attribute value as udev compares it (``token_match_attr``)."""
    if value is None or not strip:
        return value
    return value[: _UDEV_NAME_SIZE - 1].rstrip(" \t\n\r")


class Match:
    """One ``KEY==/!=value`` of a rule."""

    __slots__ = ("key", "name", "pattern", "want", "text", "_get", "strip", "name_template")

    def __init__(self, key: str, name: Optional[str], pattern: Pattern, want: bool, text: str) -> None:
        self.key = key
        self.name = name
        self.pattern = pattern
        self.want = want  # True: the pattern must match (==); False: must not (!=)
        self.text = text  # as written; one Match serves every rule with the same token text
        self.strip = False
        self.name_template: Optional[Template] = None
        self._get: Callable[[Device, "Evaluation"], Optional[str]] = _GETTERS.get(key, _no_value)

    @property
    def is_parent(self) -> bool:
        return self.key in PARENT_KEYS

    def check(self, dev: Device, ev: "Evaluation") -> bool:
        return self.pattern.matches(self._get(dev, ev)) is self.want

    def explain(self, dev: Device, ev: "Evaluation") -> str:
        """Why :meth:`check` failed on ``dev``, for people."""
        value = self._get(dev, ev)
        return f"{self.text}: value is {value!r}" if value is not None else f"{self.text}: no value"

    def __repr__(self) -> str:
        return f"Match({self.text})"


def _no_value(dev: Device, ev: "Evaluation") -> Optional[str]:
    return None


_GETTERS: dict[str, Callable[[Device, "Evaluation"], Optional[str]]] = {
    "ACTION": lambda dev, ev: ev.action,
    "DEVPATH": lambda dev, ev: dev.devpath,
    "KERNEL": lambda dev, ev: dev.sysname,
    "KERNELS": lambda dev, ev: dev.sysname,
    "SUBSYSTEM": lambda dev, ev: dev.subsystem,
    "SUBSYSTEMS": lambda dev, ev: dev.subsystem,
    "DRIVER": lambda dev, ev: dev.driver,
    "DRIVERS": lambda dev, ev: dev.driver,
    "NAME": lambda dev, ev: ev.name,
}


class EnvMatch(Match):
    __slots__ = ()

    def check(self, dev: Device, ev: "Evaluation") -> bool:
        return self.pattern.matches(ev.env(self.name)) is self.want  # type: ignore[arg-type]

    def explain(self, dev: Device, ev: "Evaluation") -> str:
        value = ev.env(self.name)  # type: ignore[arg-type]
        return f"{self.text}: property is {value!r}" if value is not None else f"{self.text}: property not set"


class ListMatch(Match):
    """``SYMLINK`` (links without ``/dev/``), ``TAG`` and ``TAGS``."""

    __slots__ = ()

    def _items(self, dev: Device) -> tuple[str, ...] | frozenset[str]:
        if self.key == "SYMLINK":
            return tuple(link[5:] if link.startswith("/dev/") else "" for link in dev.symlinks)
        return dev.tags

    def check(self, dev: Device, ev: "Evaluation") -> bool:
        matches = self.pattern.matches
        for item in self._items(dev):
            if matches(item):
                return self.want
        return not self.want

    def explain(self, dev: Device, ev: "Evaluation") -> str:
        items = sorted(self._items(dev))
        what = "symlinks" if self.key == "SYMLINK" else "tags"
        return f"{self.text}: {what} are {items!r}" if items else f"{self.text}: no {what}"


class AttrMatch(Match):
    """``ATTR{name}`` / ``ATTRS{name}``; the name may contain substitutions, or name another
    device's attribute as ``[subsystem/sysname]attribute`` (read through the Host; a missing
    or unreadable attribute of a device that exists compares as ``""``, as in udev)."""

    __slots__ = ()

    def _attr_name(self, dev: Device, ev: "Evaluation") -> str:
        if self.name_template is not None:
            return self.name_template.expand(ev.device, ev.parent(), ev.env)
        return self.name  # type: ignore[return-value]

    def _value(self, dev: Device, ev: "Evaluation") -> Optional[str]:
        name = self.name
        if name is not None and name.startswith("["):
            parts = split_subsys_kernel(name)
            if parts is None or parts[2] is None:
                return None
            syspath = ev.host.device_syspath(parts[0], parts[1])
            if syspath is None:
                return None
            return ev.host.read_attr(syspath, parts[2])
        return dev.read_attr(self._attr_name(dev, ev))

    def check(self, dev: Device, ev: "Evaluation") -> bool:
        value = self._value(dev, ev)
        if value is None:
            return False
        if self.strip:
            value = value[: _UDEV_NAME_SIZE - 1].rstrip(" \t\n\r")
        return self.pattern.matches(value) is self.want

    def explain(self, dev: Device, ev: "Evaluation") -> str:
        value = self._value(dev, ev)
        if value is None:
            return f"{self.text}: no such attribute"
        return f"{self.text}: value is {attr_value(value, self.strip)!r}"


class ConstMatch(Match):
    """``CONST{arch}`` / ``CONST{virt}``: what machine this is (systemd's names)."""

    __slots__ = ()

    def check(self, dev: Device, ev: "Evaluation") -> bool:
        return self.pattern.matches(ev.host.const(self.name)) is self.want  # type: ignore[arg-type]

    def explain(self, dev: Device, ev: "Evaluation") -> str:
        return f"{self.text}: value is {ev.host.const(self.name)!r}"  # type: ignore[arg-type]


class SysctlMatch(Match):
    """``SYSCTL{name}``: a kernel parameter, whitespace stripped; a missing one is ``""``."""

    __slots__ = ()

    def _value(self, dev: Device, ev: "Evaluation") -> str:
        name = self.name_template.expand(ev.device, ev.parent(), ev.env) if self.name_template else self.name
        raw = ev.host.sysctl(sysctl_normalize(name))  # type: ignore[arg-type]
        return (raw or "").strip(" \t\n\r\v\f")

    def check(self, dev: Device, ev: "Evaluation") -> bool:
        return self.pattern.matches(self._value(dev, ev)) is self.want

    def explain(self, dev: Device, ev: "Evaluation") -> str:
        return f"{self.text}: value is {self._value(dev, ev)!r}"


class TestMatch(Match):
    """``TEST{mode}=="path"``: relative paths are below the device's syspath."""

    __slots__ = ("mode",)

    def __init__(self, key: str, path: Template, mode: Optional[int], want: bool, text: str, pattern: Pattern) -> None:
        super().__init__(key, None, pattern, want, text)
        self.name_template = path
        self.mode = mode

    def path(self, dev: Device, ev: "Evaluation") -> Optional[str]:
        """The path udev stats, or None when a ``/*/`` component matches nothing."""
        p = self.name_template.expand(dev, ev.parent(), ev.env)  # type: ignore[union-attr]
        if not p.startswith("/"):
            parts = split_subsys_kernel(p)
            syspath = ev.host.device_syspath(parts[0], parts[1]) if parts is not None else None
            if syspath is not None:
                p = syspath + (f"/{parts[2]}" if parts[2] else "")  # type: ignore[index]
            else:
                p = f"{dev.syspath}/{p}"
        return self._first_subdir(p, ev)

    @staticmethod
    def _first_subdir(path: str, ev: "Evaluation") -> Optional[str]:
        """udev's ``attr_subst_subdir``: the first ``/*/`` stands for the first entry of that
        directory (readdir order, dot-entries skipped) under which the rest exists."""
        star = path.find("/*/")
        if star < 0:
            return path
        head, tail = path[: star + 1], path[star + 2 :]
        for entry in ev.host.list_dir(head) or ():
            if not entry.startswith(".") and ev.host.path_mode(head + entry + tail) is not None:
                return head + entry + tail
        return None

    def check(self, dev: Device, ev: "Evaluation") -> bool:
        if ev.host is NO_HOST:
            return False  # no file system here: every TEST fails
        path = self.path(dev, ev)
        st_mode = ev.host.path_mode(path) if path is not None else None
        if st_mode is None:
            return not self.want
        if self.mode is None:
            return self.want
        return ((st_mode & self.mode) > 0) is self.want

    def explain(self, dev: Device, ev: "Evaluation") -> str:
        if ev.host is NO_HOST:
            return f"{self.text}: file tests are disabled here"
        path = self.path(dev, ev)
        if path is None:
            return f"{self.text}: no directory entry makes the path exist"
        st_mode = ev.host.path_mode(path)
        if st_mode is None:
            return f"{self.text}: {path} does not exist"
        return f"{self.text}: {path} has mode {st_mode:o}"


class ParentGroup:
    """All parent keys of a rule: they must match on one device of the chain (udev)."""

    __slots__ = ("matches", "text")

    def __init__(self, matches: tuple[Match, ...]) -> None:
        self.matches = matches
        self.text = ", ".join(m.text for m in matches)

    def check(self, dev: Device, ev: "Evaluation") -> bool:
        """udev's parent search: it starts over at the device, and a failed search forgets
        the ancestor an earlier rule found (``$id``, ``$driver``, ``$attr{}`` see it)."""
        matches = self.matches
        node: Optional[Device] = dev
        while node is not None:
            ev.set_parent(node)  # substitutions inside parent keys see the node being checked
            for m in matches:
                if not m.check(node, ev):
                    break
            else:
                return True
            node = node.parent
        ev.set_parent(None)
        return False

    def explain(self, dev: Device, ev: "Evaluation") -> str:
        for m in self.matches:
            if not any(m.check(node, ev) for node in dev.chain()):
                return f"{m.text}: no ancestor matches"
        return f"{self.text}: no single device of the chain matches all of them"
