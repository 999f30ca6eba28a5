"""glibc ``fnmatch(3)`` as udev calls it, without backtracking blow-up.

udevd calls ``fnmatch(pattern, value, 0)`` in the C locale, so a pattern is matched byte by
byte (``?`` is one byte of a UTF-8 character), ``*`` crosses ``/`` and dot-files, ``\\``
escapes, and brackets follow glibc's own parser to the letter — including its corners: an
unterminated ``[`` is a literal only when nothing before the end matched, ``[a-`` never
matches, an unknown ``[:class:]`` fails, ``[.x.]``/``[=x=]`` name one byte. HOSTPATH uses
the same engine with ``FNM_PATHNAME`` (no wildcard matches ``/``).

Every non-star element of a pattern consumes exactly one byte and leads to one next pattern
position per byte, so a pattern is a small NFA over its own positions. Matching never
backtracks: the usual pattern compiles to one regular expression whose stars are atomic
leftmost searches (``(?>.*?SEG)``), linear per segment; a pattern whose brackets can
continue at different positions for different bytes (only glibc's corner cases) runs as
a set-of-states simulation. Either way the worst case is O(len(pattern) × len(value)).
Checked against glibc's own ``fnmatch`` over random patterns and values (tests).

Why no library: Python's ``fnmatch`` module has no backslash escapes, parses brackets its
own way and compiles to a backtracking regex (``*a*a*a*a*b`` against 126 ``a`` characters took 4 s);
glibc's ``fnmatch`` through ctypes is exact on glibc but costs a foreign call per value and
is not on the musl-based images devplug's container could use; no package on PyPI matches
glibc's corner cases. So the semantics are written here once and tested against glibc.
"""

from __future__ import annotations

import re
from typing import Optional

from .brackets import _BSL, _LB, _QMARK, _SLASH, _STAR, Element, bracket


def elements(pat: bytes, pathname: bool) -> list[Element]:
    """The pattern's NFA: element ``k`` says what position ``k`` does with one byte."""
    out: list[Element] = []
    n = len(pat)
    for k in range(n):
        c = pat[k]
        if c == _STAR:
            out.append(("*",))
        elif c == _QMARK:
            out.append(("?",))
        elif c == _BSL:
            if k + 1 >= n:
                out.append(("fail",))
            elif pathname and pat[k + 1] == _SLASH:
                out.append(("eslash", _SLASH, k + 2))
            else:
                out.append(("lit", pat[k + 1], k + 2))
        elif c == _LB:
            out.append(("set", bracket(pat, k + 1, pathname)))
        else:
            out.append(("lit", c, k + 1))
    return out


def _byte_class(bytes_: frozenset[int]) -> str:
    if not bytes_:
        return "(?!)"
    if len(bytes_) == 1:
        return re.escape(bytes([next(iter(bytes_))])).decode("latin-1")
    runs: list[str] = []
    values = sorted(bytes_)
    start = prev = values[0]
    for b in values[1:] + [-1]:
        if b == prev + 1:
            prev = b
            continue
        runs.append(f"\\x{start:02x}" if start == prev else f"\\x{start:02x}-\\x{prev:02x}")
        start = prev = b
    return "[" + "".join(runs) + "]"


def to_regex(pat: bytes, pathname: bool) -> Optional[str]:
    """A regex body (latin-1 text of a bytes regex, for ``fullmatch``) or None if the
    pattern needs the NFA (a bracket continuing at two positions)."""
    elems = elements(pat, pathname)
    anyb = "[^/]" if pathname else "[\\x00-\\xff]"
    segments: list[list[str]] = [[]]
    k = 0
    n = len(pat)
    after_star = False
    while k < n:
        e = elems[k]
        kind = e[0]
        if kind == "eslash" and after_star:
            return "(?!)"
        after_star = kind == "*" or (after_star and kind == "?")
        if kind == "*":
            if segments[-1] or len(segments) == 1:
                segments.append([])
            k += 1
        elif kind == "?":
            segments[-1].append(anyb)
            k += 1
        elif kind in ("lit", "eslash"):
            segments[-1].append(re.escape(bytes([e[1]])).decode("latin-1"))
            k = e[2]
        elif kind == "fail":
            return "(?!)"
        else:
            targets = e[1]
            if not targets:
                return "(?!)"
            if len(targets) > 1:
                return None
            (k, bytes_), = targets.items()
            segments[-1].append(_byte_class(bytes_))
    if len(segments) == 1:
        return "".join(segments[0])
    body = "".join(segments[0])
    for seg in segments[1:-1]:
        if seg:
            body += f"(?>{anyb}*?{''.join(seg)})"
    return body + anyb + "*" + "".join(segments[-1])


def nfa_match(elems: list[Element], data: bytes, pathname: bool) -> bool:
    """Set-of-states simulation of :func:`elements`; O(len(pattern) × len(data)).

    A state is ``2 * position + chained``, where ``chained`` says the position was reached
    through a star and only ``?``/``*`` after it (what glibc's star loop does differently).
    """
    n = len(elems)

    def close(states: set[int]) -> set[int]:
        todo = list(states)
        while todo:
            s = todo.pop()
            p = s >> 1
            if p < n and elems[p][0] == "*" and (2 * p + 3) not in states:
                states.add(2 * p + 3)
                todo.append(2 * p + 3)
        return states

    states = close({0})
    for b in data:
        nxt: set[int] = set()
        for s in states:
            p, chained = s >> 1, s & 1
            if p >= n:
                continue
            e = elems[p]
            kind = e[0]
            if kind == "*":
                if not (pathname and b == _SLASH):
                    nxt.add(2 * p + 1)
            elif kind == "?":
                if not (pathname and b == _SLASH):
                    nxt.add(2 * p + 2 + chained)
            elif kind == "lit" or (kind == "eslash" and not chained):
                if b == e[1]:
                    nxt.add(2 * e[2])
            elif kind == "set":
                for target, bytes_ in e[1].items():
                    if b in bytes_:
                        nxt.add(2 * target)
        if not nxt:
            return False
        states = close(nxt)
    return 2 * n in states or 2 * n + 1 in states


class Glob:
    """One or more fnmatch patterns (udev's ``|`` alternatives), compiled on first use."""

    __slots__ = ("patterns", "pathname", "_regex", "_nfas")

    def __init__(self, patterns: tuple[str, ...], pathname: bool = False) -> None:
        self.patterns = patterns
        self.pathname = pathname
        self._regex: Optional[re.Pattern[bytes]] = None
        self._nfas: Optional[list[list[Element]]] = None

    def _compile(self) -> None:
        bodies: list[str] = []
        nfas: list[list[Element]] = []
        for p in self.patterns:
            raw = p.encode("utf-8", "surrogateescape")
            body = to_regex(raw, self.pathname)
            if body is None:
                nfas.append(elements(raw, self.pathname))
            else:
                bodies.append(f"(?:{body})")
        self._regex = re.compile("|".join(bodies).encode("latin-1") or b"(?!)")
        self._nfas = nfas

    def matches(self, value: str) -> bool:
        if self._nfas is None:
            self._compile()
        data = value.encode("utf-8", "surrogateescape")
        if self._regex.fullmatch(data) is not None:  # type: ignore[union-attr]
            return True
        return any(nfa_match(e, data, self.pathname) for e in self._nfas)  # type: ignore[union-attr]


def fnmatch(pattern: str, value: str, *, pathname: bool = False) -> bool:
    """One pattern, one value (tests and one-off checks; rules keep a :class:`Glob`)."""
    return Glob((pattern,), pathname).matches(value)
