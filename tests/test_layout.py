"""The package's shape: one import name, layers that only import downwards, no cycles, files a reader can take in
one sitting, a run-time path that works without the tuning dependencies, kernels that build for other GPUs."""

from __future__ import annotations

import ast
import io
import os
import re
import subprocess
import sys
import textwrap
import tokenize
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cache", "kernels", "search_spaces", "autotune")  # the repository's folders, flashcore.<name>
# Lower layers first: a module may import its own layer or a lower one, never a higher one. search_spaces sits
# below kernels (issue 20): it is the generic machinery (the TOML reader, the rule framework and shared rules, the
# architecture records), and each family's folder under kernels/ holds its own space.toml and rules.py, which
# build on it; so the machinery may not know the families, and the families may use it.
LAYERS = ("cache", "search_spaces", "kernels", "autotune.core", "autotune.runtime", "autotune.integrations",
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
    assert "flashcore/cache/tables/h100-float16.json" in names and "flashcore/kernels/attention_fwd/space.toml" in names
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


# -- every module path the code and the docs name exists -------------------------------------------------------

_DOC_SUFFIXES = (".py", ".toml", ".md", ".sh")
_NOT_SCANNED = ("benchmarks/results/", "build/", "dist/")  # what a past run printed; what a build copied
_ROOTS = "autotune|kernels|cache|search_spaces"
_SUBPACKAGES = ("core", "runtime", "tuning", "evaluation", "cli", "integrations")  # short for autotune.<name>
_PATH_RE = re.compile(r"(?<![\w/.$*-])((?:autotune|kernels|cache|search_spaces|tests|benchmarks)/[\w/.*-]*[\w*])")
_DOTTED_RE = re.compile(rf"(?<![\w./-])(?:flashcore\.)?((?:{_ROOTS}|{'|'.join(_SUBPACKAGES)})(?:\.[A-Za-z_]\w*)+)")
_BARE_FILE_RE = re.compile(r"(?<![\w/.*-])(\w+\.(?:py|toml))\b")
_NOT_A_MODULE = {"db", "py", "toml", "json", "jsonl", "md", "log", "png", "csv", "sh", "claims", "whl"}
# names that are not ours: transformers' objects and files, placeholders
_FOREIGN = {"cache.is_compileable", "masking_utils.py", "file.py"}
# Stale names left in JIT source files, which are not edited for their words: kernels/_hash.py hashes the JIT
# functions in them, and an edit that changed the hash would stop the shipped tuned tables from being served.
# No other stale name passes.
_IN_JIT_SOURCE = {
    # the FP8 kernel's module docstring: its launcher, the fp16 kernel and the quantizer by their pre-package files
    "kernels/attention_fp8/kernel.py": {"launch_fp8.py", "attention_fwd.py", "kernels/quant.py"},
    # the Triton quantizer's module docstring: its launcher and the PyTorch quantizer by their pre-package names
    "kernels/attention_fp8/quant_fused.py": {"kernels/quant_launch.py", "kernels.quant"},
}


def _top_level_names(path: Path) -> set[str]:
    """What a module defines at its top level (and lists in ``__all__``): the attributes a reference may name."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
            if "__all__" in names and isinstance(node.value, (ast.List, ast.Tuple)):
                names |= {e.value for e in node.value.elts if isinstance(e, ast.Constant)}
    return names


def _module_exists(dotted: str, modules: dict[str, Path]) -> bool:
    """``dotted`` (``pkg.module``, ``pkg.module.name``) names a module of the repository, or a name in one."""
    parts = dotted.split(".")
    if parts[0] in _SUBPACKAGES:
        parts = ["autotune", *parts]
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        if module in modules:
            return i == len(parts) or parts[i] in _top_level_names(modules[module])
        if (ROOT.joinpath(*parts[:i])).is_dir():  # a namespace package (no __init__.py): only its submodules
            return i == len(parts)
    return False


def _texts(path: Path):
    """(line number, text) of what a file says in words: every line of a document; a module's strings and comments."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".py":
        yield from enumerate(text.splitlines(), 1)
        return
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type in (tokenize.STRING, tokenize.COMMENT, getattr(tokenize, "FSTRING_MIDDLE", -1)):
            yield from enumerate(tok.string.splitlines(), tok.start[0])


def _imported(path: Path, modules: dict[str, Path]):
    """(line number, name) of each repository module (or name in one) that ``path`` imports."""
    if path.parent.name in PACKAGES or any(part in PACKAGES for part in path.relative_to(ROOT).parts[:-1]):
        rel = path.relative_to(ROOT).with_suffix("").parts
        module = ".".join(rel[:-1] if rel[-1] == "__init__" else rel)
    else:
        module = ""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if a.name != "*" else base for a in node.names]
        else:
            continue
        for name in targets:
            name = name.removeprefix("flashcore.")
            if name.split(".")[0] in PACKAGES:
                yield node.lineno, name


