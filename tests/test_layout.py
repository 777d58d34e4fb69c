"""The package's shape: one import name, layers that only import downwards, no cycles, files a reader can take in
one sitting, a run-time path that works without the tuning dependencies, kernels that build for other GPUs."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cache", "kernels", "search_spaces", "autotune")  # the repository's folders, flashcore.<name>
# Lower layers first: a module may import its own layer or a lower one, never a higher one.
LAYERS = ("cache", "kernels", "search_spaces", "autotune.core", "autotune.runtime", "autotune.integrations",
          "autotune.tuning", "autotune.evaluation", "autotune.cli")
SAME_LEVEL = {"autotune.integrations": "autotune.runtime"}  # integrations sit on the run-time path
MAX_LINES = 420


def _modules() -> dict[str, Path]:
    out = {}
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _layer(module: str) -> int:
    best = -1
    for i, name in enumerate(LAYERS):
        if module == name or module.startswith(name + "."):
            best = i
    if best < 0:  # a package root (``autotune``) is the facade of its whole folder
        return -1
    name = SAME_LEVEL.get(LAYERS[best], LAYERS[best])
    return LAYERS.index(name)


def _imports(module: str, path: Path) -> set[str]:
    """Every flashcore module ``module`` imports (at any depth of its code), as repository module names."""
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            name = name.removeprefix("flashcore.")
            if name.split(".")[0] in PACKAGES:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name in _imports(module, path):
            while name and name not in modules:  # `from pkg import function`: the module is the prefix
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def test_no_upward_imports():
    bad = [f"{m} -> {t}" for m, targets in _graph().items() for t in targets
           if _layer(m) >= 0 and _layer(t) > _layer(m)]
    assert not bad, bad


def test_no_import_cycles():
    graph = _graph()
    # a package's __init__ importing its own submodules is not a cycle of the code; leave package roots out
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    seen: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        seen[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if seen.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in seen:
                visit(nxt)
        stack.pop()
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node)
    assert not cycles, cycles


def test_the_runtime_never_imports_tuning_machinery():
    graph = _graph()
    runtime = [m for m in graph if m.startswith(("autotune.runtime", "autotune.core", "autotune.integrations"))]
    bad = [f"{m} -> {t}" for m in runtime for t in graph[m]
           if t.startswith(("autotune.tuning", "autotune.evaluation", "autotune.cli"))]
    assert not bad, bad


def test_no_module_is_too_long_to_read():
    long = {str(p.relative_to(ROOT)): n for p in _modules().values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long


@pytest.mark.slow
def test_the_wheel_installs_exactly_one_top_level_name(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    assert wheel.name.startswith("flashcore_autotune-")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"flashcore"}, tops
    assert "flashcore/cache/tables/h100-float16.json" in names and "flashcore/search_spaces/attention_fwd.toml" in names
    assert not [n for n in names if "fault_injection" in n or n.startswith("flashcore/tests")]  # test-only code


BLOCKED = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("optuna", "typer", "rich"):
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, Block())
    import torch
    from flashcore.autotune import attention, get_kernel
    from flashcore.kernels.reference import attention_reference
    torch.manual_seed(0)
    q = torch.randn(1, 4, 37, 32, dtype=torch.float16)
    k = torch.randn(1, 2, 37, 32, dtype=torch.float16)
    v = torch.randn(1, 2, 37, 32, dtype=torch.float16)
    kernel = get_kernel(q.shape, torch.float16, True, kv_heads=2)
    out = attention(q, k, v, is_causal=True, enable_gqa=True, strict=True)
    ref = attention_reference(q, k, v, causal=True)
    err = float((out.float() - ref).norm() / ref.norm())
    assert err < 2e-3, err
    bad = [m for m in ("optuna", "typer", "rich") if m in sys.modules]
    assert not bad, bad
    print("ok", kernel.kernel, kernel.source, err)
""")


def test_get_kernel_and_attention_work_with_the_tuning_dependencies_blocked(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1", "AUTOTUNE_DB": str(tmp_path / "none.db")}
    proc = subprocess.run([sys.executable, "-c", BLOCKED], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok attention_fwd default")


COMPILE = textwrap.dedent("""
    import json, sys, torch
    from flashcore.kernels.attention_fwd.precompile import compile_for_target
    cc = int(sys.argv[1])
    config = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2, "CAUSAL_SPLIT": True}
    out = [compile_for_target(cc, (2, 8, 1000, 64), kv, torch.float16, True, config)
           for kv in ((2, 8, 1000, 64), (2, 2, 1000, 64))]
    print(json.dumps(out))
""")


@pytest.mark.parametrize("cc", [80, 89], ids=["sm_80", "sm_89"])
def test_the_kernels_compile_for_ampere_and_ada(cc):
    import json

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile for real, for a target
    proc = subprocess.run([sys.executable, "-c", COMPILE, str(cc)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["target"] for r in results] == [f"sm_{cc}"] * 2  # equal heads and grouped-query heads
    assert all(0 < r["shared"] <= 99 * 1024 for r in results)
