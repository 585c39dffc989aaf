"""Synthetic data that is checked, not just generated: code blocks that must parse and run, exercises whose
solutions must pass their own tests.

phi-1 did not check its exercises; later work runs them. A textbook section's ``python`` code blocks are
extracted; each must parse; the blocks of a section, run in order as one program, run in the sandbox
(``textbooks.sandbox``) when they are *self-contained* (only standard-library imports, no name used before it is
defined, no ``input()``): a section whose code fails is dropped. An exercise's solution runs against its own
doctests (the ``>>>`` examples of its docstring) in the sandbox; one without examples has nothing to check it
and is dropped when it came from an LLM (mined functions without doctests are kept, counted as unchecked).
For an exercise that fails, ``failures_program`` reports which tests failed and what each call returned.
"""

from __future__ import annotations

import ast
import builtins
import doctest
import re
import sys
import textwrap
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
    """The Python code blocks of a Markdown answer, in order: fences tagged python/py, and untagged fences
    that parse (an untagged fence that does not is the output or data the text shows, e.g. CSV lines). A fence
    indented under a list item has its content indented as much: it is dedented, as Markdown renders it."""
    blocks = []
    for m in _FENCE.finditer(text):
        tag, code = m.group(1).lower(), textwrap.dedent(m.group(2))
        if tag in _PYTHON and (tag or parses(code)):
            blocks.append(code)
    return blocks


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


# Appended to an exercise: runs its entry point's doctests; the program fails when an example fails (or, for
# ``doctest_program``, when there is none), and what is not an ``Exception`` (the sandbox's CPU budget running out, SystemExit) ends it as it would any program.
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
    if {none_fails}runner.failures:
        raise AssertionError(f"{{runner.failures}} of {{runner.tries}} doctest examples failed")


__check_doctests()
"""


def doctest_program(code: str, entry_point: str) -> str:
    """``code`` followed by the runner of ``entry_point``'s doctests (the program fails when one fails)."""
    return (
        code.rstrip() + "\n" + _DOCTEST_RUNNER.format(entry=entry_point, none_fails="runner.tries == 0 or ")
    )


# -- exercises: what their tests are, and whether they test anything ------------------------------------------
EXERCISE_DROPS = (
    "no_tests",
    "one_test",
    "same_expected",
    "prose_tests",
    "constant_passes",
)  # degenerate tests


@dataclass(frozen=True)
class TestCase:
    """One example an exercise is checked with: a call of its entry point and the value it must give."""

    kind: str  # "doctest" (a ``>>>`` example of the docstring) or "assert" (an ``assert`` line)
    call: str  # the source that calls the entry point
    expected: str  # the expected value's source (an ``assert``) or output (a doctest)
    value: str  # ``expected`` normalised (``repr`` of a literal), to compare the expected values
    literal: bool  # ``expected`` is a Python expression (not printed text)


def _calls(node: ast.AST, name: str) -> bool:
    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == name for n in ast.walk(node)
    )


def _normal(expr: str) -> tuple[str, bool]:
    """(a comparable form of ``expr``, whether it is a Python expression)."""
    try:
        node = ast.parse(expr.strip(), mode="eval")
    except (SyntaxError, ValueError):
        return " ".join(expr.split()), False
    try:
        return repr(ast.literal_eval(node)), True
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return ast.unparse(node), True


def _function(code: str, entry_point: str) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry_point:
            return node
    return None


def _assert_case(stmt: ast.Assert, entry_point: str) -> TestCase | None:
    test = stmt.test
    if not _calls(test, entry_point):
        return None
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], (ast.Eq, ast.Is)):
        left, right = test.left, test.comparators[0]
        call, want = (left, right) if _calls(left, entry_point) else (right, left)
        if not _calls(want, entry_point):
            value, literal = _normal(ast.unparse(want))
            return TestCase("assert", ast.unparse(call), ast.unparse(want), value, literal)
    if isinstance(test, ast.Call):  # assert f(x): expects a true value
        return TestCase("assert", ast.unparse(test), "True", "True", True)
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and isinstance(test.operand, ast.Call):
        return TestCase("assert", ast.unparse(test.operand), "False", "False", True)
    src = ast.unparse(test)  # another condition (a tolerance, a membership): its own expectation
    return TestCase("assert", src, src, src, False)


def _statements(tests: str) -> list[ast.stmt]:
    """The top-level statements of ``tests`` (none when it does not parse)."""
    try:
        return ast.parse(tests).body if tests.strip() else []
    except (SyntaxError, ValueError):
        return []


