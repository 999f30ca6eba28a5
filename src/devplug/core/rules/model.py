"""What the rules engine hands to the rest of devplug.

These records are the contract between the pure rules engine and its users (inventory,
kubelet adapter, CLI). Parsed rule internals stay private to the parser and matcher.
"""

from __future__ import annotations

from typing import Optional

import attrs

DEFAULT_DOMAIN = "devplug.io"
DEFAULT_PERMISSIONS = "rw"


@attrs.frozen(slots=True)
class Location:
    """Where something sits in a rules file; ``column`` is 1-based, 0 when unknown;
    ``line`` 0 is the file as a whole (it cannot be read, or is not a rules file)."""

    file: str
    line: int
    column: int = 0

    def __str__(self) -> str:
        if not self.line:
            return self.file
        if self.column:
            return f"{self.file}:{self.line}:{self.column}"
        return f"{self.file}:{self.line}"


@attrs.frozen(slots=True)
class RuleError:
    """One user error in a rules file, printed as ``file:line:column: message``."""

    location: Location
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class RulesError(Exception):
    """Raised by loading when any file has errors; carries every error at once."""

    def __init__(self, errors: list[RuleError]):
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


@attrs.frozen(slots=True)
class RuleRef:
    """A rule as shown to people: its location and its source text (one logical line)."""

    file: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@attrs.frozen(slots=True)
class Mount:
    host_path: str
    container_path: str
    read_only: bool = False


@attrs.frozen(slots=True)
class Claim:
    """The final assignments for one device after every rule ran.

    ``resource`` is the full extended resource name (``devplug.io/ftdi-serial``) or ``None``
    when no rule claimed the device (or the last word was ``RESOURCE=""``). Templates
    (``DEVICE_ID``, ``CONTAINER_PATH``, mount paths, env and annotation values) are already
    expanded against the device. ``rule`` is the rule that last set ``RESOURCE``.
    """

    resource: Optional[str]
    permissions: str = DEFAULT_PERMISSIONS
    share: int = 1
    device_id: Optional[str] = None
    container_path: Optional[str] = None
    mounts: tuple[Mount, ...] = ()
    envs: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    options: frozenset[str] = frozenset()
    rule: Optional[RuleRef] = None
    matched: tuple[RuleRef, ...] = ()

    @property
    def resource_name(self) -> Optional[str]:
        """The part after the domain (``ftdi-serial``)."""
        if self.resource is None:
            return None
        return self.resource.rsplit("/", 1)[-1]


@attrs.frozen(slots=True)
class RuleTrace:
    """What one device rule did for one device (``RuleSet.explain``).

    ``reason`` is empty for a match, else the first key that failed with what the device
    had (``ATTRS{idVendor}=="0403": no ancestor matches``) or why the rule was skipped.
    """

    rule: RuleRef
    matched: bool
    reason: str = ""
