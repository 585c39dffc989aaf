"""Exercises checked per second by the sandbox (``textbooks.data.text.checks.run_checks``): each solution runs
against its own doctests in a fresh sandboxed process, as the ``exercises`` stage checks every exercise.

The exercises have the shape of a synthetic one (a signature, a docstring with ``>>>`` examples, a
solution of a few lines): HumanEval's problems whose prompt holds examples that their reference solution
passes, repeated to ``--exercises``. **Baseline**: one sandbox worker; then ``--workers`` workers (default: every core). Rounds
alternate the two so that a busy machine slows them alike; medians are reported.

Usage: ``python benchmarks/exercise_checks.py [--exercises 200] [--rounds 3] [--workers N]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from textbooks.benchmarks import load_humaneval
from textbooks.data.text.checks import doctest_examples, doctest_program, run_checks


def exercises(workers: int) -> list[str]:
    """Doctest programs of HumanEval's problems with examples, kept where the reference passes them."""
    programs = [
        doctest_program(p.prompt + p.canonical_solution, p.entry_point)
        for p in load_humaneval()
        if doctest_examples(p.prompt + p.canonical_solution, p.entry_point)
    ]
    return [p for p, v in zip(programs, run_checks(programs, workers=workers)) if v == "passed"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--exercises", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    a = ap.parse_args()
    distinct = exercises(a.workers)
    passing = (distinct * (a.exercises // len(distinct) + 1))[: a.exercises]
    print(f"{len(passing)} exercises ({len(distinct)} distinct HumanEval problems); {os.cpu_count()} CPUs")
    rates: dict[int, list[float]] = {1: [], a.workers: []}
    for _ in range(a.rounds):
        for workers in rates:
            t0 = time.perf_counter()
            verdicts = run_checks(passing, workers=workers)
            rates[workers].append(len(passing) / (time.perf_counter() - t0))
            assert verdicts == ["passed"] * len(passing), "a check that passed once failed"
    base = statistics.median(rates[1])
    for workers, r in rates.items():
        print(
            f"workers={workers:<3} {statistics.median(r):7.1f} exercises/s   ratio {statistics.median(r) / base:.2f}"
        )
    print(f"(script: {Path(__file__).name})")


if __name__ == "__main__":
    main()
