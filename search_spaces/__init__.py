"""What may be tried: per-kernel search spaces (TOML data) and the named validity rules that prune them."""

from ._space import SearchSpace, SpaceError, expand, load_space
from .rules import RULES, rule
from . import rules_gluon, rules_kv  # noqa: E402,F401  (register the rules of those families' spaces)

__all__ = ["RULES", "SearchSpace", "SpaceError", "expand", "load_space", "rule"]
