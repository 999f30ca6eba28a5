"""udev match patterns: ``|`` alternatives, shell globs with glibc ``fnmatch`` semantics.

udev (``rule_line_add_token`` / ``token_match_string`` in systemd 252) classifies a value once:
``""`` is *empty* (matches an empty or missing value); ``"?*"`` becomes *not empty* with the
operator flipped; ``subsystem``/``bus``/``class`` for ``SUBSYSTEM`` match any of the three;
a value containing ``*?[`` is a *glob*, each alternative matched with ``fnmatch(p, s, 0)``
(``*`` crosses ``/``, backslash escapes, ``[!..]``/``[^..]``, ``[:class:]``); otherwise each
alternative is compared literally (a backslash is then just a backslash). An empty
alternative (``"|foo"``, ``"a||b"``, ``"foo|"``) additionally matches an empty value.

Patterns compile once to a frozenset (literals) or one regular expression (globs).
"""

from __future__ import annotations

import enum
import re
from typing import Optional

import attrs

GLOB_CHARS = frozenset("*?[")
SUBSYSTEM_WORDS = frozenset({"subsystem", "bus", "class"})

_CLASSES = {
    "alnum": r"0-9A-Za-z",
    "alpha": r"A-Za-z",
    "blank": r" \t",
    "cntrl": r"\x00-\x1f\x7f",
    "digit": r"0-9",
    "graph": r"\x21-\x7e",
    "lower": r"a-z",
    "print": r"\x20-\x7e",
    "punct": r"!-/:-@\[-`{-~",
    "space": r" \t\n\r\x0b\x0c",
    "upper": r"A-Z",
    "xdigit": r"0-9A-Fa-f",
}
_NEVER = "(?!)"


class Kind(enum.Enum):
    EMPTY = "empty"
    SUBSYSTEM = "subsystem"
    PLAIN = "plain"
    GLOB = "glob"


def _class_char(c: str) -> str:
    return "\\" + c if c in "\\]^-[" else c


def _bracket(pat: str, i: int, pathname: bool) -> Optional[tuple[str, int]]:
    """Translate the bracket expression whose ``[`` is at ``pat[i-1]``; None if unterminated.

    Returns the regex fragment (``_NEVER`` for a malformed class name, as glibc then fails the
    whole match) and the index after ``]``.
    """
    n = len(pat)
    negate = i < n and pat[i] in "!^"
    if negate:
        i += 1
    items: list[str] = []
    first = True
    invalid = False
    while True:
        if i >= n:
            return None
        c = pat[i]
        i += 1
        if c == "]" and not first:
            break
        first = False
        if c == "\\":
            if i >= n:
                return None
            c = pat[i]
            i += 1
        elif c == "[" and i < n and pat[i] == ":":
            end = pat.find(":]", i + 1)
            if end == -1:
                return None
            name = pat[i + 1 : end]
            i = end + 2
            if name in _CLASSES:
                items.append(_CLASSES[name])
            else:
                invalid = True
            continue
        # range?
        if i + 1 < n and pat[i] == "-" and pat[i + 1] != "]":
            hi = pat[i + 1]
            j = i + 2
            if hi == "\\":
                if j >= n:
                    return None
                hi = pat[j]
                j += 1
            i = j
            if ord(c) <= ord(hi):
                items.append(f"{_class_char(c)}-{_class_char(hi)}")
            continue
        items.append(_class_char(c))
    if invalid:
        return _NEVER, i
    body = "".join(items)
    if pathname:
        body += "/" if negate else ""
        if not negate:
            # '/' never matches a bracket with FNM_PATHNAME.
            return (f"(?!/)[{body}]" if body else _NEVER), i
    if not body:
        return (r"[\s\S]" if negate else _NEVER), i
    return f"[{'^' if negate else ''}{body}]", i


def glob_to_regex(pat: str, *, pathname: bool = False) -> str:
    """glibc ``fnmatch`` (flags 0, or ``FNM_PATHNAME``) as a regex body for ``fullmatch``."""
    out: list[str] = []
    i, n = 0, len(pat)
    anychar = "[^/]" if pathname else r"[\s\S]"
    while i < n:
        c = pat[i]
        i += 1
        if c == "*":
            while i < n and pat[i] == "*":
                i += 1
            out.append(anychar + "*")
        elif c == "?":
            out.append(anychar)
        elif c == "\\":
            if i >= n:
                return _NEVER  # trailing backslash: glibc never matches
            out.append(re.escape(pat[i]))
            i += 1
        elif c == "[":
            res = _bracket(pat, i, pathname)
            if res is None:
                out.append(r"\[")
            else:
                frag, i = res
                out.append(frag)
        else:
            out.append(re.escape(c))
    return "".join(out)


@attrs.frozen(slots=True, eq=False)
class Pattern:
    """A compiled udev match value (see the module docstring)."""

    source: str
    kind: Kind
    alternatives: tuple[str, ...]
    with_empty: bool
    literals: frozenset[str]
    regex: Optional[re.Pattern[str]]
    prefixes: Optional[tuple[str, ...]] = None  # fast path: every alternative is "literal*"

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
            return self.regex is not None and self.regex.fullmatch(s) is not None
        return s in SUBSYSTEM_WORDS

    @property
    def is_literal(self) -> bool:
        """Only plain alternatives, no empty one: the value must be one of ``literals``."""
        return self.kind is Kind.PLAIN and not self.with_empty and bool(self.literals)


def split_alternatives(value: str) -> tuple[tuple[str, ...], bool]:
    """udev's nulstr conversion: non-empty alternatives, and whether an empty one existed."""
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
    elif any(c in GLOB_CHARS for c in value):
        kind = Kind.GLOB
    else:
        kind = Kind.PLAIN
    regex = None
    prefixes = None
    if kind is Kind.GLOB:
        body = "|".join(f"(?:{glob_to_regex(a, pathname=pathname)})" for a in alts) or _NEVER
        regex = re.compile(body)
        if not pathname and alts and all(a.endswith("*") and not any(c in a[:-1] for c in "*?[\\") for a in alts):
            prefixes = tuple(a.rstrip("*") for a in alts)
    return (
        Pattern(
            source=value,
            kind=kind,
            alternatives=alts,
            with_empty=with_empty,
            literals=frozenset(alts) if kind is Kind.PLAIN else frozenset(),
            regex=regex,
            prefixes=prefixes,
        ),
        flip,
    )
