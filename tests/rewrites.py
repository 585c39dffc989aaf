"""Rewrites that keep the program: what a contaminated training item looks like after light laundering.

``rewrite(code, seed)`` parses a program and, with a real AST transformer, renames every name it binds
(functions, classes, arguments, variables, import aliases) consistently, aliases and reorders its imports,
drops or replaces its docstrings and adds new ones, removes its type annotations (or adds ``Any`` ones
when it has none), then writes it back with ``ast.unparse`` (so every comment is gone) and puts new
comments above its functions. The result runs exactly like the original (the tests check that against
the benchmarks' own tests), but shares almost none of its text.

Left alone, because renaming them would change what the program does: builtins shadowed by a binding
(``list = ...``), dunder names, names a class body binds (methods, class attributes: used as attributes),
the roots of dotted imports (``import os.path``) and star imports.
"""

from __future__ import annotations

import ast
import builtins
import random

WORDS = ["alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "theta", "zeta", "lambda_"]
DOCS = [
    "Compute the requested value.",
    "Helper used by the solution below.",
    "Return the answer for the given inputs.",
    "Implementation detail; see the caller.",
]


def _bound_names(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(names the program binds, names that must keep their spelling)."""
    bound: set[str] = set()
    keep = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if "." in a.name and not a.asname:
                    keep.add(a.name.split(".")[0])
                bound.add(a.asname or a.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            for a in node.names:
                if a.name == "*" or node.module == "__future__":
                    continue
                bound.add(a.asname or a.name)
        if isinstance(node, ast.ClassDef):  # methods and class attributes are used as attributes
            for stmt in node.body:
                if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    keep.add(stmt.name)
                for t in (
                    ast.walk(stmt) if isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)) else ()
                ):
                    if isinstance(t, ast.Name) and not isinstance(t.ctx, ast.Load):
                        keep.add(t.id)
    keep |= {n for n in bound if n.startswith("__") and n.endswith("__")}
    return bound - keep, keep


def _has_annotations(tree: ast.Module) -> bool:
    return any(
        (isinstance(n, ast.arg) and n.annotation is not None)
        or (isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.returns is not None)
        or isinstance(n, ast.AnnAssign)
        for n in ast.walk(tree)
    )


class _Rewriter(ast.NodeTransformer):
    def __init__(
        self, names: dict[str, str], local_defs: dict[str, set[str]], rng: random.Random, annotate: bool
    ):
        self.names, self.local_defs, self.rng, self.annotate = names, local_defs, rng, annotate
        self.declared: list[set[str]] = [set()]  # global/nonlocal names per function

    def _new(self, name: str | None) -> str | None:
        return self.names.get(name, name) if name is not None else None

    def visit_Name(self, node: ast.Name) -> ast.Name:
        node.id = self._new(node.id)
        return node

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.arg = self._new(node.arg)
        node.annotation = ast.Name("Any", ast.Load()) if self.annotate else None
        node.type_comment = None
        return node

    def visit_Lambda(self, node: ast.Lambda) -> ast.Lambda:
        for a in ast.walk(node.args):
            if isinstance(a, ast.arg):
                a.arg = self._new(a.arg)  # lambda parameters take no annotations
        for d in node.args.defaults + [d for d in node.args.kw_defaults if d is not None]:
            self.visit(d)
        node.body = self.visit(node.body)
        return node

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> ast.ExceptHandler:
        node.name = self._new(node.name)
        self.generic_visit(node)
        return node

    def visit_alias(self, node: ast.alias) -> ast.alias:
        bound = node.asname or node.name.split(".")[0]
        if bound in self.names and ("." not in node.name or node.asname):
            node.asname = self.names[bound]
        return node

    def visit_Global(self, node: ast.Global) -> ast.Global:
        node.names = [self._new(n) for n in node.names]
        self.declared[-1].update(node.names)
        return node

    visit_Nonlocal = visit_Global  # type: ignore[assignment]

    def visit_Call(self, node: ast.Call) -> ast.Call:
        # keyword arguments of the program's own functions and classes are renamed with their parameters
        if isinstance(node.func, ast.Name) and node.func.id in self.local_defs:
            for kw in node.keywords:
                if kw.arg in self.local_defs[node.func.id]:
                    kw.arg = self._new(kw.arg)
        self.generic_visit(node)
        return node

    def _docstring(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        body = node.body
        has = bool(body) and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
        has = has and isinstance(body[0].value.value, str)
        text = ast.Expr(ast.Constant(self.rng.choice(DOCS)))
        if has and len(body) > 1 and self.rng.random() < 0.5:
            del body[0]  # dropped
        elif has:
            body[0] = text  # replaced
        elif self.rng.random() < 0.5:
            body.insert(0, text)  # a new one

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        node.name = self._new(node.name)
        node.returns = ast.Name("Any", ast.Load()) if self.annotate else None
        node.type_comment = None
        self._docstring(node)
        self.declared.append(set())
        for stmt in node.body:  # global/nonlocal first: they decide which assignments may be annotated
            if isinstance(stmt, (ast.Global, ast.Nonlocal)):
                self.visit(stmt)
        self.generic_visit(node)
        self.declared.pop()
        return node

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.ClassDef:
        node.name = self._new(node.name)
        self._docstring(node)
        self.generic_visit(node)
        return node

    def visit_Assign(self, node: ast.Assign) -> ast.stmt:
        self.generic_visit(node)
        target = node.targets[0]
        if (
            self.annotate
            and len(self.declared) > 1  # inside a function
            and len(node.targets) == 1
            and isinstance(target, ast.Name)
            and target.id not in self.declared[-1]
        ):
            return ast.AnnAssign(target, ast.Name("Any", ast.Load()), node.value, simple=1)
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.stmt | None:
        self.generic_visit(node)
        if self.annotate:
            return node
        if node.value is None:
            return None  # a bare annotation binds nothing
        return ast.Assign([node.target], node.value)


def _imports_first(tree: ast.Module, rng: random.Random, annotate: bool) -> None:
    """Shuffle the leading block of imports; add ``from typing import Any`` when annotating."""
    body = tree.body
    start = 1 if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else 0
    while (
        start < len(body) and isinstance(body[start], ast.ImportFrom) and body[start].module == "__future__"
    ):
        start += 1
    end = start
    while end < len(body) and isinstance(body[end], (ast.Import, ast.ImportFrom)):
        end += 1
    block = body[start:end]
    if annotate:
        block.append(ast.ImportFrom("typing", [ast.alias("Any")], 0))
    rng.shuffle(block)
    body[start:end] = block


def _comment_defs(code: str, rng: random.Random) -> str:
    """New comment lines above every function and class."""
    lines = code.splitlines()
    starts = sorted(
        {
            min([n.lineno, *(d.lineno for d in n.decorator_list)])
            for n in ast.walk(ast.parse(code))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        },
        reverse=True,
    )
    for ln in starts:
        line = lines[ln - 1]
        indent = line[: len(line) - len(line.lstrip())]
        lines.insert(ln - 1, f"{indent}# {rng.choice(DOCS).lower()} ({rng.choice(WORDS)})")
    return "\n".join(lines) + "\n"


def rewrite(code: str, seed: int = 0) -> tuple[str, dict[str, str]]:
    """``code`` rewritten as the module docstring says, and the renaming it applied (old -> new)."""
    rng = random.Random(seed)
    tree = ast.parse(code)
    bound, _ = _bound_names(tree)
    taken = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | bound
    taken |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    names: dict[str, str] = {}
    for i, name in enumerate(sorted(bound)):
        new = f"{rng.choice(WORDS)}_{i}"
        while new in taken:
            new += "_"
        names[name] = new
        taken.add(new)
    local_defs: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            local_defs[node.name] = {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs}
        elif isinstance(node, ast.ClassDef):
            init = next(
                (s for s in node.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"), None
            )
            local_defs[node.name] = {x.arg for x in init.args.args + init.args.kwonlyargs} if init else set()
    annotate = not _has_annotations(tree)
    tree = _Rewriter(names, local_defs, rng, annotate).visit(tree)
    if not annotate:  # `from typing import ...` only served the annotations
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        tree.body = [
            s
            for s in tree.body
            if not (isinstance(s, ast.ImportFrom) and s.module == "typing")
            or any((a.asname or a.name) in used for a in s.names)
        ]
    _imports_first(tree, rng, annotate)
    ast.fix_missing_locations(tree)
    return _comment_defs(ast.unparse(tree), rng), names


def harness_aliases(code: str, names: dict[str, str]) -> str:
    """``old = new`` for each renamed name the rewritten module binds at top level, so the benchmark's
    own tests (which call the original names) can run against the rewrite."""
    top: set[str] = set()
    for stmt in ast.parse(code).body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            top.add(stmt.name)
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.Import, ast.ImportFrom)):
            top |= {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
            top |= {a.asname or a.name for a in getattr(stmt, "names", [])}
    return "".join(f"\n{old} = {new}" for old, new in sorted(names.items()) if new in top) + "\n"
