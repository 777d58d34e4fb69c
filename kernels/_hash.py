"""The hash of a kernel's JIT source: what decides the compiled kernel, and nothing else.

``jit_hash(("attention_fwd/kernel.py:attn_fwd",))`` hashes the syntax tree of each named ``@triton.jit`` (or
Gluon) function, of every function of the package it calls (transitively, through the module's own
definitions and its relative imports) and of the module-level constants they read. The tree (without
positions) ignores comments, formatting, docstrings, import lines, line numbers and the other
functions of the file, so moving or commenting a kernel keeps its tuned tables current, while any change to
the code that compiles does not. The files are parsed, never imported: hashing needs no Triton.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

_HERE = Path(__file__).resolve().parent


@functools.cache
def _module(path: Path) -> tuple[dict[str, ast.AST], dict[str, tuple[Path, str]]]:
    """(top-level definitions by name, names imported relatively -> (file, name)) of one source file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    defs: dict[str, ast.AST] = {}
    imports: dict[str, tuple[Path, str]] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defs[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    defs[t.id] = node
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            base = path.parent
            for _ in range(node.level - 1):
                base = base.parent
            parts = (node.module or "").split(".") if node.module else []
            target = base.joinpath(*parts)
            for alias in node.names:
                file = target.with_suffix(".py") if parts else target / f"{alias.name}.py"
                if file.exists():
                    imports[alias.asname or alias.name] = (file, alias.name)
    return defs, imports


def _dump(node) -> str:
    """A syntax tree as text, the same on every Python version: node and field names, no positions, fields that
    are empty or None left out (Python 3.12 added ``type_params=[]`` to every function), docstrings dropped."""
    if isinstance(node, list):
        return "[" + ",".join(_dump(x) for x in node) + "]"
    if not isinstance(node, ast.AST):
        return repr(node)
    body = getattr(node, "body", None)
    if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and body and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
        body = body[1:]
    parts = []
    for field in node._fields:
        value = body if field == "body" and body is not None else getattr(node, field, None)
        if value is None or value == [] or field == "type_comment":
            continue
        parts.append(f"{field}={_dump(value)}")
    return f"{type(node).__name__}({','.join(parts)})"


def _closure(path: Path, name: str, seen: dict[tuple[Path, str], str]) -> None:
    if (path, name) in seen:
        return
    defs, imports = _module(path)
    if name not in defs:
        if name in imports:
            _closure(*imports[name], seen)
            return
        raise KeyError(f"{path.name} defines no {name!r}")
    node = defs[name]
    seen[(path, name)] = _dump(node)
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id != name:
            if sub.id in defs:
                _closure(path, sub.id, seen)
            elif sub.id in imports:
                _closure(*imports[sub.id], seen)


@functools.cache
def jit_hash(specs: tuple[str, ...]) -> str:
    """16 hex digits over the JIT functions ``"file.py:function"`` (paths relative to ``kernels/``, or absolute for
    a family registered from a folder elsewhere) and all they use (see the module doc)."""
    seen: dict[tuple[Path, str], str] = {}
    for spec in specs:
        file, _, name = spec.partition(":")
        _closure(_HERE / file, name, seen)
    digest = hashlib.sha256()
    for (path, name), dump in sorted(seen.items(), key=lambda item: (str(_named(item[0][0])), item[0][1])):
        digest.update(f"{_named(path)}:{name}\n{dump}\n".encode())
    return digest.hexdigest()[:16]


def _named(path: Path) -> Path:
    """How a file is named in the hash: relative to kernels/ (the package's families; an absolute path names a
    family's file from a folder elsewhere, hashed under its folder and file names)."""
    try:
        return path.relative_to(_HERE)
    except ValueError:
        return Path(path.parent.name, path.name)
