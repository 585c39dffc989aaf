"""Sorted runs on disk, merged a key range at a time: how sharded steps group equal keys in bounded memory.

A run is written by one shard: ``keys`` (``uint32[n, w]``, rows sorted lexicographically) and ``docs`` (the
rows' document numbers); a shard's runs of the same documents under several keys share one pair of ``.npy``
files. ``key_ranges`` cuts the key space at quantiles
of the runs' first column (sampled), so that a range holds about ``max_rows`` rows of all runs together;
``merged`` then yields, per range, every run's slice concatenated and sorted by key then document — equal keys
are always inside one range. Memory is bounded by ``max_rows`` (plus one range's rows of a key repeated more
often than that), not by the corpus. ``ShardArrays`` reads per-document arrays of many shards by global
document number (memory-mapped, so only the rows asked for are read).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from textbooks.io import atomic_path


def save(path: Path, array: np.ndarray) -> None:
    """``np.save`` atomically (a killed writer leaves no half array under ``path``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def load(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r")


def sort_rows(keys: np.ndarray) -> np.ndarray:
    """The stable lexicographic order of the rows of ``keys`` (column 0 first)."""
    if keys.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    return np.lexsort(keys.T[::-1])


def save_runs(prefix: Path, keys: np.ndarray, docs: np.ndarray) -> None:
    """Sorted runs of the same documents under several keys (``keys[j]``, ``[n, w]``, is run ``j``'s), each
    sorted on its own, in one pair of files: a file per run would be thousands per corpus, and on a
    cluster's shared file system every file created is a round trip to its metadata server."""
    orders = [sort_rows(k) for k in keys]
    save(prefix.with_name(prefix.name + ".keys.npy"), np.stack([k[o] for k, o in zip(keys, orders)]))
    save(prefix.with_name(prefix.name + ".docs.npy"), np.stack([docs[o] for o in orders]))


def save_run(prefix: Path, keys: np.ndarray, docs: np.ndarray) -> None:
    """One sorted run (``Run(prefix, offset)`` reads it)."""
    save_runs(prefix, keys[None], docs)


class Run:
    """Run ``index`` of a shard's sorted runs; ``offset`` turns its local document numbers into global ones."""

    def __init__(self, prefix: Path, offset: int, index: int = 0) -> None:
        self.keys = load(prefix.with_name(prefix.name + ".keys.npy"))[index]
        self.docs = load(prefix.with_name(prefix.name + ".docs.npy"))[index]
        self.offset = offset

    def __len__(self) -> int:
        return len(self.docs)


def key_ranges(runs: Sequence[Run], max_rows: int, sample: int = 100_000) -> list[tuple[int, int]]:
    """Half-open ranges of first-column values, each holding about ``max_rows`` rows of all runs."""
    total = sum(len(r) for r in runs)
    n = max(1, -(-total // max(1, max_rows)))
    if n == 1:
        return [(0, 1 << 32)]
    stride = max(1, total // sample)
    firsts = np.concatenate([np.asarray(r.keys[::stride, 0], dtype=np.uint64) for r in runs if len(r)])
    cuts = np.unique(np.quantile(firsts, np.linspace(0, 1, n + 1)[1:-1], method="lower").astype(np.uint64))
    edges = [0, *(int(c) for c in cuts if 0 < c < (1 << 32)), 1 << 32]
    return list(itertools.pairwise(edges))


def merged(runs: Sequence[Run], max_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(keys, docs)`` of every key range: all runs' rows in it, sorted by key, then global document."""
    for lo, hi in key_ranges(runs, max_rows):
        keys, docs = [], []
        for r in runs:
            if not len(r):
                continue
            col = r.keys[:, 0]
            a, b = np.searchsorted(col, lo, "left"), np.searchsorted(col, hi, "left")
            if b > a:
                keys.append(np.asarray(r.keys[a:b]))
                docs.append(np.asarray(r.docs[a:b], dtype=np.int64) + r.offset)
        if not keys:
            continue
        k, d = np.concatenate(keys), np.concatenate(docs)
        order = np.lexsort((d, *k.T[::-1]))
        yield k[order], d[order]


def groups(keys: np.ndarray, min_size: int = 2) -> Iterator[tuple[int, int]]:
    """``[start, end)`` of each run of equal rows of sorted ``keys`` with at least ``min_size`` rows."""
    if len(keys) < min_size:
        return
    change = np.ones(len(keys), dtype=bool)
    change[1:] = np.any(keys[1:] != keys[:-1], axis=1)
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], len(keys))
    big = ends - starts >= min_size
    yield from zip(starts[big].tolist(), ends[big].tolist())


class ShardArrays:
    """Per-document arrays of many shards (``<dir>/<shard:05d>.<name>.npy``), read by global document."""

    def __init__(self, directory: Path, counts: Sequence[int]) -> None:
        self.dir = directory
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.open: dict[tuple[str, int], np.ndarray] = {}

    def array(self, name: str, shard: int) -> np.ndarray:
        key = (name, shard)
        if key not in self.open:
            self.open[key] = load(self.dir / f"{shard:05d}.{name}.npy")
        return self.open[key]

    @property
    def n(self) -> int:
        return int(self.offsets[-1])

    def locate(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shard = np.searchsorted(self.offsets, docs, side="right") - 1
        return shard, docs - self.offsets[shard]

    def rows(self, name: str, docs: np.ndarray) -> np.ndarray:
        """``array[doc]`` for each global document number (any order)."""
        docs = np.asarray(docs, dtype=np.int64)
        shard, local = self.locate(docs)
        first = self.array(name, int(shard[0]) if len(docs) else 0)
        out = np.empty((len(docs), *first.shape[1:]), dtype=first.dtype)
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = self.array(name, int(s))[local[sel]]
        return out
