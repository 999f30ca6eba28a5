"""Rules text → :class:`Rule` objects, or every error with its ``file:line:column``.

Which key takes which operator follows systemd 252's ``parse_token``; where udev would only
warn (``ENV{x}:=``, a GOTO without LABEL, a rule that assigns nothing) devplug refuses, since
a rules file is checked up front and a silent no-op is a bug in a rule. udev keys that act
(RUN, IMPORT, PROGRAM, OWNER, MODE, SYMLINK+= …) are errors: devplug only decides which
device becomes which Kubernetes resource.
"""

from __future__ import annotations

import re
from typing import Optional, Union

from .lexer import LogicalLine, Token, TokenError, logical_lines, tokenize
from .matchers import ORDER, AttrMatch, EnvMatch, ListMatch, Match, ParentGroup, TestMatch
from .model import Location, RuleError, RuleRef
from .pattern import compile_path, compile_pattern, split_alternatives
from .rule import Assign, Check, Rule
from .template import Template, TemplateError, has_substitutions
from . import validate

MATCH_OPS = ("==", "!=")
_PLAIN_MATCH_KEYS = ("ACTION", "DEVPATH", "KERNEL", "SUBSYSTEM", "DRIVER", "KERNELS", "SUBSYSTEMS", "DRIVERS",
                     "TAGS", "SYMLINK", "NAME", "TAG")
DEVICE_MATCH_KEYS = frozenset(_PLAIN_MATCH_KEYS + ("ATTR", "ATTRS", "ENV", "TEST"))
ASSIGN_KEYS = ("RESOURCE", "PERMISSIONS", "SHARE", "DEVICE_ID", "CONTAINER_PATH", "MOUNT", "CONTAINER_ENV",
               "ANNOTATION", "OPTIONS")