def test_every_module_path_named_in_code_and_docs_exists():
    """Code, TOML and Markdown name only modules and files that exist: no ``autotune._worker``, no
    ``kernels/quant.py`` left from an earlier layout, in an import, a string, a comment or a document."""
    modules = _modules()
    basenames = {p.name for p in ROOT.rglob("*") if p.suffix in (".py", ".toml")}
    stale = []
    for path in sorted(p for p in ROOT.rglob("*") if p.suffix in _DOC_SUFFIXES and p.is_file()):
        rel = path.relative_to(ROOT).as_posix()
        if any(part.startswith(".") or part.endswith(".egg-info") for part in path.relative_to(ROOT).parts) \
                or rel.startswith(_NOT_SCANNED):
            continue
        refs = []
        for n, line in _texts(path):
            refs += [(n, m) for m in _PATH_RE.findall(line) if "*" not in m and not (ROOT / m).exists()]
            refs += [(n, m) for m in _DOTTED_RE.findall(line)
                     if m.rsplit(".", 1)[-1] not in _NOT_A_MODULE and not _module_exists(m, modules)]
            refs += [(n, m) for m in _BARE_FILE_RE.findall(line) if m not in basenames]
        if path.suffix == ".py":
            refs += [(n, m) for n, m in _imported(path, modules) if not _module_exists(m, modules)]
        allowed = _FOREIGN | _IN_JIT_SOURCE.get(rel, set())
        if path == Path(__file__):  # this test names stale paths on purpose
            allowed = allowed.union(*_IN_JIT_SOURCE.values(), {"autotune._worker", "kernels/quant.py"})
        stale += [f"{rel}:{n}: {m}" for n, m in refs if m not in allowed]
    assert not stale, "names of modules or files that do not exist:\n" + "\n".join(stale)


# -- a kernel family is one folder; tests and tools see only flashcore.* ---------------------------------------

FAMILY_DIRS = sorted(p.parent.name for p in (ROOT / "kernels").glob("*/family.py"))
_FAMILY_RE = re.compile(rf"\b({'|'.join(FAMILY_DIRS)})\b")
REGISTRY_LIST = ("kernels/_family.py", "FAMILY_FOLDERS")  # the one list of the package's families


def _names_in_code(path: Path):
    """(line, text) of each name and string of ``path``'s code: comments and docstrings (bare string statements)
    left out, which may name anything."""
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text)
    prose = {(n.lineno, n.col_offset) for n in ast.walk(tree)
             if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)}
    kinds = (tokenize.NAME, tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", -1))
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type in kinds and tok.start not in prose:
            yield tok.start[0], tok.string


def _registry_lines() -> set[int]:
    path, name = REGISTRY_LIST
    for node in ast.parse((ROOT / path).read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return set(range(node.lineno, node.end_lineno + 1))
    return set()


def test_no_module_outside_a_family_folder_names_a_family():
    """Generic code (the registry, the tuner, the runtime, the command line) knows families only through the
    registry: outside ``kernels/<family>/`` no code names one, but the one list in kernels/_family.py."""
    assert len(FAMILY_DIRS) >= 4, FAMILY_DIRS
    allowed = _registry_lines()
    assert allowed, f"{REGISTRY_LIST} not found"
    bad = []
    for path in _modules().values():
        rel = path.relative_to(ROOT).as_posix()
        if rel.split("/")[:2] in [["kernels", d] for d in FAMILY_DIRS]:
            continue
        for line, text in _names_in_code(path):
            if _FAMILY_RE.search(text) and not (rel == REGISTRY_LIST[0] and line in allowed):
                bad.append(f"{rel}:{line}: {text}")
    assert not bad, "family names outside their folders:\n" + "\n".join(bad)


def _test_files() -> list[Path]:
    return sorted([*(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")])


def test_no_test_imports_a_private_module():
    """Tests and tools use the public modules (a private one's names are re-exported where they belong)."""
    modules = _modules()
    bad = []
    for path in _test_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                base = node.module or ""
                targets = [base] + [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}".removeprefix(
                    "flashcore.") in modules]
            else:
                continue
            for name in targets:
                parts = name.split(".")
                if parts[0] == "flashcore" and any(p.startswith("_") for p in parts[1:]):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert not bad, bad


def test_tests_and_tools_see_only_flashcore():
    """The repository root is the package ``flashcore`` (pyproject.toml's package-dir mapping): tests and tools
    import ``flashcore.<folder>``, never a folder as a top-level package of its own."""
    bad = [f"{path.relative_to(ROOT)}:{node.lineno}" for path in _test_files()
           for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
           if isinstance(node, ast.Import) and any(a.name.split(".")[0] in PACKAGES for a in node.names)
           or isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] in PACKAGES]
    assert not bad, bad
    assert not [m for m in PACKAGES if m in sys.modules], "a folder was imported as a top-level package"


def test_the_planted_family_test_exists():
    """Adding a family is adding a folder: tests/test_planted_family.py registers one from a temporary folder
    and sweeps it on the CPU (it passes with the rest of the suite)."""
    text = (ROOT / "tests" / "test_planted_family.py").read_text(encoding="utf-8")
    assert "register_folder(" in text and "sweep(" in text
