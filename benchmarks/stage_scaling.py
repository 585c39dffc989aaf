"""Parallel efficiency of the sharded stages: documents/s of ingest -> dedup -> pack with 1 and with N workers.

The same commands a user runs (``textbooks-data stage=ingest|dedup|pack``, one process per stage, the local
executor) run on the same input twice: once with one task (the baseline), once with ``--tasks`` tasks over
``--workers`` processes. Each task uses one core (pack's tokenizer threads are set to 1), so the ratio is the
engine's scaling, not the tokenizer's own threads; each command's start-up (imports, planning, publishing the
manifest) is in both. Goal: 2 workers >= 1.6x one (parallel efficiency >= 0.8) on ~140 MB of site-packages.
The two settings alternate ``--repeats`` times, each in a fresh directory, and each stage's median is
reported: single runs on a shared 2-core machine vary by 10-20%.

Usage: ``python benchmarks/stage_scaling.py [--input site-packages] [--workers 2] [--tasks 8] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("ingest", "dedup", "pack")


def pipeline(root: Path, source: str, tokenizer: str, tasks: int, workers: int) -> dict[str, float]:
    """Seconds of each stage's command, and the corpus's size, for one executor setting."""
    common = [
        f"paths.root={root}",
        "progress=false",
        f"executor.tasks={tasks}",
        f"executor.workers={workers}",
    ]
    args = {
        "ingest": [f"stage.inputs=[{source}]"],
        "dedup": [],
        "pack": [f"stage.inputs=[{root / 'data' / 'dedup'}]", f"stage.out_dir={root / 'tokens'}",
                 f"stage.tokenizer={tokenizer}", "stage.num_threads=1"],
    }  # fmt: skip
    seconds: dict[str, float] = {}
    for stage in STAGES:
        t = time.perf_counter()
        cmd = [sys.executable, "-m", "textbooks.data.app", *common, f"stage={stage}", *args[stage]]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds[stage] = time.perf_counter() - t
    m = json.loads((root / "data" / "corpus" / "manifest.json").read_text())
    return seconds | {"documents": m["documents"], "bytes": m["bytes"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", default="site-packages", help="a source directory, or stdlib / site-packages")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--tokenizer", default="p50k_base")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each setting (medians are reported)")
    a = ap.parse_args()
    load = os.getloadavg()[0]
    bases, pars = [], []
    for _ in range(a.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            bases.append(pipeline(Path(tmp) / "one", a.input, a.tokenizer, 1, 1))
            pars.append(pipeline(Path(tmp) / "many", a.input, a.tokenizer, a.tasks, a.workers))
    base = {k: statistics.median(b[k] for b in bases) for k in bases[0]}
    par = {k: statistics.median(p[k] for p in pars) for k in pars[0]}
    docs, mb = base["documents"], base["bytes"] / 1e6
    print(
        f"input: {a.input}, {docs} documents after ingest, {mb:.1f} MB; {a.tasks} tasks on {a.workers} workers; "
        f"1-min load average at start {load:.1f}; medians of {a.repeats} runs"
    )
    print(f"{'stage':8s} {'1 worker s':>10s} {'N workers s':>11s} {'speed-up':>8s} {'efficiency':>10s}")
    for stage in STAGES:
        s = base[stage] / par[stage]
        print(f"{stage:8s} {base[stage]:10.1f} {par[stage]:11.1f} {s:7.2f}x {s / a.workers:10.2f}")
    b = statistics.median(sum(x[s] for s in STAGES) for x in bases)
    p = statistics.median(sum(x[s] for s in STAGES) for x in pars)
    print(
        f"{'total':8s} {b:10.1f} {p:11.1f} {b / p:7.2f}x {b / p / a.workers:10.2f}   "
        f"({docs / b:.0f} vs {docs / p:.0f} documents/s; goal: efficiency >= 0.8)"
    )


if __name__ == "__main__":
    main()
