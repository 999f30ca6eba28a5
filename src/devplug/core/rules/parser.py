"""Rules text → :class:`Rule` objects, or every error with its ``file:line:column``.

Which key takes which operator follows systemd 252's ``parse_token``; where udev would only
warn (``ENV{x}:=``, a GOTO without LABEL, a rule that assigns nothing) devplug refuses, since
a rules file is checked up front and a silent no-op is a bug in a rule. udev keys that act
(RUN, IMPORT, PROGRAM, OWNER, MODE, SYMLINK+= …) are errors: devplug only decides which
device becomes which Kubernetes resource.
"""

from __future__ import annotations

import re
import sys
from typing import Optional, Union

from .lexer import LogicalLine, Token, TokenError, iter_logical_lines, token_at, token_texts, tokenize
from .host import split_subsys_kernel
from .matchers import ORDER, AttrMatch, ConstMatch, EnvMatch, ListMatch, Match, ParentGroup, SysctlMatch, TestMatch
from .model import Location, RuleError, RuleRef
from .pattern import compile_path, compile_pattern, split_alternatives
from .rule import Assign, Check, Rule
from .template import Template, TemplateError, has_substitutions
from . import validate

MATCH_OPS = ("==", "!=")
_PLAIN_MATCH_KEYS = ("ACTION", "DEVPATH", "KERNEL", "SUBSYSTEM", "DRIVER", "KERNELS", "SUBSYSTEMS", "DRIVERS",
                     "TAGS", "SYMLINK", "NAME", "TAG")
DEVICE_MATCH_KEYS = frozenset(_PLAIN_MATCH_KEYS + ("ATTR", "ATTRS", "ENV", "TEST", "CONST", "SYSCTL"))
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


def _index(matches: list[Match]) -> Optional[Match]:
    best = None
    for m in matches:
        if not m.want or not m.pattern.is_literal or m.name_template is not None or m.key not in _INDEX_PREFERENCE:
            continue
        if m.name is not None and m.name.startswith("["):
            continue  # another device's attribute: not a fact of this device's chain
        rank = _INDEX_PREFERENCE.index(m.key)
        if best is None or rank < best[0]:
            best = (rank, m)
    return best[1] if best else None


class _Parse:
    """One parse: compiled tokens and the tuples rules are made of, shared by equal text.

    A token's compiled form depends only on its text (positions live in the rule's
    :class:`RuleRef` and in errors), so 50,000 rules that repeat ``SUBSYSTEM=="tty"`` hold
    one Match for it. Errors are never cached: each bad token reports its own location.
    """

    def __init__(self) -> None:
        self.tokens: dict[str, Compiled] = {}
        self.tuples: dict[tuple[int, ...], tuple] = {}
        self.groups: dict[tuple[int, ...], ParentGroup] = {}
        self.derived: dict[tuple[int, ...], tuple] = {}
        self.gotos: list[tuple[int, str, tuple[int, int], str]] = []  # (rule's line, file, place, label)

    def compile(self, tok: Token) -> Compiled:
        c = self.tokens.get(tok.text)
        if c is None:
            c = self.tokens[tok.text] = _compile_token(tok)
        return c

    def share(self, items: list) -> tuple:
        key = tuple(map(id, items))
        t = self.tuples.get(key)
        if t is None:
            t = self.tuples[key] = tuple(items)
        return t

    def checks(self, matches: list[Match]) -> tuple[tuple[Match, ...], tuple[Check, ...], Optional[Match]]:
        """A rule's match keys as shared: source order, udev's evaluation order, index key."""
        key = tuple(map(id, matches))
        got = self.derived.get(key)
        if got is None:
            if all(not m.is_parent for m in matches):
                checks: list[Check] = sorted(matches, key=_order)
            else:
                checks = sorted((m for m in matches if not m.is_parent), key=_order)
                pos = next((k for k, m in enumerate(checks) if ORDER[m.key] > ORDER["ATTRS"]), len(checks))
                checks.insert(pos, self.group([m for m in matches if m.is_parent]))
            shared = tuple(matches)
            ordered = shared if checks == matches else tuple(checks)
            got = self.derived[key] = (shared, ordered, _index(matches))
        return got

    def group(self, parents: list[Match]) -> ParentGroup:
        key = tuple(map(id, parents))
        g = self.groups.get(key)
        if g is None:
            g = self.groups[key] = ParentGroup(tuple(parents))
        return g


