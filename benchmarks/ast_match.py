"""AST match rate throughput: (training function, HumanEval problem) pairs per second.

Pairs: real functions of the standard library (a seeded sample of files, every function in them) × the
164 HumanEval programs, both as ``textbooks.data.text.similarity.ast_sequence`` strings (names, comments,
docstrings, type annotations and imports removed).

* ``difflib`` (baseline): ``difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()`` per pair, the
  standard-library way to compare two sequences (on a subset of pairs: it is slow).
* ``rapidfuzz loop``: ``Levenshtein.normalized_distance(a, b)`` called per pair from Python.
* ``ours``: ``ast_match_matrix`` (``rapidfuzz.process.cdist``, τ = 1 − normalised Levenshtein), without a
  cutoff, with the stage's default cutoff (τ below 0.5 not computed exactly), and on all cores.

Rounds alternate the methods so a busy machine slows all alike; medians are reported.
Usage: ``python benchmarks/ast_match.py [--rounds 3] [--files 150] [--difflib-pairs 3000]``
"""

from __future__ import annotations

import argparse
import ast
import difflib
import os
import random
import statistics
import time
from collections.abc import Callable

from rapidfuzz.distance import Levenshtein

from textbooks.benchmarks import load_humaneval
from textbooks.data.text.contamination import measured
from textbooks.data.text.similarity import ast_match_matrix, ast_sequence
from textbooks.io import list_source_files, stdlib_dir


def function_sequences(n_files: int, seed: int = 0) -> list[str]:
    files = sorted(list_source_files(stdlib_dir()))
    out = []
    for f in random.Random(seed).sample(files, n_files):
        try:
            tree = ast.parse(f.read_text())
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        out += [
            ast_sequence(n) for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
        ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--files", type=int, default=150, help="stdlib files whose functions are compared")
    ap.add_argument("--difflib-pairs", type=int, default=3000)
    args = ap.parse_args()
    t0 = time.perf_counter()
    problems = [ast_sequence(ast.parse(p.code)) for p in measured(load_humaneval())]
    funcs = function_sequences(args.files)
    serialise = (len(problems) + len(funcs)) / (time.perf_counter() - t0)
    pairs = [(a, b) for a in funcs for b in problems]
    few = random.Random(1).sample(pairs, min(args.difflib_pairs, len(pairs)))
    cores = os.cpu_count() or 1
    mean_len = sum(map(len, funcs)) / len(funcs)
    print(
        f"{len(funcs)} stdlib functions (mean {mean_len:.0f} nodes) x {len(problems)} HumanEval programs "
        f"(mean {sum(map(len, problems)) / len(problems):.0f} nodes) = {len(pairs)} pairs; {cores} cores; "
        f"parse + serialise {serialise:.0f} programs/s"
    )

    def run_difflib() -> int:
        for a, b in few:
            difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()
        return len(few)

    def run_loop() -> int:
        for a, b in pairs:
            Levenshtein.normalized_distance(a, b)
        return len(pairs)

    def run_ours(min_match: float, workers: int) -> Callable[[], int]:
        def go() -> int:
            return ast_match_matrix(funcs, problems, min_match=min_match, workers=workers).size

        return go

    methods: dict[str, tuple[Callable[[], int], int]] = {
        "difflib (baseline)": (run_difflib, 1),
        "rapidfuzz per-pair loop": (run_loop, 1),
        "ours, no cutoff, 1 core": (run_ours(0.0, 1), 1),
        "ours, cutoff 0.5, 1 core": (run_ours(0.5, 1), 1),
        f"ours, cutoff 0.5, {cores} cores": (run_ours(0.5, -1), cores),
    }
    rates: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(args.rounds):
        for name, (fn, _) in methods.items():
            t = time.perf_counter()
            n = fn()
            rates[name].append(n / (time.perf_counter() - t))
    base = statistics.median(rates["difflib (baseline)"])
    print(f"{'method':30s} {'pairs/s':>10s} {'pairs/s/core':>12s} {'vs difflib':>10s}")
    for name, (_, used) in methods.items():
        r = statistics.median(rates[name])
        print(f"{name:30s} {r:10.0f} {r / used:12.0f} {r / base:9.0f}x")


if __name__ == "__main__":
    main()
