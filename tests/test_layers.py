"""The package's layer order, checked on every import statement of src/ (lazy ones too): a module imports only
from its own layer or those below it.

    io, errors, config → sandbox → benchmarks → model (+ convert_hf) → tokenizer → checkpoint → data → eval → train → report → apps
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS = [
    ("textbooks", "textbooks.io", "textbooks.errors", "textbooks.config", "textbooks.config_checks"),
    ("textbooks.sandbox",),
    ("textbooks.benchmarks",),
    ("textbooks.model", "textbooks.convert_hf"),
    ("textbooks.tokenizer",),
    ("textbooks.checkpoint",),
    ("textbooks.data",),
    ("textbooks.eval",),
    ("textbooks.train",),
    ("textbooks.report",),
    ("textbooks.demo", "textbooks.data.app", "textbooks.eval.app", "textbooks.train.app", "textbooks.report.collect"),
]  # fmt: skip


def layer(module: str) -> int:
    """The layer of ``module``: the most specific prefix listed (apps are listed inside their packages)."""
    best, found = -1, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or (module.startswith(name + ".") and name != "textbooks")) and len(
                name
            ) > best:
                best, found = len(name), i
    assert found >= 0, f"{module} is in no layer: add it to LAYERS"
    return found


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                pkg = module.split(".")[: -node.level] if path.name != "__init__.py" else module.split(".")
                base = ".".join([*pkg, base]) if base else ".".join(pkg)
            out.append((node.lineno, base))
    return [(n, m) for n, m in out if m == "textbooks" or m.startswith("textbooks.")]


def test_imports_only_go_down_the_layers() -> None:
    upward = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        here = layer(module)
        for lineno, target in imports(path, module):
            if layer(target) > here:
                upward.append(f"{path.relative_to(SRC)}:{lineno} {module} imports {target}")
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)
