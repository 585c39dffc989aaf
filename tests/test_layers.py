"""The package's layer order, checked on every import statement of src/ (lazy ones too): a module imports only
from its own layer or those below it, and no modules import each other in a circle, within a layer or across.

    io, errors → config → config_checks → cli → sandbox (server side → harness) → benchmarks → llm → model
    (+ convert_hf) → tokenizer → checkpoint → data (engine → text tools → stages) → eval (errors → verdicts →
    models → the rest) → train → report → apps

The README's layout section lists the package in the same order (checked here too).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
LAYERS = [
    ("textbooks", "textbooks.io", "textbooks.errors"),
    ("textbooks.config",),
    ("textbooks.config_checks",),
    ("textbooks.cli",),
    ("textbooks.sandbox.server",),
    ("textbooks.sandbox",),
    ("textbooks.benchmarks",),
    ("textbooks.llm",),
    ("textbooks.model", "textbooks.convert_hf"),
    ("textbooks.tokenizer",),
    ("textbooks.checkpoint",),
    ("textbooks.data", "textbooks.data.engine"),
    ("textbooks.data.text",),
    ("textbooks.data.stages",),
    ("textbooks.eval.errors",),
    ("textbooks.eval.verdicts",),
    ("textbooks.eval.models",),
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


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).with_suffix("")
        out[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = path
    return out


def imports(path: Path, module: str, known: dict[str, Path] | None = None) -> list[tuple[int, str]]:
    """The ``textbooks`` modules ``path`` imports, with line numbers; ``from pkg import sub`` names ``pkg.sub``
    when ``sub`` is a module of ``known``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                pkg = module.split(".")[: -node.level] if path.name != "__init__.py" else module.split(".")
                base = ".".join([*pkg, base]) if base else ".".join(pkg)
            subs = [f"{base}.{a.name}" for a in node.names if known and f"{base}.{a.name}" in known]
            out += [(node.lineno, s) for s in subs] or [(node.lineno, base)]
    return [(n, m) for n, m in out if m == "textbooks" or m.startswith("textbooks.")]


def test_imports_only_go_down_the_layers() -> None:
    upward = []
    for module, path in modules().items():
        here = layer(module)
        for lineno, target in imports(path, module):
            if layer(target) > here:
                upward.append(f"{path.relative_to(SRC)}:{lineno} {module} imports {target}")
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of ``graph`` with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def graph_of_src() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        targets = {t for _, t in imports(path, module, known) if t in known and t != module}
        # a package's __init__ is imported with each of its modules: a module that imports its own package's
        # __init__ depends on what that __init__ imports, not on the package's other modules
        graph[module] = targets
    return graph


def test_no_import_circles() -> None:
    found = circles(graph_of_src())
    assert not found, "modules that import each other in a circle:\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


def test_the_circle_check_finds_a_circle_inside_a_layer() -> None:
    graph = {"textbooks.config": {"textbooks.config_checks"}, "textbooks.config_checks": {"textbooks.config"}}
    assert circles(graph) == [["textbooks.config", "textbooks.config_checks"]]
    assert circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_readme_layout_lists_the_layers_in_order() -> None:
    """The README's layout block names each layer's folder or module in the order of ``LAYERS``."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    entries = re.findall(r"^  ([a-z_]+(?:/[a-z_]+)*)(?:/|\.py)\s", block, flags=re.M)
    listed = [layer("textbooks." + e.replace("/", ".")) for e in entries]
    assert listed == sorted(listed), f"README layout out of layer order: {list(zip(entries, listed))}"
    named = {e.replace("/", ".") for e in entries}
    for names in LAYERS[1:-1]:
        assert any(n.removeprefix("textbooks.") in named for n in names), f"README layout lacks {names}"
