"""Stage ``dedup``: exact and near-duplicate removal (MinHash LSH), keeping the first document of each cluster.

Documents are read in input order. Each one is

1. **exact**-deduplicated: the SHA-256 of its normalised text (newlines ``\\n``, trailing whitespace of
   every line and blank lines at both ends removed) is looked up among earlier documents;
2. **near**-deduplicated: its word n-grams (``shingle_size`` tokens of ``token_pattern``) are MinHashed
   with ``num_perm`` permutations and queried against an LSH index (``datasketch.MinHashLSH``) of the
   documents kept so far; a candidate whose estimated Jaccard similarity is at least ``threshold`` makes
   it a duplicate of the earliest such kept document.

A kept document opens a cluster (``minhash_cluster``: 0, 1, … in input order) and is inserted into the
index; duplicates join the cluster of the document they duplicate, so the result depends only on the input
order (deterministic). Output columns: the input's columns (those all inputs share; at least ``id``,
``text``, ``source``) + ``minhash_cluster``. With ``write_removed`` the removed documents are listed in
``removed/`` (``id``, ``source``, ``duplicate_of``, ``minhash_cluster``, ``reason`` exact/near,
``jaccard``), so a cluster's size is 1 + its rows there. Both are written as the input streams by.

The MinHash is datasketch's ``affine32`` scheme computed in numpy for a whole document at once (n-gram
hashes from cached 64-bit token hashes, then one ``[n_shingles, num_perm]`` min-reduction), which gives
the same signatures as ``MinHash.update_batch`` on the same 32-bit shingle hashes and is several times
faster than hashing shingles one by one.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import multiprocessing as mp
import operator
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
from datasketch import LeanMinHash, MinHash, MinHashLSH
from tqdm.auto import tqdm

from textbooks.config import dataclass_from
from textbooks.data.documents import ReadStats
from textbooks.data.manifest import Stage, read_manifest
from textbooks.data.records import (
    StagedOutput,
    as_list,
    batched,
    check_inputs_exist,
    common_columns,
    iter_records,
)
from textbooks.errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEME = "affine32"
_MASK32 = np.uint64(0xFFFFFFFF)
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the n-gram polynomial hash
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))

REMOVED_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("duplicate_of", pa.string()),
        ("minhash_cluster", pa.int64()),
        ("reason", pa.string()),
        ("jaccard", pa.float64()),
    ]
)


@dataclass
class DedupConfig:
    inputs: list[str]  # stage outputs (Parquet), source directories or JSONL
    out_dir: str
    exact: bool = True
    near: bool = True
    threshold: float = 0.7  # estimated Jaccard similarity at which two documents are near duplicates
    num_perm: int = 128
    shingle_size: int = 5  # tokens per shingle (word n-gram)
    token_pattern: str = r"\w+"  # what a token is (identifiers, keywords, numbers; punctuation ignored)
    ascii_tokens: bool = True  # match token_pattern in ASCII mode (faster; other characters are ignored)
    seed: int = 1  # MinHash permutations
    lsh_weights: tuple[float, float] = (0.5, 0.5)  # false-positive / false-negative weights of LSH bands
    pattern: str = "**/*.py"  # files read inside source directories
    write_removed: bool = True
    workers: int = 1  # processes computing signatures: 1 = in process, 0 = one per CPU (~2 s to start)
    batch_docs: int = 256  # documents per worker task
    rows_per_shard: int = 50_000
    max_bad_fraction: float = 0.01


def normalise(text: str) -> str:
    """Text with ``\\n`` newlines, no trailing whitespace on any line and no blank lines at either end."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join([line.rstrip() for line in lines]).strip("\n")


def exact_key(text: str) -> bytes:
    """The hash exact deduplication compares: SHA-256 of the normalised text."""
    return hashlib.sha256(normalise(text).encode("utf-8", "surrogatepass")).digest()


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, as datasketch's affine32 scheme applies it to input hashes."""
    s1, m1, s2, m2, s3 = _FMIX32
    h = h ^ (h >> s1)
    h = h * m1
    h = h ^ (h >> s2)
    h = h * m2
    return h ^ (h >> s3)


