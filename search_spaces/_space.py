"""Read a search space (TOML data + named rules) and turn it into candidate configs for a point.

The TOML files live in the kernel families' folders (``kernels/<family>/space.toml``); this module knows none of
them by name."""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from .rules import RULES, Rule


class SpaceError(ValueError):
    """A search-space file is malformed (one line naming the file and the problem)."""


@dataclass(frozen=True)
class SearchSpace:
    """What may be tried for one kernel on one profile: value lists per parameter, rules, a safe default."""

    kernel: str
    profile: str
    params: tuple[tuple[str, tuple[Any, ...]], ...]
    default: tuple[tuple[str, Any], ...]
    rule_names: tuple[str, ...]
    # parameter -> "max" or "min": the default takes the largest (smallest) value of that parameter that passes
    # every rule at the point (e.g. attention_kv's split count: as many splits as the rules let fill the GPU)
    prefer: tuple[tuple[str, str], ...] = ()

    @property
    def param_values(self) -> dict[str, tuple[Any, ...]]:
        return dict(self.params)

    @property
    def rules(self) -> tuple[tuple[str, Rule], ...]:
        return tuple((name, RULES[name]) for name in self.rule_names)

    def violations(self, config: Mapping[str, Any], point: Any, profile: Any) -> list[str]:
        """The named rules ``config`` breaks at ``point``, as "rule: reason" lines (empty: valid)."""
        out = []
        for name, fn in self.rules:
            reason = fn(config, point, profile)
            if reason:
                out.append(f"{name}: {reason}")
        return out

    def all_configs(self) -> list[dict[str, Any]]:
        names = [n for n, _ in self.params]
        return [dict(zip(names, combo)) for combo in itertools.product(*(v for _, v in self.params))]

    def candidates(self, point: Any, profile: Any) -> list[dict[str, Any]]:
        """Every config of the space that passes all rules at ``point``."""
        return [c for c in self.all_configs() if not self.violations(c, point, profile)]

    def default_for(self, point: Any, profile: Any) -> dict[str, Any]:
        """The space's safe default, adjusted to the point (no causal split without causal, tiles clipped).

        If that still breaks a rule at the point (an FP8 recipe over a tight error budget), the valid candidate
        that differs from it in the fewest parameters (the first such in the space's order) replaces it. Then each
        ``default_prefer`` parameter takes its largest (smallest) value that passes the rules there."""
        config = self._clipped_default(point)
        if profile is None:
            return config
        if self.violations(config, point, profile):
            valid = self.candidates(point, profile)
            if valid:
                config = min(valid, key=lambda c: sum(c[n] != config.get(n) for n in c))
        return self._preferred(config, point, profile)

    def _preferred(self, config: dict[str, Any], point: Any, profile: Any) -> dict[str, Any]:
        """``config`` with each ``prefer`` parameter at its largest (or smallest) value that passes the rules."""
        values = self.param_values
        for name, how in self.prefer:
            for value in sorted(values.get(name, ()), reverse=how == "max"):
                trial = {**config, name: value}
                if not self.violations(trial, point, profile):
                    config = trial
                    break
        return config

    def _clipped_default(self, point: Any) -> dict[str, Any]:
        """The default with its tiles clipped to the point: BLOCK_M to the padded query rows of a tile (the
        query heads of a kv head times L when PACK_GQA packs them), BLOCK_N to the padded keys."""
        config = dict(self.default)
        if "CAUSAL_SPLIT" in config and not point.causal:
            config["CAUSAL_SPLIT"] = False
        group = point.heads // getattr(point, "kv_heads", point.heads) if config.get("PACK_GQA") else 1
        for name, length in (("BLOCK_M", point.seq_len * group), ("BLOCK_N", getattr(point, "kv_len", point.seq_len))):
            cap = 16
            while cap < length:
                cap *= 2
            if name in config:
                config[name] = max(16, min(config[name], cap))
        if "num_warps" in config and "BLOCK_M" in config:
            config["num_warps"] = max(1, min(config["num_warps"], config["BLOCK_M"] // 8))
        return config


def expand(name: str, spec: Any) -> tuple[Any, ...]:
    """Turn a value list or a generator ({pow2 = [lo, hi]} / {range = [lo, hi, step]}) into a tuple."""
    if isinstance(spec, list) and spec:
        return tuple(spec)
    if isinstance(spec, dict) and len(spec) == 1:
        (kind, args), = spec.items()
        if kind == "pow2" and _ints(args, 2) and 1 <= args[0] <= args[1]:
            out, v = [], 1
            while v <= args[1]:
                if v >= args[0]:
                    out.append(v)
                v *= 2
            return tuple(out)
        if kind == "range" and _ints(args, 3) and args[2] > 0 and args[0] <= args[1]:
            return tuple(range(args[0], args[1] + 1, args[2]))
    raise SpaceError(f"parameter {name}: expected a non-empty list, {{pow2 = [lo, hi]}} or {{range = [lo, hi, step]}}, got {spec!r}")


def _ints(args: Any, n: int) -> bool:
    return isinstance(args, list) and len(args) == n and all(isinstance(a, int) for a in args)


@cache
def read_space(path: str | Path, kernel: str, profile: str = "default") -> SearchSpace:
    """The search space in the TOML file ``path`` (a family's ``space.toml``) of ``kernel`` for GPU profile
    ``profile``: its ``[profiles.<profile>]`` table, if it has one, overrides the parameters and the default.
    The rules it names must be registered already (the family's rules module imported:
    ``flashcore.kernels.load_space`` does that)."""
    path = Path(path)
    where = f"{path.parent.name}/{path.name}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpaceError(f"no search space for kernel {kernel!r} ({where})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpaceError(f"{where}: {exc}") from None
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict) or not all(isinstance(p, dict) for p in profiles.values()):
        raise SpaceError(f"{where}: [profiles.NAME] tables must hold params and default tables")
    override = profiles.get(profile, {})
    params = {**data.get("params", {}), **override.get("params", {})}
    default = override.get("default", data.get("default"))
    unknown = [r for r in data.get("rules", []) if r not in RULES]
    if unknown:
        raise SpaceError(f"{where} names unknown rules {unknown}; known: {sorted(RULES)}")
    if not params or not isinstance(default, dict) or set(default) != set(params):
        raise SpaceError(f"{where}: [params] and [default] must name the same parameters")
    prefer = data.get("default_prefer", {})
    if not isinstance(prefer, dict) or any(n not in params or h not in ("max", "min") for n, h in prefer.items()):
        raise SpaceError(f"{where}: default_prefer must map parameters to \"max\" or \"min\"")
    return SearchSpace(
        kernel=kernel,
        profile=profile,
        params=tuple((n, expand(n, s)) for n, s in params.items()),
        default=tuple(default.items()),
        rule_names=tuple(data.get("rules", [])),
        prefer=tuple(prefer.items()),
    )
