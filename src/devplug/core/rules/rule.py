"""Parsed rules: what one logical line of a rules file says, compiled for the engine."""

from __future__ import annotations

from typing import Optional, Union

import attrs

from .matchers import Match, ParentGroup
from .model import RuleRef
from .pattern import Pattern
from .template import Template

Check = Union[Match, ParentGroup]


@attrs.frozen(slots=True, eq=False)
class Assign:
    """One devplug assignment (``RESOURCE=``, ``MOUNT+=``, ``ENV{x}=`` …).

    ``value`` is the literal for keys that take no substitutions (RESOURCE, PERMISSIONS,
    SHARE, OPTIONS); ``templates`` holds the parsed templates of the others (two for MOUNT:
    host and container path). Immutable and free of positions, so one Assign serves every
    rule with the same token text.
    """

    key: str
    name: Optional[str]
    op: str
    value: str
    text: str
    templates: tuple[Template, ...] = ()
    read_only: bool = False
    options: frozenset[str] = frozenset()

    @property
    def final(self) -> bool:
        return self.op == ":="


@attrs.frozen(slots=True, eq=False)
class Rule:
    """One rule. Device rules have ``checks``; HOSTPATH rules have ``hostpath`` instead.

    ``checks`` run in udev's token order (all parent keys as one :class:`ParentGroup`);
    ``matches`` keeps the match keys in source order for display. ``index`` is a necessary
    condition the engine uses to skip rules quickly: a literal match key (``SUBSYSTEM==``,
    ``ATTRS{idVendor}==``…) one of whose values the device (or, for parent keys, some device
    of its chain) must have. Matches, assignments and their tuples are shared between rules
    that write them the same way (a large rules set repeats itself).
    """

    ref: RuleRef
    checks: tuple[Check, ...] = ()
    matches: tuple[Match, ...] = ()
    assigns: tuple[Assign, ...] = ()
    hostpath: tuple[str, ...] = ()
    hostpath_patterns: tuple[Pattern, ...] = ()
    label: Optional[str] = None
    goto: Optional[str] = None
    index: Optional[Match] = None

    @property
    def is_hostpath(self) -> bool:
        return bool(self.hostpath)

    @property
    def is_label_only(self) -> bool:
        return not self.checks and not self.assigns and self.goto is None

    @property
    def claims(self) -> bool:
        """Whether this rule can claim a device (sets RESOURCE to a name)."""
        return any(a.key == "RESOURCE" and a.value for a in self.assigns)

    @property
    def subsystems(self) -> Optional[frozenset[str]]:
        """Literal ``SUBSYSTEM==`` values this rule requires, or None when unconstrained."""
        for m in self.matches:
            if m.key == "SUBSYSTEM" and m.want and m.pattern.is_literal:
                return frozenset(m.pattern.literals)
        return None

    def __str__(self) -> str:
        return f"{self.ref}: {self.ref.text}"
