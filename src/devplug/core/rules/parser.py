"""Rules text → :class:`Rule` objects, or every error with its ``file:line:column``.

Which key takes which operator follows systemd 252's ``parse_token``; where udev would only
warn (``ENV{x}:=``, a GOTO without LABEL, a rule that assigns nothing) devplug refuses, since
a rules file is checked up front and a silent no-op is a bug in a rule. udev keys that act
(RUN, IMPORT, PROGRAM, OWNER, MODE, SYMLINK+= …) are errors: devplug only decides which
device becomes which Kubernetes resource.
"""

from __future__ import annotations

from typing import Optional

from .lexer import LogicalLine, Token, TokenError, iter_logical_lines, token_at, token_texts, tokenize
from .matchers import ORDER, Match, ParentGroup
from .model import Location, RuleError, RuleRef
from .pattern import compile_path
from .rule import Assign, Check, Rule
from .tokens import _INDEX_PREFERENCE, Compiled, _Bad, _compile_token

def _line_col(loc: Location) -> tuple[int, int]:
    return loc.line, loc.column


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
    lead = len(line.text) - len(line.text.lstrip())
    segments: tuple[tuple[int, int, int], ...] = ()
    if len(line._starts) > 1:  # continued over several lines: where each part starts
        segments = tuple((max(start - lead, 0), *_line_col(line.location(max(start, lead))))
                         for start in line._starts)
    ref = RuleRef(line.file, line.line, line.text.strip(), line.location(lead).column, segments)
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
