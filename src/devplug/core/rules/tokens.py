"""One token of a rule (``KEY{attr}OP"value"``) → a compiled match key or assignment.

Which key takes which operator follows systemd 252's ``parse_token``; udev keys that act
(RUN, IMPORT, PROGRAM, OWNER, MODE, SYMLINK+= …) are errors here: devplug only decides
which device becomes which Kubernetes resource. A compiled token depends only on its text,
so the parser compiles each distinct token of a rules set once.
"""

from __future__ import annotations

import re
import sys
from typing import Optional, Union

from .host import split_subsys_kernel
from .lexer import Token
from .matchers import AttrMatch, ConstMatch, EnvMatch, ListMatch, Match, SysctlMatch, TestMatch
from .model import OPTIONS
from .pattern import compile_pattern, split_alternatives
from .rule import Assign
from .template import Template, TemplateError, has_substitutions
from . import validate

MATCH_OPS = ("==", "!=")
_PLAIN_MATCH_KEYS = ("ACTION", "DEVPATH", "KERNEL", "SUBSYSTEM", "DRIVER", "KERNELS", "SUBSYSTEMS", "DRIVERS",
                     "TAGS", "SYMLINK", "NAME", "TAG")
DEVICE_MATCH_KEYS = frozenset(_PLAIN_MATCH_KEYS + ("ATTR", "ATTRS", "ENV", "TEST", "CONST", "SYSCTL"))
ASSIGN_KEYS = ("RESOURCE", "PERMISSIONS", "SHARE", "DEVICE_ID", "CONTAINER_PATH", "MOUNT", "CONTAINER_ENV",
               "ANNOTATION", "OPTIONS")
KNOWN_KEYS = tuple(sorted(DEVICE_MATCH_KEYS | set(ASSIGN_KEYS) | {"HOSTPATH", "GOTO", "LABEL"}))

_UNSUPPORTED = {
    "RUN": "devplug never runs programs",
    "PROGRAM": "devplug never runs programs (match on ENV{} properties udev already set)",
    "RESULT": "devplug never runs programs, so there is no PROGRAM result",
    "IMPORT": "devplug does not import properties (udev already did: match them with ENV{})",
    "OWNER": "node ownership is udev's job; devplug sets the container's access with PERMISSIONS",
    "GROUP": "node ownership is udev's job; devplug sets the container's access with PERMISSIONS",
    "MODE": "node modes are udev's job; devplug sets the container's access with PERMISSIONS",
    "SECLABEL": "security labels are udev's job",
    "WAIT_FOR": "WAIT_FOR is obsolete and not supported",
    "WAIT_FOR_SYSFS": "WAIT_FOR_SYSFS is obsolete and not supported",
}
_NO_ASSIGN = {
    "SYMLINK": "devplug does not create symlinks (match them with SYMLINK==; expose them with OPTIONS+=\"symlinks\")",
    "NAME": "devplug does not rename devices (match with NAME==)",
    "TAG": "devplug does not tag devices (match tags with TAG==)",
    "ATTR": "devplug never writes sysfs attributes (match them with ATTR{}==)",
    "SYSCTL": "devplug never writes sysctls (match them with SYSCTL{}==)",
    "CONST": "CONST{} is a match key (==, !=)",
}
# udev refuses to let rules set these (parse_token, ENV).
_ENV_READONLY = frozenset({"ACTION", "DEVLINKS", "DEVNAME", "DEVPATH", "DEVTYPE", "DRIVER", "IFINDEX", "MAJOR",
                           "MINOR", "SEQNUM", "SUBSYSTEM", "TAGS"})
_OCTAL = re.compile(r"[0-7]+")
# Which literal match key is the best quick filter (more selective first).
_INDEX_PREFERENCE = ("ATTRS", "ATTR", "KERNEL", "DRIVERS", "DRIVER", "KERNELS", "SUBSYSTEMS", "SUBSYSTEM")


class _Bad(Exception):
    def __init__(self, offset: int, message: str) -> None:
        super().__init__(message)
        self.offset = offset
        self.message = message


Compiled = Union[Match, Assign, tuple]


def _template(text: str, base: int) -> Template:
    try:
        return Template.parse(text)
    except TemplateError as exc:
        raise _Bad(base + exc.offset, exc.message) from None


