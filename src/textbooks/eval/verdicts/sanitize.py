"""Code out of a model's answer: EvalPlus's sanitizer, on Python's own parser.

A chat model answers with prose, Markdown fences, usage examples and tests around its code; a base model
often runs on past the function. Scoring that text as is measures the formatting, not the code. The
sanitizer keeps what a grader needs (EvalPlus, ``evalplus/sanitize.py``, 0.3.1):

1. ``code_extract``: the longest run of lines that parses as Python (counting non-blank lines). Fence
   lines end a run: a run is searched between them (EvalPlus gets the same, because a fence line does
   not parse; splitting first makes long answers cheap).
2. From that code, the imports (all of them, first) and the top-level definitions the entry point
   depends on: functions that contain a ``return`` (a stub does not count), classes, and assignments to
   a name, each name's first definition only; dependencies are the identifiers a definition mentions,
   followed transitively from the entry point. Without an entry point every definition is kept.
3. If that leaves nothing, the extracted code as it is.

Differences from EvalPlus's tree-sitter version: decorated functions and classes are kept with their
decorators (EvalPlus drops them), and a fence-like line inside a multi-line string splits the search.

``solution_code`` turns a samples-file completion into a sanitized full solution: a completion that
already defines the entry point (a chat answer) is sanitized alone, else the code it stands for (prompt +
completion, as the scorer reads it). ``sanitize_samples`` writes a ``-sanitized`` copy of a samples file
(each completion replaced by its sanitized solution, the original kept as ``raw_completion``). Scoring
prepends the prompt again to the completion; a HumanEval prompt ends in the docstring of the entry point
(a valid body), so prompt + full solution runs the solution's definition.
"""

from __future__ import annotations

import ast
import io
import json
import tokenize
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textbooks.benchmarks import Problem, ProblemSet, completion_code
from textbooks.io import atomic_path

SANITIZED_SUFFIX = "-sanitized"


def parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # ValueError: null bytes
        return False
    return True


def _runs(lines: list[str]) -> Iterable[tuple[int, int]]:
    """``(start, end)`` of the stretches between Markdown fence lines."""
    start = 0
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            yield start, i
            start = i + 1
    yield start, len(lines)


def code_extract(text: str) -> str:
    """The longest run of lines (by non-blank lines) that parses as Python; EvalPlus's ``code_extract``."""
    lines = text.split("\n")
    nonblank = [1 if line.strip() else 0 for line in lines]
    best, best_pair = 0, (0, 0)
    for lo, hi in _runs(lines):
        after = [0] * (hi - lo + 1)  # non-blank lines from each position to hi
        for k in range(hi - 1, lo - 1, -1):
            after[k - lo] = after[k - lo + 1] + nonblank[k]
        for i in range(lo, hi):
            if after[i - lo] <= best:
                break  # no run starting here or later can be longer
            for j in range(hi - 1, i, -1):  # longest first: the first that parses is this start's best
                count = after[i - lo] - after[j + 1 - lo]
                if count <= best:
                    break
                if parses("\n".join(lines[i : j + 1])):
                    best, best_pair = count, (i, j)
                    break
    i, j = best_pair
    while j > i and not lines[j].strip():  # the shortest run with that count, as EvalPlus picks
        j -= 1
    return "\n".join(lines[i : j + 1])


@dataclass
class _Definition:
    name: str | None
    code: str


def _segment(lines: list[bytes], node: ast.stmt) -> str:
    """The source of a top-level statement, decorators included (``ast`` offsets are UTF-8 bytes)."""
    decorators = getattr(node, "decorator_list", None) or []
    first, col = (decorators[0].lineno, 0) if decorators else (node.lineno, node.col_offset)
    last, end_col = node.end_lineno or node.lineno, node.end_col_offset or 0
    if first == last:
        return lines[first - 1][col:end_col].decode("utf-8", "replace")
    parts = [lines[first - 1][col:], *lines[first : last - 1], lines[last - 1][:end_col]]
    return b"\n".join(parts).decode("utf-8", "replace")


def _identifiers(code: str) -> set[str]:
    """Every identifier in ``code`` (names, attributes, parameters, keywords of calls), as tree-sitter's
    ``identifier`` nodes are."""
    import keyword

    out = set()
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            if tok.type == tokenize.NAME and not keyword.iskeyword(tok.string):
                out.add(tok.string)
    except (tokenize.TokenError, SyntaxError):
        pass
    return out


