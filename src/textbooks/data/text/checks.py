"""Synthetic data that is checked, not just generated: code blocks that must parse and run, exercises whose
solutions must pass their own tests.

phi-1 did not check its exercises; later work runs them. A textbook section's ``python`` code blocks are
extracted; each must parse; the blocks of a section, run in order as one program, run in the sandbox
(``textbooks.sandbox``) when they are *self-contained* (only standard-library imports, no name used before it is
defined, no ``input()``): a section whose code fails is dropped. An exercise's solution runs against its own
doctests (the ``>>>`` examples of its docstring) in the sandbox; one without examples has nothing to check it
and is dropped when it came from an LLM (mined functions without doctests are kept, counted as unchecked).
"""

from __future__ import annotations

import ast
import builtins
import doctest
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from textbooks.data.text.similarity import docstring_node

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.DOTALL)
_PYTHON = {"", "python", "python3", "py", "pycon"}
_BUILTINS = frozenset(dir(builtins))
STDLIB = frozenset(sys.stdlib_module_names)
SECTION_DROPS = ("short", "no_code", "syntax", "fails")  # why a textbook section is dropped before dedup
CHECK_CPU_S = 10.0  # CPU seconds a checked program may take before it counts as ``timeout``


def code_blocks(text: str) -> list[str]:
    """The Python code blocks of a Markdown answer, in order (fences tagged python/py or untagged)."""
    return [m.group(2) for m in _FENCE.finditer(text) if m.group(1).lower() in _PYTHON]


def parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def _bound(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif (isinstance(node, ast.ExceptHandler) and node.name) or (
            isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name
        ):
            names.add(node.name)
    return names


def self_contained(code: str) -> bool:
    """Code that can run on its own: it parses, imports only the standard library, uses no name it never
    binds (a name from an earlier section or from prose), and does not read standard input."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] not in STDLIB for a in node.names):
            return False
        if isinstance(node, ast.ImportFrom) and (
            node.level or (node.module or "").split(".")[0] not in STDLIB
        ):
            return False
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "input":
            return False
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return not (used - _bound(tree) - _BUILTINS - {"__name__", "__file__", "__doc__"})


@dataclass(frozen=True)
class SectionCheck:
    """What a textbook section's code is: ``verdict`` a drop reason, or ``run`` (its ``program`` must run in the
    sandbox) or ``kept`` (code that parses but is not self-contained: kept without running)."""

    verdict: str
    blocks: int = 0
    program: str = ""


def check_section(text: str, min_chars: int) -> SectionCheck:
    """The static checks of a section, in order: long enough, has code, every block parses; then whether its
    blocks, joined in order, can run on their own."""
    if len(text) < min_chars:
        return SectionCheck("short")
    blocks = code_blocks(text)
    if not blocks:
        return SectionCheck("no_code")
    if not all(parses(b) for b in blocks):
        return SectionCheck("syntax", len(blocks))
    program = "\n\n".join(b.rstrip() for b in blocks) + "\n"
    if self_contained(program):
        return SectionCheck("run", len(blocks), program)
    return SectionCheck("kept", len(blocks))


def doctest_examples(code: str, entry_point: str) -> int:
    """How many ``>>>`` examples the docstring of ``entry_point`` in ``code`` holds (0 when none, or when
    doctest cannot parse them)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return 0
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry_point:
            doc = docstring_node(node)
            if doc is None:
                return 0
            try:
                return len(doctest.DocTestParser().get_examples(doc.value.value))  # type: ignore[attr-defined]
            except ValueError:  # examples doctest cannot read (inconsistent indentation)
                return 0  # nothing to check with
    return 0


# Appended to an exercise: runs its entry point's doctests; the program fails unless every example passes, and
# what is not an ``Exception`` (the sandbox's CPU budget running out, SystemExit) ends it as it would any program.
_DOCTEST_RUNNER = """

def __check_doctests():
    import doctest

    class Runner(doctest.DocTestRunner):
        def report_unexpected_exception(self, out, test, example, exc_info):
            if not isinstance(exc_info[1], Exception):  # the sandbox's CPU budget, an exit: not a failure
                raise exc_info[1]
            super().report_unexpected_exception(out, test, example, exc_info)

    runner = Runner(verbose=False, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder(recurse=False).find({entry}, {entry!r}, globs=dict(globals())):
        runner.run(test, out=lambda text: None)
    if runner.tries == 0 or runner.failures:
        raise AssertionError(f"{{runner.failures}} of {{runner.tries}} doctest examples failed")


__check_doctests()
"""


def doctest_program(code: str, entry_point: str) -> str:
    """``code`` followed by the runner of ``entry_point``'s doctests (the program fails when one fails)."""
    return code.rstrip() + "\n" + _DOCTEST_RUNNER.format(entry=entry_point)


def run_checks(
    programs: Sequence[str], *, cpu_s: float = CHECK_CPU_S, workers: int | None = None
) -> list[str]:
    """Run each program in the sandbox; per program ``passed``, ``fails`` or ``timeout``."""
    if not programs:
        return []
    from textbooks.sandbox import Limits, Program, run_programs

    limits = Limits(setup_cpu_s=cpu_s)
    results = run_programs([Program(setup=p) for p in programs], workers=workers, limits=limits)
    return ["passed" if r.passed else "timeout" if r.status == "timeout" else "fails" for r in results]