def _ops_error(tok: Token, allowed: tuple[str, ...], what: str) -> _Bad:
    ops = ", ".join(allowed)
    return _Bad(tok.op_at, f"invalid operator '{tok.op}' for {tok.key} ({what}: use {ops})")


def _no_attr(tok: Token) -> None:
    if tok.attr is not None:
        raise _Bad(tok.attr_at - 1, f"{tok.key} takes no {{attribute}}")


def _need_attr(tok: Token) -> str:
    if not tok.attr:
        raise _Bad(tok.attr_at if tok.attr is not None else tok.op_at,
                   f"{tok.key} needs a name in braces, e.g. {tok.key}{{name}}")
    return tok.attr


def _strip_flag(value: str) -> bool:
    alts, _ = split_alternatives(value)
    first = alts[0] if alts else ""
    return bool(first) and first[-1] not in " \t\n\v\f\r"


def _compile_match(tok: Token) -> Match:
    key = tok.key
    if tok.op not in MATCH_OPS:
        raise _ops_error(tok, MATCH_OPS, "a match key")
    pattern, flip = compile_pattern(tok.value, subsystem_key=key == "SUBSYSTEM")
    want = (tok.op == "==") is not flip
    if key in ("SYMLINK", "TAG", "TAGS"):
        _no_attr(tok)
        return ListMatch(key, None, pattern, want, tok.text)
    if key == "ENV":
        return EnvMatch(key, _need_attr(tok), pattern, want, tok.text)
    if key == "CONST":
        name = _need_attr(tok)
        if name not in ("arch", "virt"):
            raise _Bad(tok.attr_at, f"CONST{{{name}}}: udev knows CONST{{arch}} and CONST{{virt}}")
        return ConstMatch(key, name, pattern, want, tok.text)
    if key == "SYSCTL":
        m = SysctlMatch(key, _need_attr(tok), pattern, want, tok.text)
        if has_substitutions(m.name):  # type: ignore[arg-type]
            m.name_template = _template(m.name, tok.attr_at)  # type: ignore[arg-type]
        return m
    if key in ("ATTR", "ATTRS"):
        name = _need_attr(tok)
        if name.startswith("[") and (split_subsys_kernel(name) or (None, None, None))[2] is None:
            raise _Bad(tok.attr_at, f"{key}{{{name}}}: another device's attribute is written "
                                    "[subsystem/sysname]attribute")
        m = AttrMatch(key, name, pattern, want, tok.text)
        m.strip = _strip_flag(tok.value)
        if has_substitutions(name) and not name.startswith("["):
            m.name_template = _template(name, tok.attr_at)
        return m
    if key == "TEST":
        mode: Optional[int] = None
        if tok.attr:
            if not _OCTAL.fullmatch(tok.attr) or int(tok.attr, 8) > 0o7777:
                raise _Bad(tok.attr_at, f"TEST{{mode}} needs an octal mode such as 0111, got {tok.attr!r}")
            mode = int(tok.attr, 8)
        if not tok.value:
            raise _Bad(tok.value_at, "TEST needs a path")
        return TestMatch(key, _template(tok.value, tok.value_at + 1), mode, tok.op == "==", tok.text, pattern)
    _no_attr(tok)
    return Match(key, None, pattern, want, tok.text)


