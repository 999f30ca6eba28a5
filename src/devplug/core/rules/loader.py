"""Rules texts → one :class:`RuleSet`, every error of every file at once. Pure.

Reading files (which files, in which order, how they are watched) is the job of
``devplug.sources.rulefiles``; this module only parses what it is handed.
"""

from __future__ import annotations

from collections.abc import Iterable

from .engine import RuleSet
from .model import RuleError, RulesError
from .parser import parse_rules
from .rule import Rule


def compile_rules(texts: Iterable[tuple[str, str]]) -> RuleSet:
    """``(file name, text)`` pairs, in load order → a RuleSet; raises :class:`RulesError`."""
    files: list[str] = []
    rules: list[Rule] = []
    errors: list[RuleError] = []
    for name, text in texts:
        files.append(name)
        file_rules, file_errors = parse_rules(text, name)
        rules.extend(file_rules)
        errors.extend(file_errors)
    if errors:
        raise RulesError(errors)
    return RuleSet(files, rules)