class _TokenHashes(dict):
    """token -> stable 64-bit hash (BLAKE2b), computed once per distinct token."""

    def __missing__(self, token: str) -> int:
        digest = hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        h = int.from_bytes(digest, "little")
        self[token] = h
        return h


class MinHasher:
    """Word n-gram MinHash signatures of texts (datasketch ``affine32`` scheme, numpy throughout)."""

    def __init__(
        self,
        num_perm: int = 128,
        shingle_size: int = 5,
        seed: int = 1,
        token_pattern: str = r"\w+",
        ascii_tokens: bool = True,
    ) -> None:
        if shingle_size < 1:
            raise ConfigError(f"dedup: shingle_size={shingle_size} must be at least 1")
        if num_perm < 2:
            raise ConfigError(f"dedup: num_perm={num_perm} must be at least 2")
        try:
            self.token_re = re.compile(token_pattern, re.ASCII if ascii_tokens else 0)
        except re.error as e:
            raise ConfigError(
                f"dedup: token_pattern {token_pattern!r} is not a regular expression: {e}"
            ) from e
        self.num_perm = num_perm
        self.shingle_size = shingle_size
        self.seed = seed
        a, b = MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME).permutations
        self.a = np.asarray(a, dtype=np.uint32)[:, None]
        self.b = np.asarray(b, dtype=np.uint32)[:, None]
        self.block = 4096
        self.buf = np.empty((num_perm, self.block), dtype=np.uint32)
        self.tokens = _TokenHashes()
        self.empty = np.full(num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)

    def shingles(self, text: str) -> np.ndarray:
        """32-bit hashes of the document's token n-grams (one n-gram of all tokens when it is shorter)."""
        toks = self.token_re.findall(text)
        if not toks:
            return np.empty(0, dtype=np.uint32)
        if len(toks) == 1:
            h = np.array([self.tokens[toks[0]]], dtype=np.uint64)
        else:
            h = np.array(operator.itemgetter(*toks)(self.tokens), dtype=np.uint64)
        k = min(self.shingle_size, len(h))
        n = len(h) - k + 1
        acc = h[:n].copy()
        for j in range(1, k):
            acc = acc * _MIX + h[j : j + n]
        return ((acc >> np.uint64(32)) ^ (acc & _MASK32)).astype(np.uint32)

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        """The MinHash values (``uint32[num_perm]``) of a set of 32-bit shingle hashes.

        Computed as ``min over shingles of (a * fmix32(h) + b) mod 2^32`` per permutation, in blocks of
        ``[num_perm, block]`` in a reused buffer so the reduction runs along contiguous memory.
        """
        sig = self.empty.copy()
        hv = _fmix32(shingles)[None, :]
        for i in range(0, hv.shape[1], self.block):
            x = hv[:, i : i + self.block]
            m = self.buf[:, : x.shape[1]]
            np.multiply(self.a, x, out=m)
            np.add(m, self.b, out=m)
            np.minimum(sig, m.min(axis=1), out=sig)
        return sig

    def __call__(self, text: str) -> np.ndarray | None:
        """The signature of ``text``, or None when it has no tokens."""
        s = self.shingles(text)
        return self.signature(s) if len(s) else None

    def lean(self, signature: np.ndarray) -> LeanMinHash:
        return LeanMinHash(seed=self.seed, hashvalues=signature, scheme=SCHEME)


Sketch = tuple[bytes | None, np.ndarray | None]  # (exact key, MinHash signature) of one document


class Sketcher:
    """What deduplication needs of each document: its exact key and its MinHash signature."""

    def __init__(self, cfg: DedupConfig) -> None:
        self.exact = cfg.exact
        self.near = cfg.near
        self.hasher = MinHasher(cfg.num_perm, cfg.shingle_size, cfg.seed, cfg.token_pattern, cfg.ascii_tokens)

    def __call__(self, texts: list[str]) -> list[Sketch]:
        return [(exact_key(t) if self.exact else None, self.hasher(t) if self.near else None) for t in texts]


_worker: Sketcher | None = None


def _init_worker(cfg: DedupConfig) -> None:
    global _worker
    _worker = Sketcher(cfg)


def _sketch_batch(texts: list[str]) -> list[Sketch]:
    assert _worker is not None
    return _worker(texts)


