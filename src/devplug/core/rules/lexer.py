"""Rules text → logical lines → ``KEY{attr}OP"value"`` tokens, with exact source positions.

Line handling is udev's (``udev_rules_parse_file``): leading whitespace is skipped, a line
whose first non-blank character is ``#`` is a comment (also in the middle of a continued
rule), a trailing ``\\`` joins the next line (the next line's leading blanks dropped).
Token syntax is udev's ``parse_line``/``udev_rule_parse_value``: a key ends at blank, ``=``,
``{`` or an operator; ``{attr}`` runs to the first ``}``; values are double-quoted, ``\\"``
is a quote, other backslashes stay as they are, and ``e"..."`` strings take C escapes.
devplug is stricter than udev in one place: tokens must be separated by a comma.
"""

from __future__ import annotations

import bisect
import re
import sys
from collections.abc import Iterator
from typing import Optional

import attrs

from .model import Location

WHITESPACE = " \t\n\r"
OPERATORS = ("==", "!=", "+=", "-=", ":=", "=")
_LINE_END = re.compile(r"\r\n|\r|\n")


class LogicalLine:
    """One rule's text, joined from its physical lines; ``_starts`` maps offsets back.

    A plain slotted class: one is made per rule, so its construction is on the hot path.
    """

    __slots__ = ("text", "file", "line", "_starts", "_origins")

    def __init__(self, text: str, file: str, line: int, starts: tuple[int, ...],
                 origins: tuple[tuple[int, int], ...]) -> None:
        self.text = text
        self.file = file
        self.line = line  # first physical line
        self._starts = starts  # logical offset where each segment starts
        self._origins = origins  # (physical line, 0-based column) of each segment

    def place(self, offset: int) -> tuple[int, int]:
        """(physical line, 1-based column) of a logical offset, without building a Location."""
        k = max(0, bisect.bisect_right(self._starts, offset) - 1) if len(self._starts) > 1 else 0
        line, col = self._origins[k]
        return line, col + (offset - self._starts[k]) + 1

    def location(self, offset: int) -> Location:
        k = max(0, bisect.bisect_right(self._starts, offset) - 1)
        line, col = self._origins[k]
        return Location(self.file, line, col + (offset - self._starts[k]) + 1)


@attrs.frozen(slots=True)
class LexError:
    location: Location
    message: str


def iter_logical_lines(text: str, filename: str, errors: list[LexError]) -> Iterator[LogicalLine]:
    """The rules of one file, one at a time (a large file is never held twice); lexical
    errors are appended to ``errors``."""
    pending: Optional[tuple[list[str], list[int], list[tuple[int, int]], int]] = None
    lineno = 0
    physical = _LINE_END.split(text)
    if physical and physical[-1] == "":
        physical.pop()
    for raw in physical:
        lineno += 1
        col = len(raw) - len(raw.lstrip(WHITESPACE))
        body = raw[col:] if col else raw
        if body.startswith("#"):
            continue
        if pending is None:
            if not body:
                continue
            if not body.endswith("\\"):  # the common case: one physical line
                yield LogicalLine(body, filename, lineno, (0,), ((lineno, col),))
                continue
            pending = ([], [], [], lineno)
        parts, starts, origins, first = pending
        starts.append(sum(len(p) for p in parts))
        origins.append((lineno, col))
        if body.endswith("\\"):
            parts.append(body[:-1])
            continue
        parts.append(body)
        joined = "".join(parts)
        if joined.strip(WHITESPACE):
            yield LogicalLine(joined, filename, first, tuple(starts), tuple(origins))
        pending = None
    if pending is not None:
        errors.append(LexError(Location(filename, lineno, max(1, len(physical[-1]))),
                               "line continuation ('\\' at end of line) at end of file"))


def logical_lines(text: str, filename: str) -> tuple[list[LogicalLine], list[LexError]]:
    errors: list[LexError] = []
    lines = list(iter_logical_lines(text, filename, errors))
    return lines, errors


