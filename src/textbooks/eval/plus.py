"""HumanEval+ and MBPP+ scored exactly as EvalPlus (0.3.x, ``evalplus.evaluate``) scores them.

A sample passes when its function agrees with the reference solution on every base input (the original
benchmark's test inputs, ``base_input``) and every extra input (``plus_input``); ``base_passed`` counts
the base inputs alone. As in EvalPlus:

* the reference's outputs and its time on each input are computed once per problem (``References``,
  in the sandbox, optionally cached on disk) and shared by every sample; a sample's program holds only
  its own code and the inputs, never the reference or the expected outputs;
* the sample's function is called on each input in turn, the base inputs in one process, then the plus
  inputs in another (a sample's state never carries over), and each output is compared here, in the
  harness, with EvalPlus's rules (``Comparison``): equal (``==``); for the three MBPP+
  tasks whose reference returns a match object, only whether the output is None; for eight MBPP+ tasks
  equal as sets; four MBPP+ tasks accept an alternative answer; ``find_zero`` (HumanEval/32) accepts any
  root ``|poly(xs, x)| <= atol``; otherwise, when the problem has an ``atol`` or an expected output is a
  float or a list of floats (then atol becomes 1e-6 for the rest of that group, as EvalPlus's variable
  does), the same type, the same length and ``numpy.allclose(out, exp, rtol=1e-7, atol=atol)``;
* each call has a wall-clock limit of ``max(4 s, 4 x the reference's time on that input)`` and each group
  (base, plus) at most ``min(60 s, the sum of its limits) + 2 s``; the first wrong output, exception or
  timeout ends the group (EvalPlus's ``fast_check``); a sample that failed its base inputs fails, so its
  plus inputs are not run; one that passed them keeps that verdict whatever its plus inputs do;
* MBPP+ inputs are stored as JSON: ``mbpp_deserialize_inputs`` (EvalPlus's own table) gives them their
  tuples, sets and complex numbers back; the program runs without ``__name__ == "__main__"``, without
  what EvalPlus's ``reliability_guard`` takes away (``open``, ``os.remove``, ``exit`` ... are None), and
  with as much room below the function for recursion as EvalPlus leaves (``SAMPLE_RECURSION_ROOM``).

Only plain data crosses from the sample's program to this comparison (``textbooks.sandbox.plain``): an
object that "equals everything" arrives as an opaque stand-in that equals nothing.

Differences from EvalPlus 0.3.1, on purpose: its ``min_time_limit`` default is 1 s (4 s here, as its
later releases and leaderboard); it fails every ``find_zero`` sample (a ``continue`` skips the progress
counter), here the rule above decides; outputs that are not plain data (generators, custom objects)
never equal an expected value here, whatever their ``__eq__`` says (iterating them still works, so a
generator passes the set-equality tasks as in EvalPlus); outputs over 1 MiB are compared by digest
(``plain.DIGEST_OVER``); programs import the standard library only. An output's time includes sending
it, for the reference as for the sample. ``benchmarks/plus_scoring.py`` measures the agreement.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textbooks.benchmarks import Problem
from textbooks.io import write_json_atomic
from textbooks.sandbox import CallGroup, CallProgram, CallsResult, ExecResult, Limits, Sandbox, plain

PLUS_BENCHMARKS = ("humaneval+", "mbpp+")
MIN_TIME_LIMIT_S = 4.0  # per call: max(MIN_TIME_LIMIT_S, TIME_LIMIT_FACTOR x the reference's time)
TIME_LIMIT_FACTOR = 4.0
TASK_TIMEOUT_S = 60.0  # EvalPlus's EVALPLUS_TIMEOUT_PER_TASK: a group's wall clock is at most this ...
GROUP_SLACK_S = 2.0  # ... or the sum of its limits, plus EvalPlus's two seconds of join slack
REFERENCE_WALL_S = 600.0  # per group, for computing a reference's outputs
# Nested calls that fit below a function EvalPlus calls (Python 3.11, recursion limit 1000): its own frames
# count against the limit, so a solution that recurses ~970 deep passes the ground truth run from its main
# process (987) and fails as a sample called inside its worker processes (966). Measured with
# evalplus 0.3.1's ``evaluate`` (a function that recursed until RecursionError, as reference and sample).
SAMPLE_RECURSION_ROOM = 966
REFERENCE_RECURSION_ROOM = 987
CACHE_VERSION = 1
MESSAGE_CHARS = 200

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


# ----------------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------------
# references


@dataclass
class Reference:
    """The reference solution's outputs and times (seconds) on a problem's base and plus inputs."""

    task_id: str
    base: list[Any] = field(default_factory=list)
    plus: list[Any] = field(default_factory=list)
    base_time: list[float] = field(default_factory=list)
    plus_time: list[float] = field(default_factory=list)
    error: str | None = None  # why the reference itself failed (then every sample of the problem errors)

    def as_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "base": plain.to_json(self.base),
            "plus": plain.to_json(self.plus),
            "base_time": self.base_time,
            "plus_time": self.plus_time,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Reference:
        return cls(
            d["task_id"],
            plain.decode(json.dumps(d["base"])),
            plain.decode(json.dumps(d["plus"])),
            list(d["base_time"]),
            list(d["plus_time"]),
            d.get("error"),
        )


def _encoded_inputs(problem: Problem, which: str) -> bytes:
    return plain.encode([list(a) for a in inputs(problem, which)])


class References:
    """Reference outputs and times per problem, computed once in the sandbox (and kept in ``cache_dir``
    when given, keyed by the reference code, the inputs and this module's rules)."""

    def __init__(self, cache_dir: str | os.PathLike | None = None) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.refs: dict[str, Reference] = {}
        self._inputs: dict[tuple[str, str], bytes] = {}

    def __getitem__(self, task_id: str) -> Reference:
        return self.refs[task_id]

    def encoded_inputs(self, problem: Problem, which: str) -> bytes:
        """``plain.encode`` of the ``base`` or ``plus`` inputs (once per problem)."""
        key = (problem.task_id, which)
        if key not in self._inputs:
            self._inputs[key] = _encoded_inputs(problem, which)
        return self._inputs[key]

    def _cache_path(self, problem: Problem) -> Path | None:
        if self.cache_dir is None:
            return None
        h = hashlib.sha256()
        for part in (
            str(CACHE_VERSION),
            problem.benchmark,
            problem.task_id,
            problem.entry_point,
            reference_code(problem),
        ):
            h.update(part.encode("utf-8", "surrogatepass") + b"\0")
        h.update(self.encoded_inputs(problem, "base"))
        h.update(self.encoded_inputs(problem, "plus"))
        return self.cache_dir / f"{problem.task_id.replace('/', '_')}-{h.hexdigest()[:16]}.json"

    def ensure(self, sandbox: Sandbox, problems: Sequence[Problem], progress: bool = False) -> None:
        """Compute (or load) the references of ``problems`` that are not known yet, in parallel."""
        todo = []
        for p in problems:
            if p.task_id in self.refs:
                continue
            path = self._cache_path(p)
            if path is not None and path.is_file():
                try:
                    self.refs[p.task_id] = Reference.from_json(json.loads(path.read_text()))
                    continue
                except (OSError, ValueError, KeyError, plain.PlainDataError):
                    pass  # recomputed below
            todo.append(p)
        bar = _bar(progress, len(todo), "references")
        with ThreadPoolExecutor(max_workers=sandbox.workers, thread_name_prefix="reference") as pool:
            for p, ref in zip(todo, pool.map(lambda p: compute_reference(sandbox, p), todo)):
                self.refs[p.task_id] = ref
                path = self._cache_path(p)
                if path is not None and ref.error is None:
                    write_json_atomic(path, ref.as_json())
                if bar is not None:
                    bar.update()
        if bar is not None:
            bar.close()


def compute_reference(sandbox: Sandbox, problem: Problem) -> Reference:
    """Run the reference solution on every input in the sandbox; its outputs and times per input."""
    base_in, plus_in = inputs(problem, "base"), inputs(problem, "plus")
    n_base = len(base_in)
    program = CallProgram(
        setup=reference_code(problem),
        entry_point=problem.entry_point,
        inputs=plain.encode([list(a) for a in base_in + plus_in]),
        groups=(CallGroup(n_base, None, REFERENCE_WALL_S), CallGroup(len(plus_in), None, REFERENCE_WALL_S)),
        recursion_room=REFERENCE_RECURSION_ROOM,
    )
    outs: list[Any] = []
    times: list[float] = []
    problem_seen: list[str] = []

    def take(i: int, rec: list) -> bool:
        if i == -1:
            if rec != ["ready"]:
                problem_seen.append(f"setup: {rec}")
            return rec == ["ready"]
        if rec[0] != "ok":
            problem_seen.append(f"input {i}: {str(rec)[:MESSAGE_CHARS]}")
            return False
        outs.append(rec[1])
        times.append(float(rec[2]))
        return True

    r = sandbox.run_calls(program, take, limits=Limits(memory_bytes=sandbox.limits.memory_bytes))
    ref = Reference(problem.task_id)
    if problem_seen or len(outs) != len(base_in) + len(plus_in):
        why = (
            problem_seen[0]
            if problem_seen
            else f"{r.end} after {len(outs)} of {len(base_in) + len(plus_in)} inputs"
        )
        ref.error = f"the reference solution failed ({why}) {r.stderr[-300:]}".strip()
        return ref
    if problem.benchmark == "mbpp+" and problem.entry_point in MBPP_OUTPUT_NOT_NONE_TASKS:
        outs = [o is not None for o in outs]
    ref.base, ref.plus = outs[:n_base], outs[n_base:]
    ref.base_time, ref.plus_time = times[:n_base], times[n_base:]
    return ref


# ----------------------------------------------------------------------------------------------------------
# samples


def time_limits(
    ref_times: Sequence[float], min_s: float = MIN_TIME_LIMIT_S, factor: float = TIME_LIMIT_FACTOR
) -> tuple[float, ...]:
    return tuple(max(min_s, factor * t) for t in ref_times)


def group_wall(limits: Sequence[float]) -> float:
    return min(TASK_TIMEOUT_S, sum(limits)) + GROUP_SLACK_S


def sample_program(
    problem: Problem,
    code: str,
    ref: Reference,
    which: str = "base",
    *,
    encoded: bytes | None = None,
    min_time_limit: float = MIN_TIME_LIMIT_S,
    time_limit_factor: float = TIME_LIMIT_FACTOR,
) -> CallProgram:
    """The program that calls a sample's function on the ``base`` or the ``plus`` inputs (EvalPlus runs
    each group in a process of its own, so a sample's state never carries from one to the other)."""
    limits = time_limits(
        ref.base_time if which == "base" else ref.plus_time, min_time_limit, time_limit_factor
    )
    return CallProgram(
        setup=code,
        entry_point=problem.entry_point,
        inputs=encoded if encoded is not None else _encoded_inputs(problem, which),
        groups=(CallGroup(len(limits), limits, group_wall(limits)),),
        return_args=problem.entry_point in USES_ARGUMENTS,
        evalplus_guard=True,
        recursion_room=SAMPLE_RECURSION_ROOM,
    )


@dataclass
class GroupCheck:
    """What the harness saw of one group of calls: how many passed in order, and the first failure."""

    which: str
    n: int
    passed_calls: int = 0
    failure: tuple[str | int, str, str, str] | None = None  # (phase, status, error type, message)

    @property
    def passed(self) -> bool:
        return self.failure is None and self.passed_calls >= self.n


def _short(x: Any) -> str:
    try:
        text = repr(x)
    except BaseException:
        text = "<unprintable>"
    return text[:MESSAGE_CHARS]


def run_group(
    sandbox: Sandbox,
    problem: Problem,
    program: CallProgram,
    expected: Sequence[Any],
    which: str,
    offset: int = 0,
) -> tuple[GroupCheck, ExecResult]:
    """Run one group of calls and compare each output as it arrives; stops at the first failure.

    ``offset`` numbers the calls (``phase``) after the ones of earlier groups."""
    seen = GroupCheck(which, len(expected))
    compare = Comparison(problem)

    def take(i: int, rec: list) -> bool:
        if i == -1:
            if rec == ["ready"]:
                return True
            if rec[0] in ("setup_error", "raised") and len(rec) == 3:  # raised: no such function
                seen.failure = ("setup", "error", str(rec[1]), str(rec[2]))
            else:
                seen.failure = ("setup", "error", "ProtocolError", _short(rec))
            return False
        if i >= seen.n:
            return False
        where = f"{which} input {i}"
        if rec[0] == "ok" and len(rec) >= 3:
            inp = rec[3] if len(rec) > 3 and isinstance(rec[3], list) else ()  # USES_ARGUMENTS only
            if compare(rec[1], expected[i], inp):
                seen.passed_calls = i + 1
                return True
            if compare.dataset == "humaneval" and compare.entry == "find_zero":
                why = f"|poly(xs, x)| > {compare.atol:g} at x = {_short(rec[1])}"
            else:
                why = f"expected {_short(expected[i])}, got {_short(rec[1])}"
            seen.failure = (offset + i, "failed", "AssertionError", f"{where}: {why}")
        elif rec[0] == "raised" and len(rec) == 3:
            seen.failure = (offset + i, "error", str(rec[1]), f"{where}: {rec[2]}")
        elif rec[0] == "bad":
            seen.failure = (offset + i, "error", "NotPlainData", f"{where}: {rec[1] if len(rec) > 1 else ''}")
        else:
            seen.failure = (offset + i, "error", "ProtocolError", f"{where}: {_short(rec)}")
        return False

    r = sandbox.run_calls(program, take)
    return seen, _result(r, seen, program, offset)


def check_sample(
    sandbox: Sandbox,
    problem: Problem,
    code: str,
    ref: Reference,
    *,
    plus: bool = True,
    references: References | None = None,
    min_time_limit: float = MIN_TIME_LIMIT_S,
    time_limit_factor: float = TIME_LIMIT_FACTOR,
) -> tuple[ExecResult, bool]:
    """Score one sample: (its result, whether it passed the base inputs). The plus inputs run only after
    the base ones passed (the sample fails either way otherwise)."""
    if ref.error is not None:
        return ExecResult("error", "ReferenceError", ref.error), False
    results = []
    for which, expected, offset in (("base", ref.base, 0), ("plus", ref.plus, len(ref.base))):
        if which == "plus" and not (plus and expected):
            break
        program = sample_program(
            problem,
            code,
            ref,
            which,
            encoded=references.encoded_inputs(problem, which) if references is not None else None,
            min_time_limit=min_time_limit,
            time_limit_factor=time_limit_factor,
        )
        seen, result = run_group(sandbox, problem, program, expected, which, offset)
        results.append(result)
        if not seen.passed:
            return result, which != "base"
    if len(results) > 1:  # report the whole sample's time
        last = results[-1]
        last.wall_s = round(sum(r.wall_s for r in results), 4)
        last.cpu_s = (
            None if any(r.cpu_s is None for r in results) else round(sum(r.cpu_s for r in results), 4)
        )
    return results[-1], True


def _result(r: CallsResult, seen: GroupCheck, program: CallProgram, offset: int) -> ExecResult:
    common = {
        "wall_s": r.wall_s,
        "cpu_s": r.cpu_s,
        "exit_code": r.exit_code,
        "signal": r.signal,
        "stdout": r.stdout,
        "stderr": r.stderr,
        "stdout_bytes": r.stdout_bytes,
        "stderr_bytes": r.stderr_bytes,
        "orphans_killed": r.orphans_killed,
    }
    if seen.passed:
        return ExecResult("passed", **common)
    if seen.failure is not None:
        phase, status, etype, message = seen.failure
        return ExecResult(status, etype, message, phase=phase, **common)
    i = seen.passed_calls  # the call that did not answer
    where = f"{seen.which} input {i}"
    phase = offset + i
    if r.end == "call_limit":
        limit = program.groups[0].time_limits[i] if program.groups[0].time_limits else 0
        return ExecResult(
            "timeout", "TimeLimit", f"{where}: over its {limit:g} s limit", phase=phase, **common
        )
    if r.end in ("group_cap", "wall"):
        cap = program.groups[0].wall_s
        return ExecResult(
            "timeout",
            "WallTimeout",
            f"{where}: the {seen.which} inputs' {cap:g} s limit",
            phase=phase,
            **common,
        )
    if r.end == "sandbox":
        return ExecResult("error", "SandboxError", r.message, phase=phase, **common)
    if r.signal and r.end != "stopped":
        return ExecResult("error", r.signal, f"killed by {r.signal} at {where}", phase=phase, **common)
    if r.end == "garbled":
        return ExecResult(
            "error", "ProtocolError", f"garbage instead of {where}'s output", phase=phase, **common
        )
    return ExecResult(
        "error",
        "EarlyExit",
        f"exited with status {r.exit_code} before {where}'s output",
        phase=phase,
        **common,
    )


def score_many(
    sandbox: Sandbox,
    items: Sequence[tuple[Problem, str]],
    *,
    plus: bool = True,
    references: References | None = None,
    progress: bool = False,
    min_time_limit: float = MIN_TIME_LIMIT_S,
    time_limit_factor: float = TIME_LIMIT_FACTOR,
    on_result: Callable[[int, ExecResult], None] | None = None,
) -> tuple[list[ExecResult], list[bool]]:
    """Score (problem, code) pairs of HumanEval+/MBPP+: results and base verdicts, in order.

    References are computed first (once per problem), then samples run on all workers."""
    refs = references if references is not None else References()
    unique = list({p.task_id: p for p, _ in items}.values())
    refs.ensure(sandbox, unique, progress)
    results: list[ExecResult | None] = [None] * len(items)
    base: list[bool] = [False] * len(items)
    bar = _bar(progress, len(items), "executing")

    def one(i: int) -> None:
        p, code = items[i]
        try:
            results[i], base[i] = check_sample(
                sandbox,
                p,
                code,
                refs[p.task_id],
                plus=plus,
                references=refs,
                min_time_limit=min_time_limit,
                time_limit_factor=time_limit_factor,
            )
        except Exception as e:  # one sample never stops the run
            results[i] = ExecResult("error", "HarnessError", f"{type(e).__name__}: {e}")
        if on_result is not None:
            on_result(i, results[i])
        if bar is not None:
            bar.update()

    with ThreadPoolExecutor(max_workers=sandbox.workers, thread_name_prefix="plus") as pool:
        for f in [pool.submit(one, i) for i in range(len(items))]:
            f.result()
    if bar is not None:
        bar.close()
    return results, base  # type: ignore[return-value]


def _bar(progress: bool, total: int, desc: str) -> Any:
    if not progress or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="program")
