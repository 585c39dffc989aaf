"""Stage ``dedup``: exact and near-duplicate removal at any scale, first document of each cluster kept.

The decisions are exactly those of ``textbooks.data.text.minhash.Deduplicator`` reading the documents in input
order (see that module for what a duplicate is); only the way they are computed scales:

1. ``signatures`` (sharded): per input shard, every document's exact key, MinHash signature and a hash of the
   signature, and sorted runs on disk (``textbooks.data.engine.runs``): one per LSH band (all in one file), one of
   signature hashes, one of exact keys.
2. ``buckets`` (sharded over jobs: each band, "same signature", "same exact key"): merges the shards' runs a
   key range at a time and writes, sorted by document: documents whose signature repeats an earlier one's (with
   that first one), documents whose exact key repeats an earlier one's (only those without tokens, or all when
   ``near`` is off), and the pairs of distinct signatures sharing the band whose estimated Jaccard similarity
   is at least ``threshold``.
3. ``cluster`` (one task) applies the rule in document order, a range of documents at a time, with one byte
   of state per document. Identical signatures share every band, hence every candidate, so a repeated
   signature shares the fate of its first occurrence: it duplicates that one if it is kept (``exact`` when the
   exact keys agree), else what that one duplicates. Exact keys imply identical signatures (tokens never
   match whitespace, which is all that normalisation changes), so the first of a signature is never an exact
   duplicate, and its near duplicates are found among its verified pairs: the earliest one still kept.
4. ``filter`` (sharded): each shard's kept documents with ``minhash_cluster`` (their rank among all kept
   documents: 0, 1, … in input order), and ``removed/`` (``id``, ``source``, ``duplicate_of``,
   ``minhash_cluster``, ``reason`` exact/near, ``jaccard``), so a cluster's size is 1 + its rows there.

Memory per task is bounded by ``max_rows`` (rows of sorted runs held at once) and the shard size, plus one
byte per document in ``cluster``. Output columns: the input's columns (those all inputs share; at least
``id``, ``text``, ``source``) + ``minhash_cluster``.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from textbooks.config import dataclass_from
from textbooks.data.engine.executor import ExecutorConfig
from textbooks.data.engine.executor import run as run_on
from textbooks.data.engine.inputs import Shard, Source, plan_shards, resolve
from textbooks.data.engine.parquet import PartWriter, write_table
from textbooks.data.engine.reader import ReadStats, read_shard, shard_schema
from textbooks.data.engine.runs import Run, ShardArrays, groups, load, merged, save, save_run, save_runs
from textbooks.data.engine.stage import Stage, Step, Task, execution_only, summed
from textbooks.data.text.minhash import Duplicates, MinHasher, exact_key
from textbooks.errors import ConfigError

log = logging.getLogger(__name__)

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
BASE = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string())])
SAME = np.dtype([("doc", np.int64), ("first", np.int64), ("same_key", np.bool_)])
PAIR = np.dtype([("doc", np.int64), ("other", np.int64), ("jaccard", np.float64)])
REMOVED = np.dtype([("doc", np.int64), ("of", np.int64), ("exact", np.bool_), ("jaccard", np.float64)])
KEPT, EXACT, NEAR = 0, 1, 2


@dataclass
class DedupConfig:
    inputs: list[str]  # stage outputs (Parquet), source directories or JSONL
    out_dir: str
    # what a duplicate is: minhash.Duplicates holds these defaults and their meaning (shared with the
    # synthetic stages)
    exact: bool = Duplicates.exact
    near: bool = Duplicates.near
    threshold: float = Duplicates.threshold
    num_perm: int = Duplicates.num_perm
    shingle_size: int = Duplicates.shingle_size
    token_pattern: str = Duplicates.token_pattern
    ascii_tokens: bool = Duplicates.ascii_tokens
    seed: int = Duplicates.seed
    lsh_weights: tuple[float, float] = Duplicates.lsh_weights
    lsh_bands: int = Duplicates.lsh_bands
    pattern: str = "**/*.py"  # files read inside source directories
    write_removed: bool = True
    shard_bytes: int = 8 << 20  # source files per shard (JSONL/Parquet files and stage parts are one each)
    max_rows: int = execution_only(2_000_000)  # rows of sorted runs held in memory at once per task
    rows_per_group: int = execution_only(10_000)  # Parquet row groups of the output parts
    max_bad_fraction: float = execution_only(0.01)
    name: str = "dedup"  # the stage (conf/stage/dedup.yaml)

    def definition(self) -> Duplicates:
        names = {f.name for f in fields(Duplicates)}
        return Duplicates(**{k: v for k, v in asdict(self).items() if k in names})


class Dedup(Stage):
    name = "dedup"
    preload = ("datasketch",)  # MinHasher's permutations (it imports scipy)

    def __init__(self, cfg: DedupConfig) -> None:
        inputs = list(cfg.inputs) if isinstance(cfg.inputs, (list, tuple)) else [cfg.inputs]
        if not inputs:
            raise ConfigError(
                "dedup: stage.inputs is empty; give the ingest output (e.g. ${paths.data}/corpus)"
            )
        cfg.lsh_weights = tuple(cfg.lsh_weights)  # type: ignore[assignment]
        self.dup = cfg.definition()
        self.dup.validate()
        self.config = cfg
        self.sources: list[Source] = [resolve(s, where="dedup") for s in inputs]
        self.inputs = [s.path for s in self.sources]
        self.pattern = cfg.pattern

    def plan(self) -> dict[str, Any]:
        shards = plan_shards(self.sources, pattern=self.config.pattern, shard_bytes=self.config.shard_bytes)
        schema = shard_schema(shards, BASE)
        names = [n for n in schema.names if n != "minhash_cluster"]
        bands, rows = self.dup.bands() if self.dup.near else (0, 0)
        jobs = (["signature", *(f"band-{j}" for j in range(bands))] if self.dup.near else []) + (
            ["exact"] if self.dup.exact else []
        )
        return {
            "shards": [s.to_dict() for s in shards],
            "columns": names,
            "schema": schema.serialize().to_pybytes().hex(),
            "bands": bands,
            "rows": rows,
            "jobs": jobs,
        }

    def steps(self) -> list[Step]:
        return [
            Step("signatures", "signatures"),
            Step("buckets", "buckets"),
            Step("cluster", "cluster", sharded=False),
            Step("filter", "filter"),
        ]

    # -- 1 ------------------------------------------------------------------------------------------------
    def signatures(self, task: Task) -> dict[str, Any]:
        dup = self.dup
        hasher = MinHasher(dup.num_perm, dup.shingle_size, dup.seed, dup.token_pattern, dup.ascii_tokens)
        shards = [Shard.from_dict(d) for d in task.plan["shards"]]
        bands, rows = task.plan["bands"], task.plan["rows"]
        out = task.data_dir()
        bar = task.bar("dedup signatures")

        def one(i: int) -> dict[str, Any]:
            stats = ReadStats()
            ids, keys, sigs, has_sig, chars = [], [], [], [], 0
            for rec in read_shard(shards[i], stats, columns=("id",), max_bytes=None):
                text = rec["text"]
                ids.append(rec["id"])
                chars += len(text)
                keys.append(np.frombuffer(exact_key(text)[:16], dtype=np.uint32))
                sig = hasher(text) if dup.near else None
                has_sig.append(sig is not None)
                sigs.append(sig if sig is not None else hasher.empty)
                bar.update()
            n = len(ids)
            prefix = out / f"{i:05d}"
            key = np.stack(keys) if n else np.zeros((0, 4), np.uint32)
            sig = np.stack(sigs) if n else np.zeros((0, dup.num_perm), np.uint32)
            has = np.asarray(has_sig, dtype=bool)
            local = np.arange(n, dtype=np.int64)
            write_table(prefix.with_suffix(".ids.parquet"), pa.table({"id": pa.array(ids, pa.string())}))
            save(prefix.with_suffix(".exact.npy"), key)
            if dup.near:
                save(prefix.with_suffix(".sig.npy"), sig)
                digest = np.frombuffer(b"".join(_sig_hash(s) for s in sig[has]), dtype=np.uint32).reshape(
                    -1, 4
                )
                save(prefix.with_suffix(".sighash.npy"), _scatter(digest, has, 4))
                save_run(prefix.with_suffix(".signature"), digest, local[has])
                band_keys = sig[has, : bands * rows].reshape(-1, bands, rows).transpose(1, 0, 2)
                save_runs(prefix.with_suffix(".bands"), band_keys, local[has])
            if dup.exact:
                sel = ~has if dup.near else np.ones(n, dtype=bool)
                save_run(prefix.with_suffix(".exact"), key[sel], local[sel])
            return {"documents": n, "chars": chars, "read": stats.to_dict()}

        try:
            return task.each_shard(len(shards), one)
        finally:
            bar.close()

    def _arrays(self, task: Task) -> ShardArrays:
        return ShardArrays(
            task.data_dir("signatures"), [s["documents"] for s in task.shard_stats("signatures")]
        )

    # -- 2 ------------------------------------------------------------------------------------------------
    def buckets(self, task: Task) -> dict[str, Any]:
        arrays = self._arrays(task)
        n_shards = len(task.plan["shards"])
        out = task.data_dir()
        done = {}
        for job in [task.plan["jobs"][i] for i in task.mine(len(task.plan["jobs"]))]:
            if job.startswith("band-"):  # one file holds every band's runs
                prefix, index = "bands", int(job.removeprefix("band-"))
            else:
                prefix, index = job, 0
            runs = [
                Run(task.data_dir("signatures") / f"{s:05d}.{prefix}", int(arrays.offsets[s]), index)
                for s in range(n_shards)
            ]
            chunks = merged(runs, self.config.max_rows)
            rows = (
                self._pairs(chunks, arrays) if job.startswith("band-") else self._firsts(chunks, arrays, job)
            )
            save(out / f"{job}.npy", np.sort(rows, order=("doc", "other") if rows.dtype == PAIR else "doc"))
            done[job] = len(rows)
        return {"jobs": done}

    def _firsts(self, chunks: Any, arrays: ShardArrays, job: str) -> np.ndarray:
        """Each document of a group of equal keys after the group's first, with that first document."""
        parts = []
        for keys, docs in chunks:
            for a, b in groups(keys):
                same = np.zeros(b - a - 1, dtype=SAME)
                same["doc"], same["first"] = docs[a + 1 : b], docs[a]
                if job == "exact":
                    same["same_key"] = True
                elif self.dup.exact:
                    exact = arrays.rows("exact", docs[a:b])
                    same["same_key"] = np.all(exact[1:] == exact[0], axis=1)
                parts.append(same)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=SAME)

    def _pairs(self, chunks: Any, arrays: ShardArrays) -> np.ndarray:
        """Pairs of distinct signatures sharing a band bucket, at or above the threshold."""
        parts = []
        perms, threshold = self.dup.num_perm, self.dup.threshold
        for keys, docs in chunks:
            for a, b in groups(keys):
                members = docs[a:b]
                _, first = np.unique(arrays.rows("sighash", members), axis=0, return_index=True)
                if len(first) < 2:
                    continue
                reps = np.sort(members[first])
                sigs = arrays.rows("sig", reps)
                for k in range(len(reps) - 1):
                    jac = np.count_nonzero(sigs[k + 1 :] == sigs[k], axis=1) / perms
                    hit = np.flatnonzero(jac >= threshold)
                    if len(hit):
                        pair = np.zeros(len(hit), dtype=PAIR)
                        pair["doc"], pair["other"], pair["jaccard"] = reps[k + 1 + hit], reps[k], jac[hit]
                        parts.append(pair)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=PAIR)

    # -- 3 ------------------------------------------------------------------------------------------------
    def cluster(self, task: Task) -> dict[str, Any]:
        n = self._arrays(task).n
        buckets = task.data_dir("buckets")
        jobs = task.plan["jobs"]
        same = [load(buckets / f"{j}.npy") for j in jobs if j in ("signature", "exact")]
        pairs = [load(buckets / f"{j}.npy") for j in jobs if j.startswith("band-")]
        state = np.zeros(n, dtype=np.int8)
        removed_first: dict[int, tuple[int, float]] = {}  # removed first signatures -> (kept target, jaccard)
        out = task.data_dir()
        chunks, targets = [], set()
        step = max(1, self.config.max_rows)
        for c, lo in enumerate(range(0, n, step)):
            hi = min(n, lo + step)
            s = _concat([_slice(a, lo, hi) for a in same], SAME)
            p = _concat([_slice(a, lo, hi) for a in pairs], PAIR)
            p = np.unique(p[["doc", "other", "jaccard"]])  # a pair found in several bands counts once
            s_at = dict(zip(s["doc"].tolist(), zip(s["first"].tolist(), s["same_key"].tolist())))
            xs = np.union1d(s["doc"], p["doc"])
            starts, ends = np.searchsorted(p["doc"], xs, "left"), np.searchsorted(p["doc"], xs, "right")
            removed = []
            for x, start, end in zip(xs.tolist(), starts.tolist(), ends.tolist()):
                if x in s_at:
                    first, same_key = s_at[x]
                    if state[first] == KEPT:
                        exact = same_key and self.dup.exact
                        removed.append((x, first, exact, 1.0))
                    else:
                        target, jac = removed_first[first]
                        removed.append((x, target, False, jac))
                else:
                    kept = [k for k in range(start, end) if state[p["other"][k]] == KEPT]
                    if not kept:
                        continue
                    k = kept[0]  # pairs are sorted by the other document: the earliest kept one
                    removed.append((x, int(p["other"][k]), False, float(p["jaccard"][k])))
                    removed_first[x] = (int(p["other"][k]), float(p["jaccard"][k]))
                state[x] = EXACT if removed[-1][2] else NEAR
            arr = np.array(removed, dtype=REMOVED)
            targets.update(arr["of"].tolist())
            save(out / f"removed-{c:05d}.npy", arr)
            chunks.append({"lo": lo, "hi": hi, "removed": len(arr)})
        return {
            "chunks": chunks,
            "exact": int(np.count_nonzero(state == EXACT)),
            "near": int(np.count_nonzero(state == NEAR)),
            "clusters_with_duplicates": len(targets),
        }

    # -- 4 ------------------------------------------------------------------------------------------------
    def filter(self, task: Task) -> dict[str, Any]:
        cfg = self.config
        arrays = self._arrays(task)
        shards = [Shard.from_dict(d) for d in task.plan["shards"]]
        schema = pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(task.plan["schema"])))
        names = task.plan["columns"]
        out_schema = pa.schema([schema.field(n) for n in names] + [("minhash_cluster", pa.int64())])
        removed = Removed(task.data_dir("cluster"), task.stats_of("cluster")[0]["chunks"])
        ids = functools.lru_cache(maxsize=16)(
            lambda s: (
                pq.read_table(task.data_dir("signatures") / f"{s:05d}.ids.parquet").column("id").to_pylist()
            )
        )
        bar = task.bar("dedup filter")

        def id_of(doc: int) -> str:
            shard, local = arrays.locate(np.array([doc]))
            return ids(int(shard[0]))[int(local[0])]

        def one(i: int) -> dict[str, Any]:
            lo = int(arrays.offsets[i])
            gone = {int(r["doc"]): r for r in removed.between(lo, int(arrays.offsets[i + 1]))}
            kept_w = PartWriter(task.publish_path(f"part-{i:05d}.parquet"), out_schema, cfg.rows_per_group)
            removed_w = (
                PartWriter(
                    task.publish_path(f"removed/part-{i:05d}.parquet"), REMOVED_SCHEMA, cfg.rows_per_group
                )
                if cfg.write_removed
                else None
            )
            for local, rec in enumerate(read_shard(shards[i], ReadStats(), columns=names, max_bytes=None)):
                g = lo + local
                bar.update()
                r = gone.get(g)
                if r is None:
                    kept_w.add({n: rec.get(n) for n in names} | {"minhash_cluster": g - removed.before(g)})
                elif removed_w is not None:
                    of = int(r["of"])
                    removed_w.add(
                        {
                            "id": rec["id"],
                            "source": rec.get("source"),
                            "duplicate_of": id_of(of),
                            "minhash_cluster": of - removed.before(of),
                            "reason": "exact" if r["exact"] else "near",
                            "jaccard": float(r["jaccard"]),
                        }
                    )
            kept_w.close()
            if removed_w is not None:
                removed_w.close()
            return {"kept": kept_w.count}

        try:
            return task.each_shard(len(shards), one)
        finally:
            bar.close()

    def summarize(self, task: Task) -> dict[str, Any]:
        sig = task.shard_stats("signatures")
        read = task.reads("signatures", self.config.max_bad_fraction, f"dedup {self.config.inputs}")
        c = task.stats_of("cluster")[0]
        total = summed(sig, ("documents", "chars"))
        n = total.get("documents", 0)
        counts = {
            "input": n,
            "exact_duplicates": c["exact"],
            "near_duplicates": c["near"],
            "kept": n - c["exact"] - c["near"],
        }
        log.info("dedup: %s", counts)
        n_shards = len(task.plan["shards"])
        return {
            "documents": counts["kept"],
            "counts": counts,
            "clusters_with_duplicates": c["clusters_with_duplicates"],
            "input_chars": total.get("chars", 0),
            "lsh": {"bands": task.plan["bands"], "rows": task.plan["rows"]},
            "malformed": read.bad + read.bad_files,
            "malformed_examples": read.bad_file_examples + read.examples,
            "parts": [f"part-{i:05d}.parquet" for i in range(n_shards)],
        }


