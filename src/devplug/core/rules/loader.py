"""Rules texts → one :class:`RuleSet`, every error of every file at once. Pure.

Reading files (which files, in which order, how they are watched) is the job of
``devplug.sources.rulefiles``; this module only parses what it is handed.
"""

from __future__ import annotations

from collections.abc import Iterable

from .engine import RuleSet
from .model import Location, RuleError, RulesError
from .parser import parse_rules
from .rule import Rule


#: Errors shown per file; the rest are counted in one more line (a file that is not a
#: rules file at all would otherwise print one line per line of garbage on every reload).
MAX_ERRORS_PER_FILE = 10


def compile_rules(texts: Iterable[tuple[str, str]]) -> RuleSet:
    """``(file name, text)`` pairs, in load order → a RuleSet; raises :class:`RulesError`."""
    files: list[str] = []
    rules: list[Rule] = []
    errors: list[RuleError] = []
    for name, text in texts:
        files.append(name)
        if "\0" in text:
            errors.append(RuleError(Location(name, 0), f"binary file ({text.count(chr(0)):,} NUL bytes in "
                                                        f"{len(text):,} characters), not a rules file"))
            continue
        file_rules, file_errors = parse_rules(text, name)
        rules.extend(file_rules)
        if len(file_errors) > MAX_ERRORS_PER_FILE:
            more = len(file_errors) - MAX_ERRORS_PER_FILE
            file_errors = file_errors[:MAX_ERRORS_PER_FILE] + [
                RuleError(Location(name, 0), f"{more:,} more errors in this file ({len(file_errors):,} in all)")]
        errors.extend(file_errors)
    if errors:
        raise RulesError(errors)
    return RuleSet(files, rules)
