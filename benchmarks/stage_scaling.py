"""Parallel efficiency of the sharded stages: documents/s of ingest -> dedup -> pack with 1 and with N workers.

The same command (the library's stages on the local executor) runs on the same input twice: once with one
task in this process (the baseline), once with ``--tasks`` tasks over ``--workers`` processes. Each task uses
one core (pack's tokenizer threads are set to 1), so the ratio is the engine's scaling, not the tokenizer's
own threads. Goal: 2 workers >= 1.6x one (parallel efficiency >= 0.8) on ~140 MB of site-packages.

Usage: ``python benchmarks/stage_scaling.py [--input site-packages] [--workers 2] [--tasks 8]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from textbooks.data.corpus import IngestConfig, ingest
from textbooks.data.dedup import DedupConfig, dedup
from textbooks.data.executor import ExecutorConfig
from textbooks.data.pack import PackConfig, pack


def pipeline(root: Path, source: str, tokenizer: str, ex: ExecutorConfig) -> dict[str, float]:
    seconds = {}
    t = time.perf_counter()
    m = ingest(
        IngestConfig(inputs=[source], out_dir=str(root / "corpus"), pattern="**/*.py"), ex, progress=False
    )
    seconds["ingest"] = time.perf_counter() - t
    t = time.perf_counter()
    dedup(DedupConfig(inputs=[str(root / "corpus")], out_dir=str(root / "dedup")), ex, progress=False)
    seconds["dedup"] = time.perf_counter() - t
    t = time.perf_counter()
    pack(
        PackConfig(
            inputs=[str(root / "dedup")], out_dir=str(root / "tokens"), tokenizer=tokenizer, num_threads=1
        ),
        ex,
        progress=False,
    )
    seconds["pack"] = time.perf_counter() - t
    seconds["documents"] = m["documents"]
    seconds["bytes"] = m["bytes"]
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", default="site-packages", help="a source directory, or stdlib / site-packages")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--tokenizer", default="p50k_base")
    a = ap.parse_args()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, ex in (
            ("1 worker", ExecutorConfig(tasks=1, workers=1)),
            (f"{a.workers} workers", ExecutorConfig(tasks=a.tasks, workers=a.workers)),
        ):
            runs[name] = pipeline(Path(tmp) / name.replace(" ", "-"), a.input, a.tokenizer, ex)
    base, par = runs["1 worker"], runs[f"{a.workers} workers"]
    docs, mb = base["documents"], base["bytes"] / 1e6
    print(
        f"input: {a.input}, {docs} documents after ingest, {mb:.1f} MB; {a.tasks} tasks on {a.workers} workers"
    )
    print(f"{'stage':8s} {'1 worker s':>10s} {'N workers s':>11s} {'speed-up':>8s} {'efficiency':>10s}")
    for stage in ("ingest", "dedup", "pack"):
        s = base[stage] / par[stage]
        print(f"{stage:8s} {base[stage]:10.1f} {par[stage]:11.1f} {s:7.2f}x {s / a.workers:10.2f}")
    b, p = sum(base[s] for s in ("ingest", "dedup", "pack")), sum(par[s] for s in ("ingest", "dedup", "pack"))
    print(
        f"{'total':8s} {b:10.1f} {p:11.1f} {b / p:7.2f}x {b / p / a.workers:10.2f}   "
        f"({docs / b:.0f} vs {docs / p:.0f} documents/s; goal: efficiency >= 0.8)"
    )


if __name__ == "__main__":
    main()