class SketchPool:
    """Sketches of documents, in order, computed by ``cfg.workers`` processes (or in process).

    ``sketch(items, text)`` streams: at most ``2 * workers`` batches are in flight, so memory stays
    bounded while the workers hash and this process runs the LSH index.
    """

    def __init__(self, cfg: DedupConfig) -> None:
        self.workers = cfg.workers or os.cpu_count() or 1
        self.batch = max(1, cfg.batch_docs)
        self.local = Sketcher(cfg) if self.workers <= 1 else None
        # spawn, not fork: the parent holds Arrow's threads
        self.pool = (
            None
            if self.local
            else mp.get_context("spawn").Pool(self.workers, initializer=_init_worker, initargs=(cfg,))
        )
        self.slots = threading.Semaphore(2 * self.workers)
        self.closing = False

    def sketch(self, items: Iterable[T], text: Callable[[T], str]) -> Iterator[tuple[T, Sketch]]:
        """``(item, sketch of text(item))`` for every item, in order."""
        if self.local is not None:
            for batch in batched(items, self.batch):
                yield from zip(batch, self.local([text(x) for x in batch]))
            return
        assert self.pool is not None
        pending: collections.deque[list[T]] = collections.deque()

        def feed() -> Iterator[list[str]]:  # runs in the pool's task thread
            for batch in batched(items, self.batch):
                self.slots.acquire()
                if self.closing:
                    return
                pending.append(batch)
                yield [text(x) for x in batch]

        for result in self.pool.imap(_sketch_batch, feed()):
            batch = pending.popleft()
            self.slots.release()
            yield from zip(batch, result)

    def close(self) -> None:
        if self.pool is not None:
            self.closing = True
            for _ in range(2 * self.workers + 1):
                self.slots.release()  # unblock the feeder so the pool can stop
            self.pool.terminate()
            self.pool.join()

    def __enter__(self) -> SketchPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Verdict:
    """What deduplication decided for one document."""

    cluster: int
    duplicate_of: int | None  # index of the kept document it duplicates; None when kept
    reason: str | None  # "exact" or "near"
    jaccard: float


class Deduplicator:
    """Streaming exact + near deduplication: ``add(sketch)`` decides for each document in input order."""

    def __init__(self, cfg: DedupConfig) -> None:
        if not 0.0 < cfg.threshold <= 1.0:
            raise ConfigError(f"dedup: threshold={cfg.threshold} must be in (0, 1]")
        self.cfg = cfg
        self.hasher = MinHasher(cfg.num_perm, cfg.shingle_size, cfg.seed, cfg.token_pattern, cfg.ascii_tokens)
        weights = tuple(cfg.lsh_weights)
        self.lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, weights=weights)  # type: ignore[arg-type]
        self.exact: dict[bytes, int] = {}  # normalised-content hash -> index of the kept document
        self.signatures: dict[int, np.ndarray] = {}  # kept index -> signature
        self.cluster_of: dict[int, int] = {}  # kept index -> cluster number
        self.n = 0

    def add(self, sketch: Sketch) -> Verdict:
        key, sig = sketch
        i = self.n
        self.n += 1
        if key is not None and key in self.exact:
            first = self.exact[key]
            return Verdict(self.cluster_of[first], first, "exact", 1.0)
        if sig is not None:
            best: tuple[int, float] | None = None
            for j in self.lsh.query(self.hasher.lean(sig)):
                jac = float(np.count_nonzero(self.signatures[j] == sig)) / self.cfg.num_perm
                if jac >= self.cfg.threshold and (best is None or j < best[0]):
                    best = (j, jac)
            if best is not None:
                return Verdict(self.cluster_of[best[0]], best[0], "near", best[1])
        cluster = len(self.cluster_of)
        self.cluster_of[i] = cluster
        if key is not None:
            self.exact[key] = i
        if sig is not None:
            self.signatures[i] = sig
            self.lsh.insert(i, self.hasher.lean(sig), check_duplication=False)
        return Verdict(cluster, None, None, 1.0)