def _assigned_name(node: ast.stmt) -> str | None:
    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id
    return None


def _reachable(entry_point: str, deps: dict[str | None, set[str]]) -> set[str]:
    seen, queue = {entry_point}, [entry_point]
    while queue:
        for name in deps.get(queue.pop(0), ()):
            if name not in seen:
                seen.add(name)
                queue.append(name)
    return seen


def extract_target_code(code: str, entry_point: str | None = None) -> str:
    """Imports and the definitions ``entry_point`` depends on (all definitions without one); "" if none."""
    code = code_extract(code)
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return ""
    lines = code.encode("utf-8").split(b"\n")
    imports: list[str] = []
    definitions: list[_Definition] = []
    names: set[str | None] = set()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            imports.append(_segment(lines, node))
            continue
        if isinstance(node, ast.ClassDef):
            name: str | None = node.name
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if not any(isinstance(n, ast.Return) for n in ast.walk(node)):
                continue
            name = node.name
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            name = _assigned_name(node)
        else:
            continue
        if name in names:
            continue
        names.add(name)
        definitions.append(_Definition(name, _segment(lines, node)))
    if entry_point:
        deps = {d.name: _identifiers(d.code) for d in definitions}
        keep = _reachable(entry_point, deps)
        definitions = [d for d in definitions if d.name in keep]
    return "\n".join([*imports, *(d.code for d in definitions)])


def sanitize(code: str, entry_point: str | None = None) -> str:
    """The code of an answer, reduced to ``entry_point`` and what it needs (see the module docstring)."""
    out = extract_target_code(code, entry_point).strip()
    return out if out else code_extract(code)


def defines(code: str, name: str) -> bool:
    """``code`` parses and defines ``name`` at the top level (a function, a class or an assignment)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == name:
            return True
        if isinstance(node, ast.Assign | ast.AnnAssign) and _assigned_name(node) == name:
            return True
    return False


def solution_code(problem: Problem, completion: str, fmt: str | None = None) -> str:
    """A completion as a sanitized full solution of ``problem``: the completion alone when it defines the
    entry point (a chat answer, a 3-shot completion), else the code it stands for (prompt + completion)."""
    alone = sanitize(completion, problem.entry_point)
    if defines(alone, problem.entry_point):
        return alone
    return sanitize(completion_code(problem, completion, fmt), problem.entry_point)


def sanitized_path(path: str | Path) -> Path:
    """``samples.jsonl`` -> ``samples-sanitized.jsonl`` (EvalPlus's naming)."""
    p = Path(path)
    return p.with_name(p.stem + SANITIZED_SUFFIX + p.suffix)


def sanitize_samples(
    path: str | Path, problems: ProblemSet, fmt: str | None = None, out: str | Path | None = None
) -> dict[str, Any]:
    """Write a sanitized copy of samples file ``path`` (default: ``sanitized_path(path)``), atomically.

    Lines that are not samples of ``problems`` are copied unchanged (the scorer reports them). A line that
    is already sanitized (``sanitized: true``) is kept as it is. Returns counts and the output path."""
    out = Path(out) if out is not None else sanitized_path(path)
    counts = {"samples": 0, "changed": 0, "copied_unchanged": 0}
    with (
        open(path, encoding="utf-8", errors="replace") as src,
        atomic_path(out) as tmp,
        open(tmp, "w", encoding="utf-8") as dst,
    ):
        for line in src:
            rec = _sample(line)
            if rec is None or rec["task_id"] not in problems or rec.get("sanitized") is True:
                dst.write(line if line.endswith("\n") else line + "\n")
                counts["copied_unchanged"] += 1
                continue
            code = solution_code(problems[rec["task_id"]], rec["completion"], fmt)
            counts["samples"] += 1
            counts["changed"] += code != rec["completion"]
            rec = {**rec, "completion": code, "raw_completion": rec["completion"], "sanitized": True}
            dst.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return {**counts, "path": str(out)}


def _sample(line: str) -> dict[str, Any] | None:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return None
    ok = (
        isinstance(rec, dict)
        and isinstance(rec.get("task_id"), str)
        and isinstance(rec.get("completion"), str)
    )
    return rec if ok else None
