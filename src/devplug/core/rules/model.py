"""What the rules engine hands to the rest of devplug.

These records are the contract between the pure rules engine and its users (inventory,
kubelet adapter, CLI). Parsed rule internals stay private to the parser and matcher.
"""

from __future__ import annotations

from typing import Optional

import attrs

DEFAULT_DOMAIN = "devplug.io"
DEFAULT_PERMISSIONS = "rw"

#: Rule ``OPTIONS`` words (each adds more device nodes to a container: ``core.edits``).
OPT_SYMLINKS = "symlinks"
OPT_USB_NODE = "usb_node"
OPTIONS = frozenset({OPT_SYMLINKS, OPT_USB_NODE})


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
    """A rule as shown to people: its location and its source text (one logical line).

    ``column`` is where the text starts on its first line (1-based). Parsed keys keep no
    position of their own (a large rules set shares them between rules), so a key's
    location is found again in the text when an error needs it (:meth:`locate`).
    """

    file: str
    line: int
    text: str
    column: int = 1
    #: For a rule continued over several lines: (offset in ``text``, line, column) of each.
    segments: tuple[tuple[int, int, int], ...] = ()

    def locate(self, token_text: str) -> Location:
        """Where ``token_text`` (a key as written) sits in this rule; the rule's start if
        the text is not found."""
        at = max(self.text.find(token_text), 0)
        start, line, column = 0, self.line, self.column
        for seg in self.segments:
            if seg[0] > at:
                break
            start, line, column = seg
        return Location(self.file, line, column + at - start)

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
    ``errors`` are the assignments whose templates gave no safe value for this device
    (``escape``): a claim with errors is refused, never half-offered. ``error_rule`` is the
    rule of the first.
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
    errors: tuple[RuleError, ...] = ()
    error_rule: Optional[RuleRef] = None

    @property
    def refused(self) -> bool:
        """Claimed, but some template gave no safe value: the device must not be offered."""
        return self.resource is not None and bool(self.errors)

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
