"""The sharded dedup stage against the single-process streaming dedup: speed at one task, memory as input grows.

Both decide the same (first of each cluster kept; the tests check it document by document). The baseline is
the streaming rule in one process, as the stage ran before it was sharded: read the Parquet parts in order,
sketch each document, query and grow one in-memory LSH index (``minhash.Deduplicator``), write kept and removed
parts. The sharded stage runs signatures -> buckets -> cluster -> filter with runs on disk and ``max_rows`` rows
in memory per task.

Measured on the ingested ``--input`` (site-packages by default) at 1/4 and at its full size (4x):

* documents/s of the baseline and of the stage with one task (goal: stage >= 0.8x the baseline);
* peak resident memory per task: the stage with ``--tasks`` tasks on 2 worker processes (each task's peak is
  counted from its start), the baseline in a process of its own (goal: the stage's per-task peak flat as the input grows 4x; the baseline's grows).

Usage: ``python benchmarks/dedup_scale.py [--input site-packages] [--tasks 4] [--max-rows 200000]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from textbooks.data.engine.executor import ExecutorConfig
from textbooks.data.engine.manifest import read_manifest
from textbooks.data.engine.parquet import PartWriter
from textbooks.data.stages.dedup import REMOVED_SCHEMA, DedupConfig, dedup
from textbooks.data.stages.ingest import IngestConfig, ingest
from textbooks.data.text.minhash import Deduplicator, Sketcher


def streaming(corpus: Path, out: Path) -> dict[str, float]:
    """The single-process dedup: one pass, one in-memory index. Returns seconds and peak RSS."""
    definition = DedupConfig(inputs=[], out_dir="").definition()
    d, sketch = Deduplicator(definition), Sketcher(definition)
    parts = [corpus / p for p in read_manifest(corpus)["parts"]]
    schema = pq.read_schema(parts[0]).append(pa.field("minhash_cluster", pa.int64()))
    ids: list[str] = []
    t = time.perf_counter()
    with (
        PartWriter(out / "part-00000.parquet", schema) as kept,
        PartWriter(out / "removed.parquet", REMOVED_SCHEMA) as rem,
    ):
        for part in parts:
            for batch in pq.ParquetFile(part).iter_batches(batch_size=1024):
                for rec in batch.to_pylist():
                    v = d.add(sketch([rec["text"]])[0])
                    ids.append(rec["id"])
                    if v.duplicate_of is None:
                        kept.add(rec | {"minhash_cluster": v.cluster})
                    else:
                        rem.add({"id": rec["id"], "source": rec["source"], "duplicate_of": ids[v.duplicate_of],
                                 "minhash_cluster": v.cluster, "reason": v.reason, "jaccard": v.jaccard})  # fmt: skip
    return {
        "seconds": time.perf_counter() - t,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _in_child(corpus: Path, out: Path, q: mp.Queue) -> None:
    q.put(streaming(corpus, out))


def streaming_in_own_process(corpus: Path, out: Path) -> dict[str, float]:
    q: mp.Queue = mp.get_context("spawn").Queue()
    p = mp.get_context("spawn").Process(target=_in_child, args=(corpus, out, q))
    p.start()
    r = q.get()
    p.join()
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", default="site-packages")
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--max-rows", type=int, default=200_000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        full = ingest(
            IngestConfig(
                inputs=[a.input], out_dir=str(root / "full"), pattern="**/*.py", shard_bytes=4 << 20
            ),
            ExecutorConfig(tasks=4, workers=2),
            progress=False,
        )
        # a quarter of the input: the first quarter of its parts (a stage output of its own)
        quarter = root / "quarter"
        quarter.mkdir()
        parts = full["parts"][: max(1, len(full["parts"]) // 4)]
        for p in parts:
            (quarter / p).symlink_to(root / "full" / p)
        (quarter / "manifest.json").write_text(json.dumps({"stage": "ingest", "parts": parts}))
        rows = []
        for name, corpus in (("1x", quarter), ("4x", root / "full")):
            docs = sum(pq.ParquetFile(corpus / p).metadata.num_rows for p in read_manifest(corpus)["parts"])
            base = streaming_in_own_process(corpus, root / f"stream-{name}")
            t = time.perf_counter()
            dedup(
                DedupConfig(inputs=[str(corpus)], out_dir=str(root / f"one-{name}"), max_rows=a.max_rows),
                progress=False,
            )
            one = time.perf_counter() - t
            m = dedup(
                DedupConfig(inputs=[str(corpus)], out_dir=str(root / f"many-{name}"), max_rows=a.max_rows),
                ExecutorConfig(tasks=a.tasks, workers=2),
                progress=False,
            )
            rss = {s: v["max_task_rss_mb"] for s, v in m["steps"].items()}
            rows.append((name, docs, base, one, rss))
    print(f"input: {a.input}; max_rows={a.max_rows}; per-task memory with {a.tasks} tasks on 2 workers")
    print(
        f"{'size':4s} {'docs':>6s} {'stream doc/s':>12s} {'1 task doc/s':>12s} {'ratio':>6s} {'stream MB':>9s}  per-task peak MB"
    )
    for name, docs, base, one, rss in rows:
        steps = ", ".join(f"{s} {v:.0f}" for s, v in rss.items())
        print(
            f"{name:4s} {docs:6d} {docs / base['seconds']:12.0f} {docs / one:12.0f} {base['seconds'] / one:5.2f}x "
            f"{base['rss_mb']:9.0f}  {steps}"
        )
    print("goals: 1 task >= 0.8x the streaming dedup; per-task peak flat from 1x to 4x")


if __name__ == "__main__":
    main()
