"""udev value substitutions (``%k``, ``$env{KEY}``, ``%s{attr}`` …), parsed once, expanded per device.

The table and the behaviour follow systemd 252's ``udev_event_apply_format``: ``$name`` long
forms are looked up by prefix in udev's order (so ``$sysfs{x}`` wins over ``$sys``), ``%%`` and
``$$`` are literal, attribute values lose trailing whitespace and have unsafe characters
replaced by ``_``. Unknown substitutions are parse errors here (udev's strict check), since a
devplug rule is checked up front rather than warned about at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Optional, Union

import attrs

from ..device import Device

# (long name, short char, kind) in udev's lookup order.
_MAP: tuple[tuple[str, str, str], ...] = (
    ("devnode", "N", "devnode"),
    ("tempnode", "N", "devnode"),
    ("attr", "s", "attr"),
    ("sysfs", "s", "attr"),
    ("env", "E", "env"),
    ("kernel", "k", "kernel"),
    ("number", "n", "number"),
    ("driver", "d", "driver"),
    ("devpath", "p", "devpath"),
    ("id", "b", "id"),
    ("major", "M", "major"),
    ("minor", "m", "minor"),
    ("result", "c", "result"),
    ("parent", "P", "parent"),
    ("name", "D", "name"),
    ("links", "L", "links"),
    ("root", "r", "root"),
    ("sys", "S", "sys"),
)
_BY_CHAR = {}
for _long, _short, _kind in _MAP:
    _BY_CHAR.setdefault(_short, _kind)

_SAFE = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#+-.:=@_")
_ALLOWED_INPUT = frozenset("/ $%?,")
_C_SPACE = frozenset(" \t\n\v\f\r")


class TemplateError(ValueError):
    def __init__(self, offset: int, message: str) -> None:
        super().__init__(message)
        self.offset = offset
        self.message = message


@attrs.frozen(slots=True)
class Subst:
    kind: str
    arg: str = ""


Part = Union[str, Subst]


def has_substitutions(text: str) -> bool:
    return "%" in text or "$" in text


def parse_template(text: str) -> tuple[Part, ...]:
    """Split ``text`` into literal strings and substitutions; raises :class:`TemplateError`."""
    parts: list[Part] = []
    buf: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c not in "%$":
            buf.append(c)
            i += 1
            continue
        start = i
        i += 1
        if i < n and text[i] == c:
            buf.append(c)
            i += 1
            continue
        kind = None
        if c == "$":
            for long, _short, k in _MAP:
                if text.startswith(long, i):
                    kind = k
                    i += len(long)
                    break
        elif i < n:
            kind = _BY_CHAR.get(text[i])
            if kind is not None:
                i += 1
        if kind is None:
            raise TemplateError(start, f"invalid substitution {text[start:start + 2]!r} (write {c}{c} for a literal {c!r})")
        arg = ""
        if i < n and text[i] == "{":
            end = text.find("}", i + 1)
            if end == -1:
                raise TemplateError(i, "unterminated '{' in substitution")
            arg = text[i + 1 : end]
            if not arg:
                raise TemplateError(i, "empty '{}' in substitution")
            i = end + 1
        if kind in ("attr", "env") and not arg:
            raise TemplateError(start, f"{text[start:i]!r} needs a name in braces, e.g. {c}{'env' if kind == 'env' and c == '$' else ''}{{NAME}}")
        if kind == "result":
            raise TemplateError(start, "%c/$result needs PROGRAM, which devplug does not run")
        if kind == "attr" and arg.startswith("["):
            raise TemplateError(start, "attributes of other devices ('[subsystem/kernel]attr') are not supported")
        if buf:
            parts.append("".join(buf))
            buf = []
        parts.append(Subst(kind, arg))
    if buf:
        parts.append("".join(buf))
    return tuple(parts)


def replace_chars(value: str, allow: frozenset[str] = _ALLOWED_INPUT) -> str:
    """udev_replace_chars: keep safe ASCII, ``\\x`` escapes and non-ASCII; the rest becomes ``_``."""
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c in _SAFE or c in allow:
            out.append(c)
        elif c == "\\" and i + 1 < n and value[i + 1] == "x":
            out.append("\\x")
            i += 1
        elif ord(c) > 127 and not 0xD800 <= ord(c) <= 0xDFFF:
            out.append(c)
        elif c in _C_SPACE and " " in allow:
            out.append(" ")
        else:
            out.append("_")
        i += 1
    return "".join(out)


def _strip_ws(value: str) -> str:
    return value.rstrip(" \t\n\r")


@attrs.frozen(slots=True)
class Template:
    """A parsed template; :meth:`expand` needs the device, the rule's matched ancestor and ENV."""

    source: str
    parts: tuple[Part, ...]

    @classmethod
    def parse(cls, text: str) -> "Template":
        return cls(text, parse_template(text))

    @property
    def is_literal(self) -> bool:
        return all(isinstance(p, str) for p in self.parts)

    def expand(self, dev: Device, parent: Optional[Device], env: Callable[[str], Optional[str]]) -> str:
        out: list[str] = []
        for p in self.parts:
            if isinstance(p, str):
                out.append(p)
            else:
                out.append(_subst(p, dev, parent, env))
        return "".join(out)

    def pieces(self, dev: Device, parent: Optional[Device],
               env: Callable[[str], Optional[str]]) -> Iterator[tuple[Optional[Subst], str]]:
        """Each part with its text: ``(None, literal)`` or ``(substitution, its value)``, so
        a caller can treat what the device supplied differently (``escape``)."""
        for p in self.parts:
            if isinstance(p, str):
                yield None, p
            else:
                yield p, _subst(p, dev, parent, env)


def _subst(s: Subst, dev: Device, parent: Optional[Device], env: Callable[[str], Optional[str]]) -> str:
    kind = s.kind
    if kind == "kernel":
        return dev.sysname
    if kind == "number":
        return dev.sysnum
    if kind == "devpath":
        return dev.devpath
    if kind == "devnode":
        return dev.devnode or ""
    if kind == "env":
        return env(s.arg) or ""
    if kind == "attr":
        val = dev.read_attr(s.arg)
        if val is None and parent is not None and parent is not dev:
            val = parent.read_attr(s.arg)
        if val is None:
            return ""
        return replace_chars(_strip_ws(val[:511]))
    if kind == "id":
        return parent.sysname if parent is not None else ""
    if kind == "driver":
        return (parent.driver or "") if parent is not None else ""
    if kind in ("major", "minor"):
        num = dev.properties.get("MAJOR" if kind == "major" else "MINOR")
        return num if num and num.isdigit() else "0"
    if kind == "parent":
        up = dev.parent
        node = up.devnode if up is not None else None
        return node[5:] if node and node.startswith("/dev/") else (node or "")
    if kind == "name":
        if dev.devnode:
            return dev.devnode[5:] if dev.devnode.startswith("/dev/") else dev.devnode
        return dev.sysname
    if kind == "links":
        return " ".join(link[5:] if link.startswith("/dev/") else link for link in dev.symlinks)
    if kind == "root":
        return "/dev"
    if kind == "sys":
        return dev.sys_root or "/sys"
    raise AssertionError(kind)
