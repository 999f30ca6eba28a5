"""The rules engine: udev-syntax rules decide which device becomes which resource.

Pure (no pyudev, no I/O: ``devplug.sources.rulefiles`` reads the files). See ``parser``
for the language, ``engine`` for evaluation, ``pattern``/``matchers`` for udev's exact
matching semantics.
"""

from .engine import Evaluation, RuleSet
from .loader import compile_rules
from .model import (
    DEFAULT_DOMAIN,
    DEFAULT_PERMISSIONS,
    Claim,
    Location,
    Mount,
    RuleError,
    RuleRef,
    RulesError,
    RuleTrace,
)
from .parser import parse_rules
from .rule import Assign, Rule
from .validate import check_domain, check_resource

__all__ = [
    "DEFAULT_DOMAIN",
    "DEFAULT_PERMISSIONS",
    "Assign",
    "Claim",
    "Evaluation",
    "Location",
    "Mount",
    "Rule",
    "RuleError",
    "RuleRef",
    "RuleSet",
    "RuleTrace",
    "RulesError",
    "check_domain",
    "check_resource",
    "compile_rules",
    "parse_rules",
]