def exercise_tests(code: str, entry_point: str, tests: str = "") -> list[TestCase]:
    """The examples that test ``entry_point``: its docstring's ``>>>`` examples that call it and show a result,
    then the ``assert`` lines of ``tests`` that call it; the same call with the same expected value once."""
    cases: list[TestCase] = []
    node = _function(code, entry_point)
    doc = docstring_node(node) if node is not None else None
    if doc is not None:
        try:
            examples = doctest.DocTestParser().get_examples(doc.value.value)  # type: ignore[attr-defined]
        except ValueError:
            examples = []
        for ex in examples:
            try:
                calls = _calls(ast.parse(ex.source), entry_point)
            except (SyntaxError, ValueError):
                calls = False
            if calls and ex.want.strip():
                value, literal = _normal(ex.want)
                cases.append(TestCase("doctest", ex.source.strip(), ex.want.strip(), value, literal))
    for stmt in _statements(tests):
        if isinstance(stmt, ast.Assert) and (case := _assert_case(stmt, entry_point)) is not None:
            cases.append(case)
    seen: set[tuple[str, str]] = set()
    unique = []
    for c in cases:
        key = (" ".join(c.call.replace('"', "'").split()), c.value)
        if key not in seen:
            seen.add(key)
            unique.append(c)
    return unique


def _prose(code: str, entry_point: str) -> str:
    """The entry point's docstring without its ``>>>`` examples and their output."""
    node = _function(code, entry_point)
    doc = docstring_node(node) if node is not None else None
    if doc is None:
        return ""
    parts = doctest.DocTestParser().parse(str(doc.value.value))  # type: ignore[attr-defined]
    return " ".join(" ".join(p.split()) for p in parts if isinstance(p, str))


def degenerate_tests(code: str, entry_point: str, tests: str = "") -> str | None:
    """Why an exercise's tests check nothing real (``None``: they may): ``no_tests`` (no example calls the
    entry point and shows a result), ``one_test``, ``same_expected`` (every example expects the same value:
    a constant passes), ``prose_tests`` (an expected "value" is a sentence of the docstring's prose, not a
    result). Whether a constant solution passes is ``constant_program``'s run."""
    cases = exercise_tests(code, entry_point, tests)
    if not cases:
        return "no_tests"
    if len(cases) < 2:
        return "one_test"
    if len({c.value for c in cases}) < 2:
        return "same_expected"
    prose = _prose(code, entry_point)
    for c in cases:
        text = " ".join(c.expected.split())
        if not c.literal and len(re.findall(r"[A-Za-z]{2,}", text)) >= 3 and text in prose:
            return "prose_tests"
    return None


def exercise_program(code: str, entry_point: str, tests: str = "") -> str:
    """``code``, then its ``assert`` lines, then the runner of ``entry_point``'s doctests: the program fails
    when one of them fails."""
    asserts = ("\n\n" + tests.rstrip() + "\n") if tests.strip() else "\n"
    return code.rstrip() + "\n" + asserts + _DOCTEST_RUNNER.format(entry=entry_point, none_fails="")


def constant_program(code: str, entry_point: str, tests: str = "") -> str | None:
    """The exercise with its entry point's body replaced by a constant: ``return`` the first expected value
    (``print`` it when a doctest expects printed text). A solution this dumb must fail the tests; ``None``
    when there is no test to take a value from."""
    cases = exercise_tests(code, entry_point, tests)
    node = _function(code, entry_point)
    if not cases or node is None:
        return None
    first = next((c for c in cases if c.literal), cases[0])
    doc = docstring_node(node)
    body: list[ast.stmt] = [doc] if doc is not None else []
    stmt = f"return {first.expected}" if first.literal else f"print({first.expected!r})"
    try:
        body.append(ast.parse(stmt).body[0])
    except (SyntaxError, ValueError):
        return None
    tree = ast.parse(code)
    for i, top in enumerate(tree.body):
        if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef)) and top.name == entry_point:
            top.body = body
            tree.body[i] = top
    return exercise_program(ast.unparse(ast.fix_missing_locations(tree)), entry_point, tests)


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


# -- exercises: which tests failed and what the calls gave (to re-derive a wrong expected value) -------------
_FAILURES_MARK = "\x1ffailures:"  # starts the line the failures program prints its report on

