"""EvalPlus's differential tests for HumanEval+ and MBPP+: a completion must agree with the reference
solution on each of the problem's extra inputs (``plus_input``), not only pass the base tests.

The check runs inside the sandboxed program, never in the harness: after the completion and the base
tests, ``PRELUDE`` defines the reference solution in a namespace of its own (so the completion can neither
see nor replace it) and returns ``expect(lo, hi)`` and ``run(lo, hi)``. For every ``CHUNK`` (one) inputs
the program has two tests, the reference's outputs (``expect``) then the completion's, compared
(``run``), so each has its own CPU budget and a failure names its input. Both functions get a deep copy
of the arguments and the outputs are compared with EvalPlus's rules:

* equal (``==``), else, when the problem has an ``atol`` or the expected value is a float or a list of
  floats (then atol 1e-6): the same type and ``|out - exp| <= atol + 1e-7 |exp|`` elementwise;
* HumanEval/32 ``find_zero``: any root, ``|poly(xs, x)| <= atol``;
* MBPP+ ``check_str``, ``text_match_three``, ``text_starta_endb`` (the reference returns match objects):
  only whether the output is None (or, for a bool, whether it equals "not None");
* MBPP+ tasks asking for a collection in no particular order (``similar_elements``, ``find_char_long``,
  ``common_in_nested_lists``, ``extract_singly``, ``larg_nnum``, ``intersection_array``,
  ``find_dissimilar``, ``Diff``): equal as sets;
* MBPP+ tasks whose statement allows another answer: ``are_equivalent`` (any), ``sum_div`` (also 0),
  ``surface_Area`` (also the slant height computed from a perpendicular height), ``digit_distance_nums``
  (also with the shorter number zero-padded).

MBPP+ stores inputs as JSON, so tuples, sets and complex numbers come as lists and strings. Their types
are recovered from the base tests: the first ``assert`` whose call has literal arguments gives a typed
template (``input_template``) that the program applies to every input (lists become the tuples or sets
the template has at that place; an argument that the tests pass as a number and the file stores as
strings of numbers, complex ones included, is parsed back). On the base inputs this reproduces the literal arguments of the asserts for all
but the few tasks whose JSON cannot hold them (integer dict keys), where the reference sees the same
inputs as the completion anyway. Time limits are the sandbox's per-test CPU budgets (10 s per input by
default; EvalPlus gives four times the reference's time, at least 1 s), and the reference runs in every
program rather than once per problem.
"""

from __future__ import annotations

import ast
import json
from typing import Any

from textbooks.benchmarks import Problem

CHUNK = 1  # inputs per program test; each test has its own CPU budget

# Runs in the sandboxed program (see the module docstring). Names start with __textbooks_ so that they
# cannot collide with a completion's.
PRELUDE = r"""
def __textbooks_plus(reference, entry_point, inputs_json, atol, dataset, template, numeric):
    import ast, copy, json, math

    namespace = {"__name__": "__reference__"}
    exec(compile(reference, "<reference solution>", "exec"), namespace)
    ref, main = namespace[entry_point], globals()
    like = ast.literal_eval(template) if template else None
    seqs = (tuple, list, set, frozenset)

    def pick(container, i, v):
        items = list(container.values()) if isinstance(container, dict) else list(container)
        if not items:
            return container if isinstance(v, list) and isinstance(container, seqs) else None
        same = items[min(i, len(items) - 1)]
        want = seqs if isinstance(v, list) else dict if isinstance(v, dict) else None
        if want is None or isinstance(same, want):
            return same
        # no element of that kind: nested deeper than the template, which then describes itself
        return next((x for x in items if isinstance(x, want)), container if isinstance(container, want) else same)

    def conform(value, t):
        if isinstance(value, list) and isinstance(t, seqs):
            return type(t)(conform(v, pick(t, i, v)) for i, v in enumerate(value))
        if isinstance(value, dict) and isinstance(t, dict):
            return {k: conform(v, t[k] if k in t else pick(t, 0, v)) for k, v in value.items()}
        return value

    def decode(args):
        if like is None:
            return args
        out = []
        for k, v in enumerate(args):
            t = like[k] if k < len(like) else None
            if k < len(numeric) and numeric[k] and isinstance(v, str):
                out.append(complex(v) if isinstance(t, complex) or "j" in v else float(v))
            else:
                out.append(conform(v, t))
        return out

    inputs = [decode(a) for a in json.loads(inputs_json)]

    def floats(x):
        return isinstance(x, float) or (
            isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(v, float) for v in x)
        )

    def close(a, b, tol):
        if isinstance(b, (list, tuple)):
            return isinstance(a, (list, tuple)) and len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))
        try:
            return abs(a - b) <= tol + 1e-07 * abs(b)
        except TypeError:
            return a == b

    def slant_surface(base_edge, height):
        return round(base_edge**2 + 2 * base_edge * math.sqrt((base_edge / 2) ** 2 + height**2))

    def padded_digit_distance(a, b):
        n = max(len(str(a)), len(str(b)))
        return sum(abs(int(x) - int(y)) for x, y in zip(str(a).zfill(n), str(b).zfill(n)))

    not_none = ("check_str", "text_match_three", "text_starta_endb")
    as_sets = ("similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly",
               "larg_nnum", "intersection_array", "find_dissimilar", "Diff")

    def same(out, exp, args):
        if dataset == "humaneval" and entry_point == "find_zero":
            return abs(sum(c * math.pow(out, k) for k, c in enumerate(args[0]))) <= atol
        if dataset == "mbpp" and entry_point in not_none:
            flag = exp is not None
            return out == flag if isinstance(out, bool) else (out is not None) == flag
        ok = out == exp
        if dataset == "mbpp":
            if entry_point == "are_equivalent":
                ok = True
            elif entry_point == "sum_div":
                ok = ok or out == 0
            elif entry_point == "surface_Area":
                ok = ok or abs(out - slant_surface(*args)) <= atol
            elif entry_point == "digit_distance_nums":
                ok = ok or out == padded_digit_distance(*args)
            elif entry_point in as_sets:
                ok = set(out) == set(exp)
        tol = 1e-6 if atol == 0 and floats(exp) else atol
        if not ok and tol != 0:
            ok = type(out) is type(exp) and close(out, exp, tol)
        return bool(ok)

    expected = {}

    def expect(lo, hi):  # a test of its own, so that the reference has its own CPU budget
        for i in range(lo, min(hi, len(inputs))):
            expected[i] = ref(*copy.deepcopy(inputs[i]))

    def run(lo, hi):
        fn = main[entry_point]
        for i in range(lo, min(hi, len(inputs))):
            out = fn(*copy.deepcopy(inputs[i]))
            exp = expected.pop(i)
            assert same(out, exp, inputs[i]), f"plus input {i}: expected {exp!r:.200}, got {out!r:.200}"

    return expect, run
"""