OPTIONS = frozenset({"symlinks", "usb_node"})
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
    "SYSCTL": "devplug does not read or write sysctls",
    "CONST": "devplug does not support CONST{}",
    "WAIT_FOR": "WAIT_FOR is obsolete and not supported",
    "WAIT_FOR_SYSFS": "WAIT_FOR_SYSFS is obsolete and not supported",
}
_NO_ASSIGN = {
    "SYMLINK": "devplug does not create symlinks (match them with SYMLINK==; expose them with OPTIONS+=\"symlinks\")",
    "NAME": "devplug does not rename devices (match with NAME==)",
    "TAG": "devplug does not tag devices (match tags with TAG==)",
    "ATTR": "devplug never writes sysfs attributes (match them with ATTR{}==)",
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


def _compile_match(tok: Token, loc: object) -> Match:
    key = tok.key
    if tok.op not in MATCH_OPS:
        raise _ops_error(tok, MATCH_OPS, "a match key")
    pattern, flip = compile_pattern(tok.value, subsystem_key=key == "SUBSYSTEM")
    want = (tok.op == "==") is not flip
    if key in ("SYMLINK", "TAG", "TAGS"):
        _no_attr(tok)
        return ListMatch(key, None, pattern, want, tok.text, loc)
    if key == "ENV":
        return EnvMatch(key, _need_attr(tok), pattern, want, tok.text, loc)
    if key in ("ATTR", "ATTRS"):
        name = _need_attr(tok)
        if name.startswith("["):
            raise _Bad(tok.attr_at, f"{key}{{[subsystem/kernel]attribute}} (another device's attribute) is not supported")
        m = AttrMatch(key, name, pattern, want, tok.text, loc)
        m.strip = _strip_flag(tok.value)
        if has_substitutions(name):
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
        if tok.value.startswith("["):
            raise _Bad(tok.value_at, "TEST with '[subsystem/kernel]' paths is not supported")
        return TestMatch(key, _template(tok.value, tok.value_at + 1), mode, tok.op == "==", tok.text, loc, pattern)
    _no_attr(tok)
    return Match(key, None, pattern, want, tok.text, loc)


def _compile_assign(tok: Token, loc) -> Assign:  # noqa: C901 - one branch per key is clearest
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
        return Assign(key, None, op, value, tok.text, loc)
    if key == "PERMISSIONS":
        _no_attr(tok)
        ops("=", ":=")
        err = validate.check_permissions(value)
        if err:
            raise _Bad(vat, err)
        return Assign(key, None, op, validate.canonical_permissions(value), tok.text, loc)
    if key == "SHARE":
        _no_attr(tok)
        ops("=", ":=")
        err = validate.check_share(value)
        if err:
            raise _Bad(vat, err)
        return Assign(key, None, op, str(int(value)), tok.text, loc)
    if key in ("DEVICE_ID", "CONTAINER_PATH"):
        _no_attr(tok)
        ops("=", ":=")
        t = _template(value, vat)
        if key == "CONTAINER_PATH" and value and not value.startswith(("/", "%", "$")):
            raise _Bad(vat, f"CONTAINER_PATH must be an absolute path, got {value!r}")
        return Assign(key, None, op, value, tok.text, loc, (t,))
    if key == "MOUNT":
        _no_attr(tok)
        ops("=", "+=", ":=")
        if not value:
            if op == "+=":
                raise _Bad(vat, "MOUNT+= needs 'host:container[:ro]'")
            return Assign(key, None, op, value, tok.text, loc)
        parts = validate.split_mount(value)
        if isinstance(parts, str):
            raise _Bad(vat, parts)
        host, container, ro = parts
        return Assign(key, None, op, value, tok.text, loc,
                      (_template(host, vat), _template(container, vat + len(host) + 1)), read_only=ro)
    if key in ("CONTAINER_ENV", "ANNOTATION"):
        name = _need_attr(tok)
        err = validate.check_env_name(name) if key == "CONTAINER_ENV" else validate.check_annotation_key(name)
        if err:
            raise _Bad(tok.attr_at, err)
        ops("=", ":=")
        return Assign(key, name, op, value, tok.text, loc, (_template(value, vat),))
    if key == "OPTIONS":
        _no_attr(tok)
        ops("=", "+=", "-=", ":=")
        opts = [o.strip() for o in value.split(",")]
        for o in opts:
            if o not in OPTIONS:
                raise _Bad(vat, f"unknown OPTIONS value {o!r} (devplug knows: {', '.join(sorted(OPTIONS))})")
        return Assign(key, None, op, value, tok.text, loc, options=frozenset(opts))
    if key == "ENV":
        name = _need_attr(tok)
        ops("==", "!=", "=", "+=")
        if name in _ENV_READONLY:
            raise _Bad(tok.attr_at, f"ENV{{{name}}} cannot be set (udev reserves it)")
        return Assign(key, name, op, value, tok.text, loc, (_template(value, vat),))
    raise AssertionError(key)


def _compile_token(tok: Token, loc) -> Compiled:
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
        return (key, tok.value)
    if key in DEVICE_MATCH_KEYS and tok.op in MATCH_OPS:
        return _compile_match(tok, loc)
    if key in _NO_ASSIGN:
        if tok.op in ("=", "+=", "-=", ":="):
            raise _Bad(tok.op_at, f"{key}{tok.op} is not supported: {_NO_ASSIGN[key]}")
    if key == "ENV" or key in ASSIGN_KEYS:
        return _compile_assign(tok, loc)
    if key in DEVICE_MATCH_KEYS:
        return _compile_match(tok, loc)  # raises the operator error
    import difflib  # only for error messages: keep it off the daemon's start-up path

    close = difflib.get_close_matches(key.upper(), KNOWN_KEYS, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise _Bad(tok.key_at, f"unknown key '{key}'{hint}")


def _index(matches: list[Match]) -> Optional[tuple[tuple[str, Optional[str], bool], frozenset[str]]]:
    best = None
    for m in matches:
        if not m.want or not m.pattern.is_literal or m.name_template is not None or m.key not in _INDEX_PREFERENCE:
            continue
        rank = _INDEX_PREFERENCE.index(m.key)
        if best is None or rank < best[0]:
            best = (rank, ((m.key, m.name, m.strip), m.pattern.literals))
    return best[1] if best else None


def _build_rule(line: LogicalLine, tokens: list[Token], errors: list[RuleError]) -> Optional[Rule]:
    matches: list[Match] = []
    assigns: list[Assign] = []
    hostpath: tuple[str, ...] = ()
    hostpath_at: Optional[Token] = None
    label = goto = None
    goto_tok: Optional[Token] = None
    n_errors = len(errors)
    for tok in tokens:
        loc = line.location(tok.key_at)
        try:
            c = _compile_token(tok, loc)
        except _Bad as bad:
            errors.append(RuleError(line.location(bad.offset), bad.message))
            continue
        if isinstance(c, Match):
            matches.append(c)
        elif isinstance(c, Assign):
            assigns.append(c)
        else:
            kind, val = c
            if kind == "HOSTPATH":
                if hostpath_at is not None:
                    errors.append(RuleError(loc, "a rule takes only one HOSTPATH (use 'a|b' for several paths)"))
                hostpath, hostpath_at = val, tok
            elif kind == "LABEL":
                if label is not None:
                    errors.append(RuleError(loc, "a rule takes only one LABEL"))
                label = val
            else:
                if goto is not None:
                    errors.append(RuleError(loc, "a rule takes only one GOTO"))
                goto, goto_tok = val, tok
    first = line.location(tokens[0].key_at) if tokens else line.location(0)
    if hostpath_at is not None:
        hp_loc = line.location(hostpath_at.key_at)
        if matches:
            keys = ", ".join(sorted({m.key for m in matches}))
            errors.append(RuleError(hp_loc, f"HOSTPATH cannot be combined with device match keys ({keys}): "
                                            "a HOSTPATH rule claims the host path itself"))
        for a in assigns:
            if a.key in ("ENV", "OPTIONS"):
                errors.append(RuleError(a.location, f"{a.key} has no meaning in a HOSTPATH rule"))
        if label is not None or goto is not None:
            errors.append(RuleError(hp_loc, "HOSTPATH rules cannot use GOTO or LABEL"))
    elif not assigns and goto is None and label is None and len(errors) == n_errors:
        errors.append(RuleError(first, "rule assigns nothing (add RESOURCE=\"...\" or another assignment)"))
    if len(errors) != n_errors:
        return None
    ref = RuleRef(line.file, line.line, line.text.strip())
    if hostpath:
        return Rule(ref=ref, assigns=tuple(assigns), hostpath=hostpath,
                    hostpath_patterns=tuple(compile_path(p) for p in hostpath))
    device_checks = sorted((m for m in matches if not m.is_parent), key=lambda m: ORDER[m.key])
    parents = tuple(m for m in matches if m.is_parent)
    checks: list[Check] = list(device_checks)
    if parents:
        pos = next((k for k, m in enumerate(device_checks) if ORDER[m.key] > ORDER["ATTRS"]), len(device_checks))
        checks.insert(pos, ParentGroup(parents))
    # ENV assignments first (later keys of the rule may use them), then the rest in order.
    ordered = [a for a in assigns if a.key == "ENV"] + [a for a in assigns if a.key != "ENV"]
    return Rule(ref=ref, checks=tuple(checks), matches=tuple(matches), assigns=tuple(ordered), label=label,
                goto=goto, goto_location=line.location(goto_tok.key_at) if goto_tok else None,
                index=_index(matches))


def parse_rules(text: str, filename: str = "<string>") -> tuple[list[Rule], list[RuleError]]:
    """Parse one file's text: its rules and every error found (rules are dropped on errors)."""
    lines, lex_errors = logical_lines(text, filename)
    errors = [RuleError(e.location, e.message) for e in lex_errors]
    rules: list[Rule] = []
    for line in lines:
        try:
            tokens = tokenize(line.text)
        except TokenError as exc:
            errors.append(RuleError(line.location(exc.offset), exc.message))
            continue
        rule = _build_rule(line, tokens, errors)
        if rule is not None:
            rules.append(rule)
    # GOTO must find its LABEL further down in the same file (udev: else the GOTO is ignored).
    for k, rule in enumerate(rules):
        if rule.goto is not None and not any(r.label == rule.goto for r in rules[k + 1 :]):
            errors.append(RuleError(rule.goto_location or Location(rule.ref.file, rule.ref.line),
                                    f"GOTO=\"{rule.goto}\" has no LABEL=\"{rule.goto}\" after it in this file"))
    errors.sort(key=lambda e: (e.location.line, e.location.column))
    return rules, errors