def _build_rule(line: LogicalLine, compiled: list[Compiled], at: list[int], errors: list[RuleError],
                p: _Parse, failed: bool = False) -> Optional[Rule]:
    """One rule from its compiled tokens (``at``: each token's offset, for messages);
    ``failed``: a token of the line did not compile (its error is already reported)."""
    matches: list[Match] = []
    assigns: list[Assign] = []
    assign_at: list[int] = []
    hostpath: tuple[str, ...] = ()
    hostpath_at: Optional[int] = None
    label = goto = None
    goto_at: Optional[int] = None
    n_errors = len(errors)
    for c, offset in zip(compiled, at):
        if isinstance(c, Match):
            matches.append(c)
        elif isinstance(c, Assign):
            assigns.append(c)
            assign_at.append(offset)
        else:
            kind, val = c
            if kind == "HOSTPATH":
                if hostpath_at is not None:
                    errors.append(RuleError(line.location(offset),
                                            "a rule takes only one HOSTPATH (use 'a|b' for several paths)"))
                hostpath, hostpath_at = val, offset
            elif kind == "LABEL":
                if label is not None:
                    errors.append(RuleError(line.location(offset), "a rule takes only one LABEL"))
                label = val
            else:
                if goto is not None:
                    errors.append(RuleError(line.location(offset), "a rule takes only one GOTO"))
                goto, goto_at = val, offset
    if hostpath_at is not None:
        hp_loc = line.location(hostpath_at)
        if matches:
            keys = ", ".join(sorted({m.key for m in matches}))
            errors.append(RuleError(hp_loc, f"HOSTPATH cannot be combined with device match keys ({keys}): "
                                            "a HOSTPATH rule claims the host path itself"))
        for a, offset in zip(assigns, assign_at):
            if a.key in ("ENV", "OPTIONS"):
                errors.append(RuleError(line.location(offset), f"{a.key} has no meaning in a HOSTPATH rule"))
        if label is not None or goto is not None:
            errors.append(RuleError(hp_loc, "HOSTPATH rules cannot use GOTO or LABEL"))
    elif not assigns and goto is None and label is None and len(errors) == n_errors and not failed:
        errors.append(RuleError(line.location(at[0] if at else 0),
                                "rule assigns nothing (add RESOURCE=\"...\" or another assignment)"))
    if failed or len(errors) != n_errors:
        return None
    ref = RuleRef(line.file, line.line, line.text.strip())
    if hostpath:
        return Rule(ref=ref, assigns=p.share(assigns), hostpath=hostpath,
                    hostpath_patterns=tuple(compile_path(h) for h in hostpath))
    shared, checks, index = p.checks(matches)
    if len(assigns) > 1:
        # ENV assignments first (later keys of the rule may use them), then the rest in order.
        assigns = [a for a in assigns if a.key == "ENV"] + [a for a in assigns if a.key != "ENV"]
    if goto_at is not None:
        p.gotos.append((line.line, line.file, line.place(goto_at), goto))
    return Rule(ref=ref, checks=checks, matches=shared, assigns=p.share(assigns), label=label, goto=goto,
                index=index)


def _order(m: Match) -> int:
    return ORDER[m.key]


def parse_rules(text: str, filename: str = "<string>") -> tuple[list[Rule], list[RuleError]]:
    """Parse one file's text: its rules and every error found (rules are dropped on errors)."""
    lex_errors: list = []
    errors: list[RuleError] = []
    rules: list[Rule] = []
    p = _Parse()
    known = p.tokens
    for line in iter_logical_lines(text, filename, lex_errors):
        texts = token_texts(line.text)  # plain lines: no Token objects unless a text is new
        if texts is None:
            try:
                texts = [(t.text, t.key_at, t) for t in tokenize(line.text)]
            except TokenError as exc:
                errors.append(RuleError(line.location(exc.offset), exc.message))
                continue
        compiled: list[Compiled] = []
        at: list[int] = []
        failed = False
        for t, offset, found in texts:
            c = known.get(t)
            if c is None:
                tok = found if isinstance(found, Token) else token_at(line.text, found)
                try:
                    c = p.compile(tok)
                except _Bad as bad:
                    errors.append(RuleError(line.location(bad.offset), bad.message))
                    failed = True
                    continue
            compiled.append(c)
            at.append(offset)
        rule = _build_rule(line, compiled, at, errors, p, failed)
        if rule is not None:
            rules.append(rule)
    errors.extend(RuleError(e.location, e.message) for e in lex_errors)
    # GOTO must find its LABEL further down in the same file (udev: else the GOTO is ignored).
    # Linear: the position of each name's last LABEL decides for every GOTO of that name.
    last_label: dict[str, int] = {}
    for rule in rules:
        if rule.label is not None:
            last_label[rule.label] = rule.ref.line
    for line_no, file, (line, column), name in p.gotos:
        if last_label.get(name, 0) <= line_no:
            errors.append(RuleError(Location(file, line, column), f"GOTO=\"{name}\" has no LABEL=\"{name}\" after it in this file"))
    errors.sort(key=lambda e: (e.location.line, e.location.column))
    return rules, errors
