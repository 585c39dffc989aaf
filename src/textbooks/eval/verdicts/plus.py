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
* MBPP+ inputs are stored as JSON: ``mbpp_deserialize_inputs`` (EvalPlus's own table, in
  ``textbooks.benchmarks.evalplus``) gives them their tuples, sets and complex numbers back; the program
  runs without ``__name__ == "__main__"``, without what EvalPlus's ``reliability_guard`` takes away
  (``open``, ``os.remove``, ``exit`` ... are None), and with as much room below the function for
  recursion as EvalPlus leaves (``SAMPLE_RECURSION_ROOM``).

Only plain data crosses from the sample's program to this comparison (``textbooks.sandbox.server.plain``): an
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

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from textbooks.benchmarks import Problem
from textbooks.eval.verdicts.plus_references import Reference, References, encoded_inputs, progress_bar
from textbooks.eval.verdicts.plus_rules import (
    MIN_TIME_LIMIT_S,
    SAMPLE_RECURSION_ROOM,
    TIME_LIMIT_FACTOR,
    Comparison,
    group_wall,
    time_limits,
    uses_arguments,
)
from textbooks.sandbox import CallGroup, CallProgram, CallsResult, ExecResult, Sandbox

MESSAGE_CHARS = 200


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
        inputs=encoded if encoded is not None else encoded_inputs(problem, which),
        groups=(CallGroup(len(limits), limits, group_wall(limits)),),
        return_args=uses_arguments(problem),
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
            inp = rec[3] if len(rec) > 3 and isinstance(rec[3], list) else ()  # uses_arguments only
            if compare(rec[1], expected[i], inp):
                seen.passed_calls = i + 1
                return True
            why = compare.why(_short(rec[1]), _short(expected[i]))
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
    bar = progress_bar(progress, len(items), "executing")

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
