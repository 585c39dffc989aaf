"""EvalPlus's rules for HumanEval+ and MBPP+ (0.3.x): the inputs, the comparison, the time limits.

* ``inputs``: a problem's ``base`` or ``plus`` inputs as EvalPlus passes them (MBPP+ stores tuples, sets
  and complex numbers as JSON: ``mbpp_deserialize_inputs``, EvalPlus's own table, gives them back);
* ``Comparison``: equal (``==``); the special oracles of ``_special_oracle.py`` (match objects, set
  equality, alternative answers, ``find_zero``'s root); otherwise, when the problem has an ``atol`` or an
  expected output is a float or a list of floats, ``numpy.allclose``;
* ``time_limits``/``group_wall``: ``max(4 s, 4 x the reference's time)`` per call and
  ``min(60 s, their sum) + 2 s`` per group; ``SAMPLE_RECURSION_ROOM``: the room EvalPlus leaves below the
  function for recursion.

``textbooks.eval.verdicts.plus`` says how they are applied, and where this package differs on purpose.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from textbooks.benchmarks import Problem

PLUS_BENCHMARKS = ("humaneval+", "mbpp+")
MIN_TIME_LIMIT_S = 4.0  # per call: max(MIN_TIME_LIMIT_S, TIME_LIMIT_FACTOR x the reference's time)
TIME_LIMIT_FACTOR = 4.0
TASK_TIMEOUT_S = 60.0  # EvalPlus's EVALPLUS_TIMEOUT_PER_TASK: a group's wall clock is at most this ...
GROUP_SLACK_S = 2.0  # ... or the sum of its limits, plus EvalPlus's two seconds of join slack
# Nested calls that fit below a function EvalPlus calls (Python 3.11, recursion limit 1000): its own frames
# count against the limit, so a solution that recurses ~970 deep passes the ground truth run from its main
# process (987) and fails as a sample called inside its worker processes (966). Measured with
# evalplus 0.3.1's ``evaluate`` (a function that recursed until RecursionError, as reference and sample).
SAMPLE_RECURSION_ROOM = 966
REFERENCE_RECURSION_ROOM = 987

# evalplus/eval/_special_oracle.py
MBPP_OUTPUT_NOT_NONE_TASKS = ("check_str", "text_match_three", "text_starta_endb")
MBPP_OUTPUT_SET_EQ_TASKS = (
    "similar_elements",  # Mbpp/2
    "find_char_long",  # Mbpp/7
    "common_in_nested_lists",  # Mbpp/111
    "extract_singly",  # Mbpp/140
    "larg_nnum",  # Mbpp/232
    "intersection_array",  # Mbpp/249
    "find_dissimilar",  # Mbpp/579
    "Diff",  # Mbpp/769
)
# checks that look at the call's arguments, which a sample may have changed (EvalPlus sees the change)
USES_ARGUMENTS = ("find_zero", "surface_Area", "digit_distance_nums")


def is_plus(problem: Problem) -> bool:
    return problem.benchmark in PLUS_BENCHMARKS


def dataset(problem: Problem) -> str:
    """EvalPlus's name of the problem's dataset."""
    return "humaneval" if problem.benchmark == "humaneval+" else "mbpp"


def plus_inputs(problem: Problem) -> list[Any]:
    """The extra inputs of a HumanEval+ or MBPP+ problem (empty for other benchmarks)."""
    return inputs(problem, "plus") if is_plus(problem) else []


def inputs(problem: Problem, which: str) -> list[Any]:
    """``base`` or ``plus`` inputs, as EvalPlus passes them (MBPP+: ``mbpp_deserialize_inputs``)."""
    raw = list(problem.extra.get(f"{which}_input") or ())
    return mbpp_deserialize_inputs(problem.task_id, raw) if problem.benchmark == "mbpp+" else raw


def reference_code(problem: Problem) -> str:
    """What EvalPlus executes as the ground truth: prompt + canonical solution (both datasets)."""
    return problem.prompt + problem.canonical_solution


def mbpp_deserialize_inputs(task_id: str, inputs: list) -> list:
    """EvalPlus 0.3.1's ``evalplus.data.mbpp.mbpp_deserialize_inputs`` (Apache-2.0), unchanged: MBPP+
    stores tuples, sets and complex numbers as JSON lists and strings; this table gives them back."""
    n = int(task_id.split("/")[-1])
    if n in (
        2,
        116,
        132,
        143,
        222,
        261,
        273,
        394,
        399,
        421,
        424,
        429,
        470,
        560,
        579,
        596,
        616,
        630,
        726,
        740,
        744,
        809,
    ):
        return [[tuple(lst) for lst in inp] for inp in inputs]
    if n in (63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780):
        return [[[tuple(lst) for lst in lst_lst] for lst_lst in inp] for inp in inputs]
    if n in (75, 413, 444, 753):
        return [[[tuple(lst) for lst in inp[0]], inp[1]] for inp in inputs]
    if n in (106, 750):
        return [[inp[0], tuple(inp[1])] for inp in inputs]
    if n == 115:
        return [
            [[set(item) if isinstance(item, list) and len(item) else {} for item in inp[0]]] for inp in inputs
        ]
    if n == 124:
        return [(float(inp[0]), complex(inp[1])) for inp in inputs]
    if n in (250, 405, 446, 617, 720, 763, 808):
        return [[tuple(inp[0]), inp[1]] for inp in inputs]
    if n in (259, 401, 445):
        out = [[[tuple(lst) for lst in lst_lst] for lst_lst in inp] for inp in inputs]
        return [[tuple(lst) for lst in inp] for inp in out]
    if n == 278:
        out = [[[tuple(item) if isinstance(item, list) else item for item in inp[0]]] for inp in inputs]
        return [[tuple(lst) for lst in inp] for inp in out]
    if n == 307:
        return [[tuple(inp[0]), inp[1], inp[2]] for inp in inputs]
    if n == 722:
        return [[{key: tuple(value) for key, value in inp[0].items()}, *inp[1:]] for inp in inputs]
    if n == 252:
        return [[complex(inp[0])] for inp in inputs]
    if n in (580, 615, 791):

        def tuples(x: Any) -> Any:
            return tuple(tuples(i) for i in x) if isinstance(x, list) else x

        return [tuples(inp) for inp in inputs]
    return inputs


# EvalPlus's comparison (evalplus/eval/__init__.py: unsafe_execute, is_floats, _special_oracle.py)


def _poly(xs: list, x: float) -> float:
    return sum([coeff * math.pow(x, i) for i, coeff in enumerate(xs)])


def _surface_area(base_edge: float, height: float) -> int:
    slant_height = math.sqrt((base_edge / 2) ** 2 + height**2)
    return round(base_edge**2 + 4 * (base_edge * slant_height) / 2)


def _digit_distance_nums(num1: int, num2: int) -> int:
    s1, s2 = str(num1), str(num2)
    n = max(len(s1), len(s2))
    return sum(abs(int(a) - int(b)) for a, b in zip(s1.zfill(n), s2.zfill(n)))


def is_floats(x: Any) -> bool:
    """A float, or a non-empty list or tuple of floats (EvalPlus's ``is_floats``)."""
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(i, float) for i in x)
    return False