class Token:
    """One ``KEY{attr}OP"value"`` with its offsets in the logical line (plain slotted class:
    built once per distinct token text)."""

    __slots__ = ("key", "attr", "op", "value", "text", "key_at", "attr_at", "op_at", "value_at")

    def __init__(self, key: str, attr: Optional[str], op: str, value: str, text: str, key_at: int,
                 attr_at: int, op_at: int, value_at: int) -> None:
        self.key = key
        self.attr = attr
        self.op = op
        self.value = value
        self.text = text  # the token as written, for messages
        self.key_at = key_at
        self.attr_at = attr_at
        self.op_at = op_at
        self.value_at = value_at


class TokenError(Exception):
    def __init__(self, offset: int, message: str) -> None:
        super().__init__(message)
        self.offset = offset
        self.message = message


_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
                   "\\": "\\", '"': '"', "'": "'", "s": " "}


def c_unescape(s: str, base: int) -> str:
    """systemd's ``cunescape`` (no relaxed mode): invalid escapes and NUL are errors."""
    out: list[str] = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        if i + 1 >= n:
            raise TokenError(base + i, "dangling backslash in e\"...\" string")
        e = s[i + 1]
        if e in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[e])
            i += 2
            continue
        digits = {"x": 2, "u": 4, "U": 8}.get(e)
        if digits is not None:
            hexs = s[i + 2 : i + 2 + digits]
            if len(hexs) != digits or not all(h in "0123456789abcdefABCDEF" for h in hexs):
                raise TokenError(base + i, f"invalid escape '\\{e}{hexs}': needs {digits} hex digits")
            cp = int(hexs, 16)
            if cp == 0 or cp > 0x10FFFF or (e != "x" and 0xD800 <= cp <= 0xDFFF):
                raise TokenError(base + i, f"invalid escape '\\{e}{hexs}'")
            out.append(chr(cp))
            i += 2 + digits
            continue
        if e in "01234567":
            octs = s[i + 1 : i + 4]
            if len(octs) != 3 or not all(o in "01234567" for o in octs) or int(octs, 8) in (0,) or int(octs, 8) > 0o377:
                raise TokenError(base + i, f"invalid escape '\\{octs}': needs 3 octal digits, not NUL")
            out.append(chr(int(octs, 8)))
            i += 4
            continue
        raise TokenError(base + i, f"invalid escape '\\{e}' in e\"...\" string")
    return "".join(out)


def _skip(text: str, i: int, chars: str) -> int:
    n = len(text)
    while i < n and text[i] in chars:
        i += 1
    return i


def _read_value(text: str, i: int) -> tuple[str, int]:
    """Parse ``"..."`` or ``e"..."`` at ``i``; returns the value and the index after it."""
    n = len(text)
    escaped = i < n and text[i] == "e"
    q = i + escaped
    if q >= n or text[q] != '"':
        raise TokenError(i, 'expected a double-quoted value ("...")')
    j = q + 1
    if not escaped:
        out: list[str] = []
        while True:
            if j >= n:
                raise TokenError(q, "unterminated quoted value")
            c = text[j]
            if c == '"':
                break
            if c == "\\" and j + 1 < n and text[j + 1] == '"':
                j += 1
                c = '"'
            out.append(c)
            j += 1
        return "".join(out), j + 1
    while True:
        if j >= n:
            raise TokenError(q, "unterminated quoted value")
        c = text[j]
        if c == '"':
            break
        if c == "\\":
            j += 1
            if j >= n:
                raise TokenError(q, "unterminated quoted value")
        j += 1
    return c_unescape(text[q + 1 : j], q + 1), j + 1


# One token of the plain shape nearly every rule uses: KEY[{attr}]OP"value" without
# backslashes or e"..." strings; any other shape takes the exact slow path below.
_FAST_TOKEN = re.compile(r'([ \t\n\r,]*)([A-Za-z0-9_]+)(?:\{([^}]*)\})?[ \t\n\r]*(==|!=|\+=|-=|:=|=)[ \t\n\r]*"([^"\\]*)"')
_TRAILER = re.compile(r"[ \t\n\r,]*")