class Removed:
    """The cluster step's removed documents (sorted by document, in chunks): lookups by document range, and
    how many documents before ``doc`` were removed (so a kept document's cluster is its rank among kept)."""

    def __init__(self, directory: Any, chunks: list[dict[str, Any]]) -> None:
        self.dir = directory
        self.chunks = chunks
        self.starts = np.array([c["lo"] for c in chunks], dtype=np.int64)
        self.before_chunk = np.concatenate([[0], np.cumsum([c["removed"] for c in chunks])]).astype(np.int64)
        self.arrays: dict[int, np.ndarray] = {}

    def _chunk(self, c: int) -> np.ndarray:
        if c not in self.arrays:
            self.arrays[c] = load(self.dir / f"removed-{c:05d}.npy")
        return self.arrays[c]

    def between(self, lo: int, hi: int) -> list[np.void]:
        out = []
        for c, ch in enumerate(self.chunks):
            if ch["hi"] > lo and ch["lo"] < hi and ch["removed"]:
                a = self._chunk(c)
                out.extend(a[np.searchsorted(a["doc"], lo) : np.searchsorted(a["doc"], hi)])
        return out

    def before(self, doc: int) -> int:
        if not len(self.starts):
            return 0
        c = int(np.searchsorted(self.starts, doc, side="right")) - 1
        a = self._chunk(c)
        return int(self.before_chunk[c]) + (int(np.searchsorted(a["doc"], doc)) if len(a) else 0)


