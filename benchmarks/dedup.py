"""Near-deduplication throughput on the Python standard library (docs/s and MB/s).

Methods, all on the same documents and the same decisions (first of each cluster kept, threshold 0.7,
128 permutations, 5-word shingles):

* ``exact only``: ``textbooks.data.stages.dedup`` with ``near=False`` (SHA-256 of the normalised text): the floor.
* ``datasketch update`` (the naive baseline): per document, the set of 5-word shingle strings, a
  ``MinHash(num_perm=128)`` updated shingle by shingle (``m.update``, SHA-1 each), ``MinHashLSH.query``,
  a Jaccard check of the candidates, then ``insert`` (kept documents only).
* ``datasketch update_batch``: the same with ``m.update_batch(shingles)`` (datasketch's vectorised path).
* ``ours``: ``textbooks.data.text.minhash``'s ``Sketcher`` and ``Deduplicator`` in one process (cached token
  hashes, numpy n-gram hashes, one ``[shingles, num_perm]`` min-reduction per document). The sharded stage
  over many processes is measured by ``benchmarks/stage_scaling.py``.

The naive loop is slow (~20 docs/s), so it runs on the first ``--naive-limit`` files only; ratios are
of MB/s. Rounds alternate the methods so a busy machine slows all alike; medians are reported.
Usage: ``python benchmarks/dedup.py [--rounds 2] [--limit N] [--naive-limit 200]``
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections.abc import Callable

from datasketch import MinHash, MinHashLSH

from textbooks.data.text.minhash import Deduplicator, Duplicates, Sketcher
from textbooks.io import list_source_files, stdlib_dir


def load_texts(limit: int | None) -> list[str]:
    texts = []
    for f in list_source_files(stdlib_dir()):
        try:
            texts.append(f.read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            continue
    return texts[:limit] if limit else texts


def ours(texts: list[str], near: bool = True) -> tuple[int, float]:
    """Removed documents (and no start-up time: everything runs in this process)."""
    definition = Duplicates(near=near)
    d, sketch = Deduplicator(definition), Sketcher(definition)
    return sum(d.add(s).duplicate_of is not None for s in sketch(texts)), 0.0


def datasketch_loop(
    texts: list[str], batch: bool, threshold: float = 0.7, num_perm: int = 128, k: int = 5
) -> tuple[int, float]:
    """Removed documents, with datasketch used the usual way (``batch``: ``update_batch``)."""
    word = re.compile(r"\w+", re.ASCII)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    kept: dict[int, MinHash] = {}
    removed = 0
    for i, text in enumerate(texts):
        toks = word.findall(text)
        shingles = {" ".join(toks[j : j + k]).encode() for j in range(max(1, len(toks) - k + 1))}
        m = MinHash(num_perm=num_perm, seed=1)
        if batch:
            m.update_batch(shingles)
        else:
            for sh in shingles:
                m.update(sh)
        if any(kept[j].jaccard(m) >= threshold for j in lsh.query(m)):
            removed += 1
            continue
        kept[i] = m
        lsh.insert(i, m)
    return removed, 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="first N stdlib files only")
    ap.add_argument("--naive-limit", type=int, default=200, help="files for the per-shingle update loop")
    args = ap.parse_args()
    texts = load_texts(args.limit)
    few = texts[: args.naive_limit]
    size = {
        len(texts): sum(len(t.encode()) for t in texts) / 1e6,
        len(few): sum(len(t.encode()) for t in few) / 1e6,
    }
    print(f"corpus: {len(texts)} stdlib files, {size[len(texts)]:.1f} MB")
    methods: dict[str, tuple[Callable[[], tuple[int, float]], int, int]] = {
        "exact only": (lambda: ours(texts, near=False), 1, len(texts)),
        "datasketch update (baseline)": (lambda: datasketch_loop(few, batch=False), 1, len(few)),
        "datasketch update_batch": (lambda: datasketch_loop(texts, batch=True), 1, len(texts)),
        "ours": (lambda: ours(texts), 1, len(texts)),
    }
    times: dict[str, list[float]] = {k: [] for k in methods}
    startups: dict[str, list[float]] = {k: [] for k in methods}
    removed: dict[str, int] = {}
    for _ in range(args.rounds):
        for name, (fn, _, _) in methods.items():
            t0 = time.perf_counter()
            removed[name], startup = fn()
            times[name].append(time.perf_counter() - t0 - startup)
            startups[name].append(startup)

    def mb_per_s(name: str) -> float:
        return size[methods[name][2]] / statistics.median(times[name])

    base, batch = mb_per_s("datasketch update (baseline)"), mb_per_s("datasketch update_batch")
    print(
        f"{'method':28s} {'s':>6s} {'start s':>7s} {'docs/s':>7s} {'MB/s':>6s} {'docs/s/core':>11s} "
        f"{'vs base':>7s} {'vs batch':>8s} {'files':>5s} removed"
    )
    for name, (_, used, n) in methods.items():
        t = statistics.median(times[name])
        rate = mb_per_s(name)
        print(
            f"{name:28s} {t:6.2f} {statistics.median(startups[name]):7.2f} {n / t:7.0f} {rate:6.2f} "
            f"{n / t / used:11.0f} {rate / base:6.1f}x {rate / batch:7.1f}x {n:5d} {removed[name]}"
        )
    print("s: processing time without start-up (worker processes importing the library, paid once per run)")


if __name__ == "__main__":
    main()
