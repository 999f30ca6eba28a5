"""glibc ``fnmatch``'s bracket expressions, byte for byte (the corners live here).

What one ``[...]`` at a pattern position does with each byte: to which pattern position it
continues. glibc's parser decides where a bracket ends while it matches, so an odd bracket
(``[a-``, ``[[:x:]]``, an unterminated one) can continue at different positions for
different bytes; ``fnmatch.py`` builds its NFA from these answers.
"""

from __future__ import annotations

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