def _compile_assign(tok: Token) -> Assign:  # noqa: C901 - one branch per key is clearest
    key, op, value = tok.key, tok.op, tok.value
    vat = tok.value_at + 1  # first character inside the quotes (e"..." is one more, close enough)

    def ops(*allowed: str) -> None:
        if op not in allowed:
            raise _ops_error(tok, allowed, "an assignment key" if "==" not in allowed else "this key")

    if key == "RESOURCE":
        _no_attr(tok)
        ops("=", ":=")
        if value:
            err = validate.check_resource(value)
            if err:
                raise _Bad(vat, err)
        return Assign(key, None, op, value, tok.text)
    if key == "PERMISSIONS":
        _no_attr(tok)
        ops("=", ":=")
        err = validate.check_permissions(value)
        if err:
            raise _Bad(vat, err)
        return Assign(key, None, op, validate.canonical_permissions(value), tok.text)
    if key == "SHARE":
        _no_attr(tok)
        ops("=", ":=")
        err = validate.check_share(value)
        if err:
            raise _Bad(vat, err)
        return Assign(key, None, op, str(int(value)), tok.text)
    if key in ("DEVICE_ID", "CONTAINER_PATH"):
        _no_attr(tok)
        ops("=", ":=")
        t = _template(value, vat)
        if key == "CONTAINER_PATH" and value and not value.startswith(("/", "%", "$")):
            raise _Bad(vat, f"CONTAINER_PATH must be an absolute path, got {value!r}")
        return Assign(key, None, op, value, tok.text, (t,))
    if key == "MOUNT":
        _no_attr(tok)
        ops("=", "+=", ":=")
        if not value:
            if op == "+=":
                raise _Bad(vat, "MOUNT+= needs 'host:container[:ro]'")
            return Assign(key, None, op, value, tok.text)
        parts = validate.split_mount(value)
        if isinstance(parts, str):
            raise _Bad(vat, parts)
        host, container, ro = parts
        return Assign(key, None, op, value, tok.text,
                      (_template(host, vat), _template(container, vat + len(host) + 1)), read_only=ro)
    if key in ("CONTAINER_ENV", "ANNOTATION"):
        name = _need_attr(tok)
        err = validate.check_env_name(name) if key == "CONTAINER_ENV" else validate.check_annotation_key(name)
        if err:
            raise _Bad(tok.attr_at, err)
        ops("=", ":=")
        return Assign(key, name, op, value, tok.text, (_template(value, vat),))
    if key == "OPTIONS":
        _no_attr(tok)
        ops("=", "+=", "-=", ":=")
        opts = [o.strip() for o in value.split(",")]
        for o in opts:
            if o not in OPTIONS:
                raise _Bad(vat, f"unknown OPTIONS value {o!r} (devplug knows: {', '.join(sorted(OPTIONS))})")
        return Assign(key, None, op, value, tok.text, options=frozenset(opts))
    if key == "ENV":
        name = _need_attr(tok)
        ops("==", "!=", "=", "+=")
        if name in _ENV_READONLY:
            raise _Bad(tok.attr_at, f"ENV{{{name}}} cannot be set (udev reserves it)")
        return Assign(key, name, op, value, tok.text, (_template(value, vat),))
    raise AssertionError(key)


def _compile_token(tok: Token) -> Compiled:
    key = tok.key
    if key in _UNSUPPORTED:
        raise _Bad(tok.key_at, f"udev key {key} is not supported: {_UNSUPPORTED[key]}")
    if key == "HOSTPATH":
        _no_attr(tok)
        if tok.op != "==":
            raise _ops_error(tok, ("==",), "a static host path match")
        alts, empty = split_alternatives(tok.value)
        if empty or not alts:
            raise _Bad(tok.value_at + 1, "HOSTPATH needs one or more absolute paths or globs, without empty '|' alternatives")
        for a in alts:
            if not a.startswith("/"):
                raise _Bad(tok.value_at + 1, f"HOSTPATH {a!r} is not an absolute path")
        return ("HOSTPATH", alts)
    if key in ("GOTO", "LABEL"):
        _no_attr(tok)
        if tok.op != "=":
            raise _ops_error(tok, ("=",), "a jump key")
        if not tok.value:
            raise _Bad(tok.value_at, f"{key} needs a label name")
        return (key, sys.intern(tok.value))
    if key in DEVICE_MATCH_KEYS and tok.op in MATCH_OPS:
        return _compile_match(tok)
    if key in _NO_ASSIGN:
        if tok.op in ("=", "+=", "-=", ":="):
            raise _Bad(tok.op_at, f"{key}{tok.op} is not supported: {_NO_ASSIGN[key]}")
    if key == "ENV" or key in ASSIGN_KEYS:
        return _compile_assign(tok)
    if key in DEVICE_MATCH_KEYS:
        return _compile_match(tok)  # raises the operator error
    import difflib  # only for error messages: keep it off the daemon's start-up path

    close = difflib.get_close_matches(key.upper(), KNOWN_KEYS, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise _Bad(tok.key_at, f"unknown key '{key}'{hint}")