def _tokenize_fast(text: str) -> Optional[list[Token]]:
    tokens: list[Token] = []
    pos = 0
    n = len(text)
    match = _FAST_TOKEN.match
    while True:
        m = match(text, pos)
        if m is None:
            end = _TRAILER.match(text, pos)
            return tokens if end is not None and end.end() == n and tokens else None
        if tokens and "," not in m.group(1):
            return None  # the slow path reports the missing comma
        key_at = m.start(2)
        attr = m.group(3)
        attr_at = m.start(3) if attr is not None else m.end(2)
        pos = m.end()
        tokens.append(Token(m.group(2), attr, m.group(4), m.group(5), text[key_at:pos], key_at, attr_at,
                            m.start(4), m.start(5) - 1))


def token_texts(text: str) -> Optional[list[tuple[str, int, re.Match[str]]]]:
    """Fast path for plain lines: each token's text and offset, without building tokens
    (the parser compiles each distinct token text once); None when the line needs
    :func:`tokenize`."""
    out: list[tuple[str, int, re.Match[str]]] = []
    pos = 0
    n = len(text)
    match = _FAST_TOKEN.match
    while True:
        m = match(text, pos)
        if m is None:
            end = _TRAILER.match(text, pos)
            return out if end is not None and end.end() == n and out else None
        if out and "," not in m.group(1):
            return None
        key_at = m.start(2)
        pos = m.end()
        out.append((text[key_at:pos], key_at, m))


def token_at(text: str, m: re.Match[str]) -> Token:
    """The token of one :func:`token_texts` match."""
    key_at = m.start(2)
    attr = m.group(3)
    attr_at = m.start(3) if attr is not None else m.end(2)
    return Token(sys.intern(m.group(2)), attr, sys.intern(m.group(4)), m.group(5), text[key_at:m.end()], key_at,
                 attr_at, m.start(4), m.start(5) - 1)


def tokenize(text: str) -> list[Token]:
    """All tokens of one logical line; raises :class:`TokenError` at the first syntax error."""
    fast = _tokenize_fast(text)
    if fast is not None:
        return fast
    return _tokenize_slow(text)


def _tokenize_slow(text: str) -> list[Token]:
    tokens: list[Token] = []
    n = len(text)
    i = 0
    while True:
        before = i
        i = _skip(text, i, WHITESPACE + ",")
        if i >= n:
            return tokens
        if tokens and "," not in text[before:i]:
            raise TokenError(i, "missing comma between key-value pairs")
        key_at = i
        while True:
            if i >= n:
                raise TokenError(key_at, f"expected an operator after {text[key_at:i]!r}")
            c = text[i]
            if c in WHITESPACE or c in "={":
                break
            if c in "+-!:" and i + 1 < n and text[i + 1] == "=":
                break
            i += 1
        key = sys.intern(text[key_at:i])
        if not key:
            raise TokenError(key_at, "missing key before operator")
        attr: Optional[str] = None
        attr_at = i
        if i < n and text[i] == "{":
            attr_at = i + 1
            end = text.find("}", i + 1)
            if end == -1:
                raise TokenError(i, "unterminated '{' (missing '}')")
            attr = text[i + 1 : end]
            i = end + 1
        i = _skip(text, i, WHITESPACE)
        op_at = i
        op = next((o for o in OPERATORS if text.startswith(o, i)), None)
        if op is None:
            raise TokenError(i, f"expected an operator (==, !=, =, +=, -=, :=) after {text[key_at:i].strip()!r}")
        i = _skip(text, i + len(op), WHITESPACE)
        value_at = i
        value, i = _read_value(text, i)
        tokens.append(Token(key, attr, op, value, text[key_at:i], key_at, attr_at, op_at, value_at))