def _sig_hash(sig: np.ndarray) -> bytes:
    import hashlib

    return hashlib.blake2b(sig.tobytes(), digest_size=16).digest()


def _scatter(rows: np.ndarray, mask: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((len(mask), width), dtype=rows.dtype)
    out[mask] = rows
    return out


def _slice(a: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return np.asarray(a[np.searchsorted(a["doc"], lo) : np.searchsorted(a["doc"], hi)])


def _concat(parts: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    parts = [p for p in parts if len(p)]
    return np.sort(np.concatenate(parts), order="doc") if parts else np.zeros(0, dtype=dtype)


def dedup(
    cfg: DedupConfig, executor: ExecutorConfig | None = None, *, progress: bool = True
) -> dict[str, Any]:
    """Deduplicate ``cfg.inputs`` into ``cfg.out_dir``; returns the manifest (skipped when current)."""
    return run_on(Dedup(cfg), executor, progress=progress)


CONFIG = DedupConfig  # the schema of conf/stage/dedup.yaml (registered as stage/dedup_schema)


def from_config(cfg: Any) -> Dedup:
    """The stage ``textbooks-data stage=dedup`` runs: deduplicate ``stage.inputs`` into ``stage.out_dir``."""
    return Dedup(dataclass_from(DedupConfig, cfg.stage, "stage dedup"))
