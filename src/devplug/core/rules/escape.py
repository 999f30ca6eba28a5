"""Expanding assignment templates with device strings that may be hostile. Pure.

A USB device picks its own serial, product and manufacturer strings, so every value a
template takes from a device (``%s{serial}``, ``$env{ID_MODEL}``, ``%k``, ``$id`` …) is
untrusted. Matching keeps udev's semantics (``template.Template.expand``); what devplug
hands a container goes through this module instead:

* **Paths** (``CONTAINER_PATH``, both sides of ``MOUNT``): a device-derived value is escaped
  as udev escapes the names it builds from device strings (``udev_replace_chars`` with no
  extra allowed character: ASCII letters, digits, ``#+-.:=@_``, ``\\x`` escapes and valid
  UTF-8 stay, anything else, ``/`` and whitespace included, becomes ``_``), so it can never
  add a path separator. Values that are kernel or host paths (``$devnode``, ``$devpath``,
  ``$links``, ``%P``, ``%D``, ``$root``, ``$sys``) keep their ``/`` but are refused with a
  control character or invalid UTF-8. A substitution that is empty, or makes a ``.``/``..``
  component, is an error; the result is normalized and must stay under the literal prefix
  the rule author wrote (the directory before the first substitution; ``/dev`` for a
  ``CONTAINER_PATH`` whose literal text names no directory).
* **Values** (``CONTAINER_ENV``, ``ANNOTATION``): never an error; control characters and
  invalid UTF-8 (surrogate escapes from ``surrogateescape`` decoding) become ``\\xNN``, as
  udev encodes unsafe bytes, and the value is cut to 511 bytes (udev's limit for a property
  value), never inside a character or an escape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Optional

from ..device import Device
from .template import Subst, Template, replace_chars

#: Substitutions whose value is a kernel or host path: ``/`` in them is structure.
PATH_KINDS = frozenset({"devnode", "devpath", "name", "parent", "links", "root", "sys"})
#: The most bytes of an environment or annotation value (udev refuses longer property values).
MAX_VALUE_BYTES = 511
#: Linux limits: bytes per path component (NAME_MAX) and per path (PATH_MAX less the NUL).
MAX_COMPONENT_BYTES = 255
MAX_PATH_BYTES = 4095
#: Where a ``CONTAINER_PATH`` goes when its literal text names no directory.
CONTAINER_ROOT = "/dev"

_NO_EXTRA = frozenset()
_SHORT = {"devnode": "N", "attr": "s", "env": "E", "kernel": "k", "number": "n", "driver": "d",
          "devpath": "p", "id": "b", "major": "M", "minor": "m", "result": "c", "parent": "P",
          "name": "D", "links": "L", "root": "r", "sys": "S"}

Env = Callable[[str], Optional[str]]


class SubstitutionError(ValueError):
    """A template that cannot give a safe path for this device; ``str()`` says why."""


def describe(s: Subst) -> str:
    """A substitution as a rule author writes it: ``%s{serial}``."""
    return f"%{_SHORT[s.kind]}" + (f"{{{s.arg}}}" if s.arg else "")


def _bad_char(c: str) -> bool:
    o = ord(c)
    return o < 0x20 or 0x7F <= o <= 0x9F or 0xD800 <= o <= 0xDFFF


def normalize(path: str) -> str:
    """Lexical normalization of an absolute path: no empty, ``.`` or ``..`` component
    (``..`` at the root stays at the root), no trailing ``/``."""
    out: list[str] = []
    for comp in path.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if out:
                out.pop()
            continue
        out.append(comp)
    return "/" + "/".join(out)


def is_under(path: str, prefix: str) -> bool:
    """``path`` is ``prefix`` or below it (both normalized)."""
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


def literal_prefix(template: Template, default_root: Optional[str] = None) -> str:
    """The directory a template's result must stay under: its normalized literal text up
    to the last ``/`` before the first substitution; the whole path when it has none.

    ``default_root`` replaces a bare ``/`` for a template with substitutions (a
    ``CONTAINER_PATH`` such as ``%N`` or ``/%k`` stays under ``/dev``)."""
    head: list[str] = []
    for p in template.parts:
        if not isinstance(p, str):
            break
        head.append(p)
    else:
        return normalize("".join(head))
    text = "".join(head)
    directory = normalize(text[: text.rfind("/") + 1]) if "/" in text else "/"
    if directory == "/" and default_root:
        return default_root
    return directory


def _piece(p: Subst, value: str) -> str:
    if p.kind in PATH_KINDS:
        if any(_bad_char(c) for c in value):
            raise SubstitutionError(f"{describe(p)} has a control character or invalid UTF-8: {value!r}")
        return value
    return "".join("_" if _bad_char(c) else c for c in replace_chars(value, _NO_EXTRA))


def expand_path(template: Template, dev: Device, parent: Optional[Device], env: Env, *,
                default_root: Optional[str] = None) -> str:
    """The normalized absolute path a path template gives for ``dev``; raises
    :class:`SubstitutionError` when it cannot be made safe (see the module docstring)."""
    text: list[str] = []
    spans: list[tuple[int, int, Subst]] = []  # where each substitution landed
    at = 0
    for p, value in template.pieces(dev, parent, env):
        if p is not None:
            if not value:
                raise SubstitutionError(f"{describe(p)} is empty")
            value = _piece(p, value)
            spans.append((at, at + len(value), p))
        text.append(value)
        at += len(value)
    raw = "".join(text)
    if any(_bad_char(c) for c in raw):
        raise SubstitutionError(f"path {raw!r} has a control character or invalid UTF-8")
    if not raw.startswith("/"):
        raise SubstitutionError(f"path {raw!r} is not absolute")
    start = 0
    for comp in raw.split("/"):
        end = start + len(comp)
        if comp in (".", ".."):
            for s_start, s_end, p in spans:
                if s_start < end and start < s_end:
                    raise SubstitutionError(f"{describe(p)} makes the path component {comp!r}")
        if len(comp.encode()) > MAX_COMPONENT_BYTES:
            raise SubstitutionError(f"a path component is longer than {MAX_COMPONENT_BYTES} bytes")
        start = end + 1
    path = normalize(raw)
    if len(path.encode()) > MAX_PATH_BYTES:
        raise SubstitutionError(f"path is longer than {MAX_PATH_BYTES} bytes")
    prefix = literal_prefix(template, default_root)
    if not is_under(path, prefix):
        raise SubstitutionError(f"path {path!r} is not under {prefix!r}")
    return path


def _escaped(c: str) -> str:
    o = ord(c)
    if 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{o - 0xDC00:02x}"
    if 0xD800 <= o <= 0xDFFF:
        return "\\x3f"  # a lone surrogate no decoder produces: no byte to show, so '?'
    return "".join(f"\\x{b:02x}" for b in c.encode())


def safe_value(value: str, limit: Optional[int] = MAX_VALUE_BYTES) -> str:
    """An environment or annotation value that any runtime and any RPC accepts (with
    ``limit=None``: any string made safe to log, whole)."""
    out: list[str] = []
    size = 0
    for c in value:
        piece = _escaped(c) if _bad_char(c) else c
        n = len(piece.encode())
        if limit is not None and size + n > limit:
            break
        out.append(piece)
        size += n
    return "".join(out)


def expand_value(template: Template, dev: Device, parent: Optional[Device], env: Env) -> str:
    """An environment or annotation value: udev's expansion, made safe by :func:`safe_value`."""
    return safe_value(template.expand(dev, parent, env))


def safe_paths(paths: Iterable[str], root: str = "/") -> Optional[str]:
    """Why a kernel- or host-given path (devnode, symlink, USB node) cannot be handed to a
    container, or ``None`` when every one is a clean absolute path under ``root``."""
    for path in paths:
        if any(_bad_char(c) for c in path):
            return f"path {path!r} has a control character or invalid UTF-8"
        if not path.startswith("/") or normalize(path) != path or path == "/":
            return f"path {path!r} is not a normalized absolute path"
        if not is_under(path, root):
            return f"path {path!r} is not under {root}"
    return None
