"""Measure each data stage's cost per byte of code here, and project it to The Stack (Python) + StackOverflow.

Runs the CPU stages on a real sample (``--input``, default: this environment's site-packages) with the local
executor, reads every manifest's per-step task seconds, peak memory per task and output sizes, and scales the
costs by bytes of input (the stages' work grows with the text they read) to ``--target-bytes`` (default
140 GB: 35B tokens at ~4 bytes per p50k token) and ``--target-docs`` (35M files). Prints a Markdown table.

Usage: ``python experiments/the_stack/measure_costs.py [--input site-packages] [--tasks 4] [--workers 2]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from textbooks.data.engine.executor import ExecutorConfig
from textbooks.data.stages.annotate import AnnotateConfig, annotate
from textbooks.data.stages.decontaminate import DecontaminateConfig, decontaminate
from textbooks.data.stages.dedup import DedupConfig, dedup
from textbooks.data.stages.exercises import ExercisesConfig, build_exercises
from textbooks.data.stages.ingest import IngestConfig, ingest
from textbooks.data.stages.pack import PackConfig, pack

SAMPLE = 100_000  # documents the paper's annotators labelled


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and ".stage" not in f.parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", default="site-packages")
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--tokenizer", default="p50k_base")
    ap.add_argument("--target-bytes", type=float, default=140e9)
    ap.add_argument("--target-docs", type=float, default=35e6)
    a = ap.parse_args()
    ex = ExecutorConfig(tasks=a.tasks, workers=a.workers)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        t = time.perf_counter()
        m = ingest(
            IngestConfig(inputs=[a.input], out_dir=str(d / "corpus"), pattern="**/*.py"), ex, progress=False
        )
        read_bytes, docs = m["bytes"], m["documents"]
        stages = [("ingest", m, d / "corpus", time.perf_counter() - t)]
        for name, fn in (
            ("dedup", lambda: dedup(DedupConfig(inputs=[str(d / "corpus")], out_dir=str(d / "dedup")), ex, progress=False)),
            ("annotate (heuristic, 100k docs)", lambda: annotate(AnnotateConfig(input=str(d / "dedup"), out_dir=str(d / "annotate"), annotator="heuristic", sample_size=SAMPLE), None, ex, progress=False)),
            ("exercises (mined)", lambda: build_exercises(ExercisesConfig(out_dir=str(d / "exercises"), source="mined", input=str(d / "dedup")), None, ex, progress=False)),
            ("decontaminate (AST + 13-grams)", lambda: decontaminate(DecontaminateConfig(inputs=[str(d / "exercises")], out_dir=str(d / "decontaminated"), benchmarks=["humaneval"], embedder=None), ex, progress=False)),
            ("pack (p50k)", lambda: pack(PackConfig(inputs=[str(d / "dedup")], out_dir=str(d / "tokens"), tokenizer=a.tokenizer, num_threads=1), ex, progress=False)),
        ):  # fmt: skip
            t = time.perf_counter()
            man = fn()
            out = {"dedup": "dedup", "annotate (heuristic, 100k docs)": "annotate", "exercises (mined)": "exercises",
                   "decontaminate (AST + 13-grams)": "decontaminated", "pack (p50k)": "tokens"}[name]  # fmt: skip
            stages.append((name, man, d / out, time.perf_counter() - t))
        tokens = stages[-1][1]["tokens"]
        scale = a.target_bytes / read_bytes
        print(
            f"Measured on {a.input}: {docs} files, {read_bytes / 1e6:.0f} MB after ingest, {tokens / 1e6:.1f}M p50k "
            f"tokens after dedup ({read_bytes / max(tokens, 1):.2f} bytes/token); {a.tasks} tasks on {a.workers} "
            f"workers of a {os.cpu_count()}-core machine. Projected to {a.target_bytes / 1e9:.0f} GB "
            f"({a.target_docs / 1e6:.0f}M files) by bytes of input.\n"
        )
        print(
            "| stage | core-s here | wall s here | core-hours projected | peak MB per task | output here | output projected |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, man, out, wall in stages:
            core_s = sum(s["task_seconds"] for s in man["steps"].values())
            rss = max(s["max_task_rss_mb"] for s in man["steps"].values())
            size = du(out)
            # annotate labels a fixed-size sample (the paper: ~100k files), not the corpus: scaled by documents
            k = SAMPLE / man["sampled"] if name.startswith("annotate") else scale
            proj_h, proj_size = core_s * k / 3600, size * k
            rows.append(name)
            print(
                f"| {name} | {core_s:.0f} | {wall:.0f} | {proj_h:,.1f} | {rss:.0f} | {size / 1e6:.1f} MB | "
                f"{proj_size / 1e9:,.1f} GB |"
            )


if __name__ == "__main__":
    main()