# Appended to an exercise instead of the checks: runs every test (each ``assert`` statement on its own, then the
# doctests) and prints what failed and what the call gave. What it prints only decides which values to ask for
# again: the verdict on a corrected exercise is ``run_checks``'s, as for any other.
_FAILURES_RUNNER = """

def __report_failures():
    import contextlib, doctest, io, json

    failed = []

    def cut(text):
        text = str(text).strip()
        return text if len(text) <= 300 else text[:300] + " ..."

    def raised(exc):
        return cut(f"{{type(exc).__name__}}: {{exc}}")

    def quiet():
        return contextlib.redirect_stdout(io.StringIO())

    for source, call in {asserts!r}:
        try:
            with quiet():
                exec(compile(source, "<assert>", "exec"), dict(globals()))
        except AssertionError:
            one = {{"test": source, "call": call}}
            if call:
                try:
                    with quiet():
                        one["got"] = cut(repr(eval(call, dict(globals()))))
                except Exception as exc:
                    one["raised"] = raised(exc)
            failed.append(one)
        except Exception as exc:
            failed.append({{"test": source, "raised": raised(exc)}})

    class Runner(doctest.DocTestRunner):
        def report_failure(self, out, test, example, got):
            failed.append({{"test": ">>> " + example.source.strip(), "expected": cut(example.want), "got": cut(got)}})

        def report_unexpected_exception(self, out, test, example, exc_info):
            if not isinstance(exc_info[1], Exception):
                raise exc_info[1]
            failed.append({{"test": ">>> " + example.source.strip(), "expected": cut(example.want),
                           "raised": raised(exc_info[1])}})

    runner = Runner(verbose=False, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder(recurse=False).find({entry}, {entry!r}, globs=dict(globals())):
        runner.run(test, out=lambda text: None)
    print({mark!r} + json.dumps(failed))


__report_failures()
"""


@dataclass(frozen=True)
class Failure:
    """A test an exercise failed: its source (an ``assert`` statement or a ``>>>`` example), what a doctest
    expected, and what the call gave (``got``: its ``repr``, or a doctest's output) or ``raised``."""

    test: str
    expected: str = ""
    got: str | None = None
    raised: str | None = None
    call: str | None = None  # of a failed ``assert <call> == <expected value>``


def failures_program(code: str, entry_point: str, tests: str = "") -> str:
    """``code`` followed by a runner that tries each of its tests (``tests``' ``assert`` statements one by one,
    then ``entry_point``'s doctests) and prints those that fail, with the value the call gave."""
    asserts = []
    for stmt in _statements(tests):
        case = _assert_case(stmt, entry_point) if isinstance(stmt, ast.Assert) else None
        call = case.call if case is not None and case.literal and case.call != case.expected else None
        asserts.append((ast.unparse(stmt), call))
    return (
        code.rstrip()
        + "\n"
        + _FAILURES_RUNNER.format(asserts=asserts, entry=entry_point, mark=_FAILURES_MARK)
    )


def run_failures(
    programs: Sequence[str], *, cpu_s: float = CHECK_CPU_S, workers: int | None = None
) -> list[list[Failure]]:
    """Run each ``failures_program`` in the sandbox: the tests it failed. A program that fails before its
    tests run (an exception at the top level, a timeout) gives one ``Failure`` whose ``test`` is ``<code>``."""
    if not programs:
        return []
    import json

    from textbooks.sandbox import Limits, Program, run_programs

    limits = Limits(setup_cpu_s=cpu_s)
    out: list[list[Failure]] = []
    for r in run_programs([Program(setup=p) for p in programs], workers=workers, limits=limits):
        # the runner's report is its last line, not one the code printed before it
        lines = reversed(r.stdout.splitlines())
        report = next((ln for ln in lines if ln.startswith(_FAILURES_MARK)), None)
        if r.passed and report is not None:
            try:
                failed = json.loads(report[len(_FAILURES_MARK) :])
                out.append(
                    [Failure(**{k: None if v is None else str(v) for k, v in f.items()}) for f in failed]
                )
                continue
            except (ValueError, TypeError):
                pass  # the program printed a line of its own that looks like the report
        if r.status == "timeout":
            what = "timed out"
        elif r.passed:  # ran, but its report was not among the output kept
            what = "printed more output than is kept"
        else:
            what = f"{r.error_type}: {r.message}" if r.message else str(r.error_type)
        out.append([Failure("<code>", raised=what[:300])])
    return out


def same_value(a: str, b: str) -> bool:
    """Whether the Python literals ``a`` and ``b`` are the same value (``1.0`` and ``1``, ``'x'`` and ``"x"``,
    not ``True`` and ``1``); ``False`` when either is not a literal."""
    try:
        x, y = ast.literal_eval(a.strip()), ast.literal_eval(b.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y))
    return (type(x) is type(y) or numbers) and x == y


def with_asserts(tests: str, replaced: dict[str, str]) -> str:
    """``tests`` with each statement whose source (``ast.unparse``) is a key of ``replaced`` replaced by its
    value (the corrected assert)."""
    return "".join(replaced.get(src, src) + "\n" for src in (ast.unparse(s) for s in _statements(tests)))
