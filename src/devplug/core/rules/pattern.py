"""udev match patterns: ``|`` alternatives, shell globs with glibc ``fnmatch`` semantics.

udev (``rule_line_add_token`` / ``token_match_string`` in systemd 252) classifies a value once:
``""`` is *empty* (matches an empty or missing value); ``"?*"`` becomes *not empty* with the
operator flipped; ``subsystem``/``bus``/``class`` for ``SUBSYSTEM`` match any of the three;
a value containing ``*?[`` is a *glob*, each alternative matched with ``fnmatch(p, s, 0)``
(see :mod:`.fnmatch`: byte-wise, ``*`` crosses ``/``, backslash escapes, glibc's brackets);
otherwise each alternative is compared literally (a backslash is then just a backslash). An
empty alternative (``"|foo"``, ``"a||b"``, ``"foo|"``) additionally matches an empty value.

Patterns compile once to a tuple of literals or a :class:`~.fnmatch.Glob` (whose regular
expression is built on first use: most rules of a large set never meet a device that gets
that far).
"""

from __future__ import annotations

import enum
from typing import Optional

from .fnmatch import Glob

GLOB_CHARS = frozenset("*?[")
SUBSYSTEM_WORDS = frozenset({"subsystem", "bus", "class"})


class Kind(enum.Enum):
    EMPTY = "empty"
    SUBSYSTEM = "subsystem"
    PLAIN = "plain"
    GLOB = "glob"


class Pattern:
    """A compiled udev match value (see the module docstring). Immutable once built."""

    __slots__ = ("source", "kind", "alternatives", "with_empty", "literals", "glob", "prefixes")

    def __init__(self, source: str, kind: Kind, alternatives: tuple[str, ...], with_empty: bool,
                 glob: Optional[Glob] = None, prefixes: Optional[tuple[str, ...]] = None) -> None:
        self.source = source
        self.kind = kind
        self.alternatives = alternatives
        self.with_empty = with_empty
        #: the values a PLAIN pattern accepts (a tuple: most have one, and a tuple is small)
        self.literals: tuple[str, ...] = alternatives if kind is Kind.PLAIN else ()
        self.glob = glob
        self.prefixes = prefixes  # fast path: every alternative is "ascii-literal*"

    def matches(self, value: Optional[str]) -> bool:
        """Whether ``value`` (``None`` = missing, compared as ``""``) matches, before ``!=``."""
        s = value or ""
        kind = self.kind
        if kind is Kind.PLAIN:
            if s in self.literals:
                return True
            return self.with_empty and not s
        if kind is Kind.EMPTY:
            return not s
        if kind is Kind.GLOB:
            if self.with_empty and not s:
                return True
            if self.prefixes is not None:
                return s.startswith(self.prefixes)
            return self.glob is not None and self.glob.matches(s)
        return s in SUBSYSTEM_WORDS

    @property
    def is_literal(self) -> bool:
        """Only plain alternatives, no empty one: the value must be one of ``literals``."""
        return self.kind is Kind.PLAIN and not self.with_empty and bool(self.literals)

    def __repr__(self) -> str:
        return f"Pattern({self.source!r}, {self.kind.value})"


def split_alternatives(value: str) -> tuple[tuple[str, ...], bool]:
    """udev's nulstr conversion: non-empty alternatives, and whether an empty one existed."""
    if "|" not in value:
        return ((value,), False) if value else ((), True)
    parts = value.split("|")
    alts = tuple(p for p in parts if p)
    return alts, len(alts) != len(parts)


def compile_pattern(value: str, *, subsystem_key: bool = False, pathname: bool = False) -> tuple[Pattern, bool]:
    """Compile a match value; returns the pattern and whether the operator must be flipped.

    ``subsystem_key`` enables the ``subsystem|bus|class`` special case of ``SUBSYSTEM``.
    """
    flip = False
    alts, with_empty = split_alternatives(value)
    if subsystem_key and value in SUBSYSTEM_WORDS:
        kind = Kind.SUBSYSTEM
    elif not value:
        kind = Kind.EMPTY
    elif value == "?*":
        kind, flip = Kind.EMPTY, True
    elif "*" in value or "?" in value or "[" in value:
        kind = Kind.GLOB
    else:
        kind = Kind.PLAIN
    glob = None
    prefixes = None
    if kind is Kind.GLOB and alts:
        if not pathname and all(a.endswith("*") and a.isascii() and not any(c in a[:-1] for c in "*?[\\")
                                for a in alts):
            prefixes = tuple(a.rstrip("*") for a in alts)
        else:
            glob = Glob(alts, pathname)
    return Pattern(value, kind, alts, with_empty, glob, prefixes), flip


def compile_path(path: str) -> Pattern:
    """One HOSTPATH alternative: a literal path, or an ``fnmatch(FNM_PATHNAME)`` glob when it
    has ``*?[``. Each alternative is classified on its own (unlike udev's ``|`` values), so
    the host path watcher (``sources.hostpath``) expands exactly what this matches."""
    pattern, _flip = compile_pattern(path, pathname=True)
    return pattern
