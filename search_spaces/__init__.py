"""What may be tried: the generic machinery of search spaces (the TOML format and its reader, the rule framework,
the rules and helpers families share) and one record per GPU architecture (``arch``). Each family's own space
(``space.toml``) and rules (``rules.py``) live in its folder, ``kernels/<family>/``; ``flashcore.kernels.load_space``
reads a family's space by its name."""

from ._space import SearchSpace, SpaceError, expand, read_space
from .arch import ARCHS, Arch, arch_of, profile_arch
from .rules import RULES, cdiv, pow2_at_least, registers_over_budget, rule, smem_over_budget

__all__ = ["ARCHS", "Arch", "RULES", "SearchSpace", "SpaceError", "arch_of", "cdiv", "expand", "pow2_at_least",
           "profile_arch", "read_space", "registers_over_budget", "rule", "smem_over_budget"]