class Comparison:
    """EvalPlus's check of one group's outputs, in order; ``atol`` changes as EvalPlus's variable does."""

    def __init__(self, problem: Problem) -> None:
        self.dataset, self.entry = dataset(problem), problem.entry_point
        self.atol = float(problem.extra.get("atol") or 0)

    def __call__(self, out: Any, exp: Any, inp: Sequence[Any]) -> bool:
        import numpy as np

        atol = self.atol
        try:
            exact_match = out == exp
            if self.dataset == "mbpp":
                if self.entry == "are_equivalent":  # Mbpp/164
                    exact_match = exact_match or True
                elif self.entry == "sum_div":  # Mbpp/295
                    exact_match = exact_match or out == 0
                elif self.entry == "surface_Area":  # Mbpp/581
                    exact_match = exact_match or abs(out - _surface_area(*inp)) <= atol
                elif self.entry == "digit_distance_nums":  # Mbpp/558
                    exact_match = exact_match or out == _digit_distance_nums(*inp)
                elif self.entry in MBPP_OUTPUT_SET_EQ_TASKS:
                    exact_match = set(out) == set(exp)
                elif self.entry in MBPP_OUTPUT_NOT_NONE_TASKS:
                    exact_match = out == exp if isinstance(out, bool) else exp == (out is not None)
            if self.dataset == "humaneval" and self.entry == "find_zero":
                return bool(abs(_poly(*inp, out)) <= atol)
            if atol == 0 and is_floats(exp):
                atol = self.atol = 1e-6  # enforced for float comparison, and for every later input
            if not exact_match and atol != 0:
                if type(out) is not type(exp):
                    return False
                if isinstance(exp, (list, tuple)) and len(out) != len(exp):
                    return False
                return bool(np.allclose(out, exp, rtol=1e-07, atol=atol))
            return bool(exact_match)
        except BaseException:  # EvalPlus counts any exception in its checks as a failure
            return False


def time_limits(
    ref_times: Sequence[float], min_s: float = MIN_TIME_LIMIT_S, factor: float = TIME_LIMIT_FACTOR
) -> tuple[float, ...]:
    return tuple(max(min_s, factor * t) for t in ref_times)


def group_wall(limits: Sequence[float]) -> float:
    return min(TASK_TIMEOUT_S, sum(limits)) + GROUP_SLACK_S