def deduplicate(texts: Iterable[str], cfg: DedupConfig) -> list[Verdict]:
    """Verdicts for in-memory texts (the stage's decisions without files)."""
    d = Deduplicator(cfg)
    with SketchPool(cfg) as pool:
        return [d.add(s) for _, s in pool.sketch(texts, str)]


def dedup(cfg: DedupConfig, *, progress: bool = True) -> dict[str, Any]:
    """Deduplicate ``cfg.inputs`` into ``cfg.out_dir``; returns the manifest (skipped when current)."""
    inputs = as_list(cfg.inputs)
    if not inputs:
        raise ConfigError("dedup: stage.inputs is empty; give the ingest output (e.g. ${paths.data}/corpus)")
    if not (cfg.exact or cfg.near):
        raise ConfigError("dedup: both exact and near are false; enable at least one")
    check_inputs_exist(inputs, "dedup")
    stage_cfg = {k: v for k, v in asdict(cfg).items() if k != "out_dir"}
    stage = Stage("dedup", cfg.out_dir, stage_cfg, inputs, pattern=cfg.pattern)
    if stage.is_current():
        log.info("dedup: %s is current, skipping", cfg.out_dir)
        return read_manifest(cfg.out_dir)  # type: ignore[return-value]

    schema = common_columns(inputs)
    names = [n for n in schema.names if n != "minhash_cluster"]
    out_schema = pa.schema([schema.field(n) for n in names] + [("minhash_cluster", pa.int64())])
    dd = Deduplicator(cfg)
    stats = ReadStats()
    kept_ids: dict[int, str] = {}  # index of a kept document -> its id, for duplicate_of
    counts = {"input": 0, "exact_duplicates": 0, "near_duplicates": 0, "kept": 0}
    clusters_with_dups: set[int] = set()
    n_chars = 0
    staged = StagedOutput(cfg.out_dir)
    kept_w = staged.writer(schema=out_schema, rows_per_shard=cfg.rows_per_shard)
    removed_w = staged.writer("removed", schema=REMOVED_SCHEMA, rows_per_shard=cfg.rows_per_shard)
    bar = tqdm(desc="dedup", unit="doc", disable=not progress)
    records = iter_records(inputs, columns=names, pattern=cfg.pattern, stats=stats)
    try:
        with SketchPool(cfg) as pool:
            for rec, sketch in pool.sketch(records, operator.itemgetter("text")):
                i = dd.n
                v = dd.add(sketch)
                n_chars += len(rec["text"])
                counts["input"] += 1
                bar.update()
                if v.duplicate_of is None:
                    counts["kept"] += 1
                    kept_ids[i] = str(rec["id"])
                    kept_w.add({n: rec.get(n) for n in names} | {"minhash_cluster": v.cluster})
                    continue
                counts[f"{v.reason}_duplicates"] += 1
                clusters_with_dups.add(v.cluster)
                if cfg.write_removed:
                    removed_w.add(
                        {
                            "id": str(rec["id"]),
                            "source": rec.get("source"),
                            "duplicate_of": kept_ids[v.duplicate_of],
                            "minhash_cluster": v.cluster,
                            "reason": v.reason,
                            "jaccard": v.jaccard,
                        }
                    )
        bar.close()
        stats.check(cfg.max_bad_fraction, f"dedup {inputs}")
        kept_w.close()
        if cfg.write_removed:
            removed_w.close()
    except BaseException:
        staged.discard()
        raise
    outputs = staged.publish(stage)
    log.info("dedup: %s", counts)
    return stage.finish(
        outputs,
        documents=counts["kept"],
        counts=counts,
        clusters_with_duplicates=len(clusters_with_dups),
        input_chars=n_chars,
        lsh={"bands": dd.lsh.b, "rows": dd.lsh.r},
        malformed=stats.bad,
        malformed_examples=stats.examples,
    )


def run_stage(cfg: Any) -> dict[str, Any]:
    """``textbooks-data stage=dedup``: deduplicate ``stage.inputs`` into ``stage.out_dir``."""
    c = dataclass_from(DedupConfig, cfg.stage, "stage dedup")
    c.inputs = as_list(c.inputs)
    c.lsh_weights = tuple(c.lsh_weights)  # type: ignore[assignment]
    return dedup(c, progress=cfg.get("progress", True))
