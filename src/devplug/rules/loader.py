"""Reading rules files and directories into one :class:`RuleSet`, all errors at once."""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import resources
from typing import Union

from .engine import RuleSet
from .model import RuleError, RulesError
from .parser import parse_rules
from .rule import Rule

PathLike = Union[str, "os.PathLike[str]"]


def rule_files(paths: Sequence[PathLike]) -> list[str]:
    """Files to read: a directory gives its ``*.rules`` in lexical order of file name.

    Raises ``FileNotFoundError`` for a path that does not exist.
    """
    files: list[str] = []
    for p in paths:
        path = os.fspath(p)
        if os.path.isdir(path):
            names = sorted(n for n in os.listdir(path) if n.endswith(".rules")
                           and os.path.isfile(os.path.join(path, n)))
            files.extend(os.path.join(path, n) for n in names)
        elif os.path.exists(path):
            files.append(path)
        else:
            raise FileNotFoundError(2, "No such file or directory", path)
    return files


def load_rules(paths: Sequence[PathLike]) -> RuleSet:
    """Load rules from files and directories; raises :class:`RulesError` with every error.

    ``OSError`` (a path that does not exist or cannot be read) is left to the caller.
    """
    files = rule_files(paths)
    rules: list[Rule] = []
    errors: list[RuleError] = []
    for f in files:
        with open(f, "rb") as fh:
            text = fh.read().decode("utf-8", "surrogateescape")
        file_rules, file_errors = parse_rules(text, f)
        rules.extend(file_rules)
        errors.extend(file_errors)
    if errors:
        raise RulesError(errors)
    return RuleSet(files, rules)


def default_rules_path() -> str:
    """The rules directory shipped inside the package."""
    return str(resources.files("devplug") / "default_rules")