def plus_inputs(problem: Problem) -> list[Any]:
    """The extra inputs of a HumanEval+ or MBPP+ problem (empty for other benchmarks)."""
    if problem.benchmark not in ("humaneval+", "mbpp+"):
        return []
    return list(problem.extra.get("plus_input") or ())


def _literal_args(problem: Problem) -> list[list[Any] | None]:
    """The arguments of each call of the entry point in the base asserts, in source order (None where
    they are not literals)."""
    try:
        tree = ast.parse(problem.test)
    except SyntaxError:
        return []
    calls = sorted(
        (
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == problem.entry_point
        ),
        key=lambda n: (n.lineno, n.col_offset),
    )
    out: list[list[Any] | None] = []
    for call in calls:
        try:
            out.append([ast.literal_eval(a) for a in call.args])
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            out.append(None)
    return out


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float | complex) and not isinstance(x, bool)


def input_template(problem: Problem) -> tuple[str | None, list[bool]]:
    """MBPP+: (``repr`` of the typed arguments of the first literal base test, which arguments the file
    stores as strings of numbers); ``(None, [])`` where there is nothing to recover."""
    if problem.benchmark != "mbpp+":
        return None, []
    base = problem.extra.get("base_input") or []
    pairs = [(b, a) for b, a in zip(base, _literal_args(problem)) if a is not None and len(a) == len(b)]
    if not pairs:
        return None, []
    like = pairs[0][1]
    text = repr(like)
    try:
        if ast.literal_eval(text) != like:  # e.g. a NaN argument
            return None, []
    except (ValueError, SyntaxError):  # e.g. inf, which repr writes as a name
        return None, []
    every = base + plus_inputs(problem)
    numeric = [
        _is_number(like[k]) and _numbers_as_strings([x[k] for x in every if len(x) > k])
        for k in range(len(like))
    ]
    return text, numeric


def _numbers_as_strings(values: list[Any]) -> bool:
    """Whether some of an argument's values are strings and all are numbers or strings of numbers (the
    file's way of storing complex numbers)."""
    if not any(isinstance(v, str) for v in values):
        return False
    for v in values:
        if isinstance(v, str):
            try:
                complex(v)
            except ValueError:
                return False
        elif not _is_number(v):
            return False
    return True


def plus_code(problem: Problem) -> tuple[str, tuple[str, ...]]:
    """(code to append to the program's setup, the program tests) of ``problem``'s differential tests;
    ``("", ())`` when it has none."""
    inputs = plus_inputs(problem)
    if not inputs:
        return "", ()
    if problem.benchmark == "humaneval+":
        reference, dataset = problem.prompt + problem.canonical_solution, "humaneval"
    else:
        reference, dataset = problem.canonical_solution, "mbpp"
    template, numeric = input_template(problem)
    atol = float(problem.extra.get("atol") or 0)
    call = (
        f"__textbooks_plus_expect, __textbooks_plus_run = __textbooks_plus({reference!r}, {problem.entry_point!r}, "
        f"{json.dumps(inputs)!r}, {atol!r}, {dataset!r}, {template!r}, {numeric!r})\n"
    )
    tests = tuple(
        f"__textbooks_plus_{step}({i}, {i + CHUNK})"
        for i in range(0, len(inputs), CHUNK)
        for step in ("expect", "run")
    )
    return PRELUDE + call, tests
