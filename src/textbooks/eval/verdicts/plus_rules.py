"""EvalPlus's rules for HumanEval+ and MBPP+ (0.3.x): the comparison and the time limits.

* ``Comparison``: equal (``==``), or what the dataset's special oracles say (``_special_oracle.py``: match
  objects, set equality, alternative answers, ``find_zero``'s root: each family's own, in
  ``textbooks.benchmarks.evalplus``); otherwise, when the problem has an ``atol`` or an expected output is
  a float or a list of floats, ``numpy.allclose``;
* ``time_limits``/``group_wall``: ``max(4 s, 4 x the reference's time)`` per call and
  ``min(60 s, their sum) + 2 s`` per group; ``SAMPLE_RECURSION_ROOM``: the room EvalPlus leaves below the
  function for recursion.

``textbooks.eval.verdicts.plus`` says how they are applied, and where this package differs on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from textbooks.benchmarks import Problem
from textbooks.benchmarks.evalplus import EvalPlusFamily, evalplus_family

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


def is_plus(benchmark: str) -> bool:
    """Whether EvalPlus's rules score ``benchmark`` (HumanEval+, MBPP+)."""
    return evalplus_family(benchmark) is not None


def plus_family(problem: Problem) -> EvalPlusFamily:
    """The family whose EvalPlus rules score ``problem``."""
    family = evalplus_family(problem.benchmark)
    if family is None:
        raise ValueError(f"{problem.benchmark} is not scored by EvalPlus's rules")
    return family


def inputs(problem: Problem, which: str) -> list[Any]:
    """``base`` or ``plus`` inputs, as EvalPlus passes them (MBPP+: ``mbpp_deserialize_inputs``)."""
    return plus_family(problem).inputs(problem, which)


def uses_arguments(problem: Problem) -> bool:
    """Whether the check looks at the call's arguments, which a sample may have changed (EvalPlus sees the
    change): then the program sends them back with the output."""
    return problem.entry_point in plus_family(problem).uses_arguments


# EvalPlus's comparison (evalplus/eval/__init__.py: unsafe_execute, is_floats, _special_oracle.py)


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
        self.family, self.entry = plus_family(problem), problem.entry_point
        self.atol = float(problem.extra.get("atol") or 0)

    def __call__(self, out: Any, exp: Any, inp: Sequence[Any]) -> bool:
        import numpy as np

        atol = self.atol
        try:
            exact_match = self.family.exact_match(self.entry, out, exp, inp, atol)
            verdict = self.family.verdict(self.entry, out, inp, atol)
            if verdict is not None:
                return verdict
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

    def why(self, shown_out: str, shown_exp: str) -> str:
        """Why an output failed (``shown_*``: the reprs to show)."""
        special = self.family.mismatch(self.entry, shown_out, self.atol)
        return special if special is not None else f"expected {shown_exp}, got {shown_out}"


def time_limits(
    ref_times: Sequence[float], min_s: float = MIN_TIME_LIMIT_S, factor: float = TIME_LIMIT_FACTOR
) -> tuple[float, ...]:
    return tuple(max(min_s, factor * t) for t in ref_times)


def group_wall(limits: Sequence[float]) -> float:
    return min(TASK_TIMEOUT_S, sum(limits)) + GROUP_SLACK_S
