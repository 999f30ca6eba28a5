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
"""

from __future__ import annotations

import re
from typing import Optional, Union

_BSL, _LB, _RB, _COLON, _EQ, _DOT, _DASH = map(ord, "\\[]:=.-")
_STAR, _QMARK, _SLASH, _BANG, _CARET = map(ord, "*?/!^")
_CHAR_CLASS_MAX_LENGTH = 256
ALL_BYTES = frozenset(range(256))


def _cls(pred) -> frozenset[int]:
    return frozenset(b for b in range(128) if pred(chr(b)))


#: The C locale's character classes: ASCII only, no byte >= 0x80 belongs to any.
_CLASSES: dict[bytes, frozenset[int]] = {
    b"alnum": _cls(str.isalnum),
    b"alpha": _cls(str.isalpha),
    b"blank": frozenset(b" \t"),
    b"cntrl": frozenset(range(32)) | {127},
    b"digit": _cls(str.isdigit),
    b"graph": frozenset(range(33, 127)),
    b"lower": _cls(str.islower),
    b"print": frozenset(range(32, 127)),
    b"punct": frozenset(b for b in range(33, 127) if not chr(b).isalnum()),
    b"space": frozenset(b" \t\n\r\x0b\x0c"),
    b"upper": _cls(str.isupper),
    b"xdigit": frozenset(b"0123456789abcdefABCDEF"),
}

# Pattern elements, by position: ("*",), ("?",), ("lit", byte, next), ("set", {next: bytes}),
# ("fail",), and ("eslash", "/", next): an escaped '/' under FNM_PATHNAME, which glibc never
# matches right after a star (its star only tries the rest before the next '/').
Element = tuple


class _Fail(Exception):
    """glibc returned FNM_NOMATCH from inside the bracket parser, whatever the byte."""


_UNTERMINATED = -1


def _skip_rest(pat: bytes, p: int) -> Optional[int]:
    """glibc's walk over the rest of a bracket that already matched: the index after ``]``,
    :data:`_UNTERMINATED` when it runs into the end of the pattern, None when it fails."""
    n = len(pat)

    def at(k: int) -> int:
        return pat[k] if k < n else 0

    while True:
        c = at(p)
        p += 1
        if c == _RB:
            return p
        if c == 0:
            return _UNTERMINATED
        if c == _BSL:
            if at(p) == 0:
                return None
            p += 1
        elif c == _LB and at(p) == _COLON:
            startp, c1 = p, 0
            while True:
                p += 1
                c = at(p)
                c1 += 1
                if c1 == _CHAR_CLASS_MAX_LENGTH:
                    return None
                if c == _COLON and at(p + 1) == _RB:
                    break
                if c < ord("a") or c >= ord("z"):
                    p = startp - 2
                    break
            p += 2
        elif c == _LB and at(p) == _EQ:
            p += 1
            if at(p) == 0:
                return None
            p += 1
            if at(p) != _EQ or at(p + 1) != _RB:
                return None
            p += 2
        elif c == _LB and at(p) == _DOT:
            while True:
                p += 1
                c = at(p)
                if c == 0:
                    return None
                if c == _DOT and at(p + 1) == _RB:
                    break
            p += 2


def bracket(pat: bytes, i: int, pathname: bool) -> dict[int, frozenset[int]]:
    """The ``[`` at ``pat[i-1]``: for each pattern position a byte can continue at, those bytes.

    A port of the bracket case of glibc's ``fnmatch_loop.c`` (single-byte C locale), run
    once for all 256 bytes at the same time: the parser's path does not depend on the byte
    until an element matches it, so each element removes its bytes from the ones still
    undecided. Bytes that appear in no entry make the pattern fail at this position.
    """
    n = len(pat)

    def at(k: int) -> int:
        return pat[k] if k < n else 0

    undecided = set(ALL_BYTES)
    if pathname:
        undecided.discard(_SLASH)  # '/' never matches a bracket under FNM_PATHNAME
    hits: dict[int, set[int]] = {}  # skip-from position -> bytes matched there

    def match(where: int, bytes_: Union[frozenset[int], set[int], range]) -> None:
        got = undecided.intersection(bytes_)
        if got:
            undecided.difference_update(got)
            hits.setdefault(where, set()).update(got)

    p = i
    negate = at(p) in (_BANG, _CARET)
    if negate:
        p += 1
    end: Optional[int] = None
    try:
        c = at(p)
        p += 1
        while True:
            normal = ranged = False
            if c == _BSL:
                if at(p) == 0:
                    raise _Fail
                c = at(p)
                p += 1
                normal = True
            elif c == _LB and at(p) == _COLON:
                startp, name = p, bytearray()
                while True:
                    if len(name) == _CHAR_CLASS_MAX_LENGTH:
                        raise _Fail
                    p += 1
                    c = at(p)
                    if c == _COLON and at(p + 1) == _RB:
                        p += 2
                        break
                    if c < ord("a") or c >= ord("z"):
                        p, c, normal = startp, _LB, True
                        break
                    name.append(c)
                if not normal:
                    cls = _CLASSES.get(bytes(name))
                    if cls is None:
                        raise _Fail
                    match(p, cls)
                    c = at(p)
                    p += 1
            elif c == _LB and at(p) == _EQ:
                startp = p
                p += 1
                c = at(p)
                if c == 0:
                    p, c, normal = startp, _LB, True
                else:
                    one = c
                    p += 1
                    c = at(p)
                    if c != _EQ or at(p + 1) != _RB:
                        p, c, normal = startp, _LB, True
                    else:
                        p += 2
                        match(p, (one,))
                        c = at(p)
                        p += 1
            elif c == 0:
                # Unterminated: the '[' is an ordinary character, the pattern goes on after it.
                if _LB in undecided:
                    hits.setdefault(-1, set()).add(_LB)
                undecided.clear()
                break
            else:
                if c == _LB and at(p) == _DOT:
                    startp, c1 = p, 0
                    while True:
                        p += 1
                        c = at(p)
                        if c == _DOT and at(p + 1) == _RB:
                            p += 2
                            break
                        if c == 0:
                            raise _Fail
                        c1 += 1
                    is_range = at(p) == _DASH and at(p + 1) != 0
                    if c1 != 1:
                        raise _Fail
                    cold = pat[startp + 1]
                    if not is_range:
                        match(p, (cold,))
                    c = at(p)
                    p += 1
                    ranged = True
                else:
                    normal = True
            if normal:
                is_range = at(p) == _DASH and at(p + 1) not in (0, _RB)
                if not is_range:
                    match(p, (c,))
                cold = c
                c = at(p)
                p += 1
                ranged = True
            if ranged:
                if c == _DASH and at(p) != _RB:
                    cend = at(p)
                    p += 1
                    if cend == _LB and at(p) == _DOT:
                        startp, c1 = p, 0
                        while True:
                            p += 1
                            c = at(p)
                            if c == _DOT and at(p + 1) == _RB:
                                p += 2
                                break
                            if c == 0:
                                raise _Fail
                            c1 += 1
                        if c1 != 1:
                            raise _Fail
                        cend = pat[startp + 1]
                    else:
                        if cend == _BSL:
                            cend = at(p)
                            p += 1
                        if cend == 0:
                            raise _Fail
                    match(p, range(cold, cend + 1))
                    c = at(p)
                    p += 1
            if c == _RB:
                end = p
                break
    except _Fail:
        undecided.clear()
    out: dict[int, set[int]] = {}
    if negate and end is not None and undecided:
        out[end] = undecided  # matched no element: go on after the ']'
    for where, got in hits.items():
        after = _UNTERMINATED if where == -1 else _skip_rest(pat, where)
        if after == _UNTERMINATED:
            # The '[' is an ordinary character after all (glibc 2.36 also when an element
            # matched first), and the pattern goes on right after it.
            if _LB in got:
                out.setdefault(i, set()).add(_LB)
        elif after is not None and not negate:
            out.setdefault(after, set()).update(got)
    return {k: frozenset(v) for k, v in out.items()}


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
