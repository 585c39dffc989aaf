"""Stage ``classify``: phi-1's educational-value filter.

phi-1 had GPT-4 label ~100k samples for their "educational value for a student whose goal is to learn basic
coding concepts", trained a random forest on embeddings of those samples from a pretrained code model, and
kept the rest of the corpus where the forest said so. This stage does the same with the labels of
``textbooks-data stage=annotate`` (``${paths.data}/annotate``: ``text`` + ``label``, or ``score`` re-cut at
``min_score``):

1. **embed** every annotated document with a pluggable embedder (``textbooks.data.text.embeddings``: ``minilm``,
   ``textbooks:<model dir>`` — mean-pooled hidden states of a trained checkpoint, the paper's route — or
   ``hf:<name>``). What is embedded is a document's head: its first ``embed_max_chars`` characters, which the
   embedder truncates further to its own limit (MiniLM: 256 word pieces; a checkpoint: ``embed_max_tokens``).
2. **train** a scikit-learn ``RandomForestClassifier`` (``forest``: its keyword arguments, seeded) on a
   seeded stratified split, and report held-out precision / recall / F1 at ``threshold``, accuracy, ROC-AUC,
   the confusion matrix, the class balance, the same numbers at other thresholds, and the chance baselines.
3. **score** every document of ``input`` (default ``${paths.data}/dedup``) in batches of ``batch_docs``:
   ``quality`` = the forest's probability of the positive label; documents with ``quality >= threshold`` are
   kept.

Outputs (``out_dir``, default ``${paths.data}/filtered``):

* ``part-*.parquet``: the kept documents, the input's columns + ``quality`` (what ``pack`` reads),
* ``dropped/part-*.parquet``: the dropped ones, same columns (``write_dropped``),
* ``scores/part-*.parquet``: ``id, source, quality, kept, bytes, tokens`` of every document, to re-threshold,
* ``classifier.joblib`` (the fitted forest; ``joblib.load`` it) and ``metrics.json`` (held-out metrics, the
  embedder and what was embedded),
* ``manifest.json``: config, input fingerprints (corpus, annotations, embedder identity), counts and bytes /
  tokens kept of total, documents kept at other thresholds, metrics, embedding counts and timings.

Steps: ``train`` (one task: embed the annotations, fit the forest) then ``score`` (sharded: each task
embeds its shards in batches, on a GPU with ``device=cuda`` — one per task on SLURM with
``executor.gpus_per_task=1`` — and writes their kept / dropped / scores parts), then publish. Embeddings are
cached under ``cache_dir`` (``textbooks.data.stages.classify_embeddings``), so a killed stage resumes without re-embedding
what it had done, a changed ``threshold`` / forest / split re-embeds nothing, and documents that were
annotated are embedded once for training and scoring.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from textbooks.config import dataclass_from
from textbooks.data.engine.executor import ExecutorConfig
from textbooks.data.engine.executor import run as run_on
from textbooks.data.engine.inputs import Shard, Source, plan_shards, resolve
from textbooks.data.engine.parquet import PartWriter
from textbooks.data.engine.reader import Fields, ReadStats, batched, read_shard, shard_schema
from textbooks.data.engine.stage import Stage, Step, Task, execution_only, summed
from textbooks.data.stages.classify_embeddings import (
    EmbedCounts,
    EmbeddingCache,
    LazyEmbedder,
    embed_all,
    embed_texts,
    embedder_identity,
)
from textbooks.data.stages.classify_forest import (
    ANNOTATE_HINT,
    REPORT_THRESHOLDS,
    load_annotations,
    make_forest,
    positive_proba,
    train,
)
from textbooks.data.text.embeddings import MINILM
from textbooks.errors import ConfigError, DataError
from textbooks.io import atomic_path, write_json_atomic
from textbooks.tokenizer import token_counter

log = logging.getLogger(__name__)

CLASSIFIER = "classifier.joblib"
METRICS = "metrics.json"
SCORES_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("quality", pa.float64()),
        ("kept", pa.bool_()),
        ("bytes", pa.int64()),
        ("tokens", pa.int64()),
    ]
)
BASE = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string())])


@dataclass
class ClassifyConfig:
    """``conf/stage/classify.yaml``."""

    input: Any  # the corpus to filter: stage output(s), JSONL/Parquet, source directories (one or a list)
    annotations: str  # the labelled sample (``textbooks-data stage=annotate``)
    out_dir: str
    threshold: float = 0.5  # keep documents whose P(educational) >= threshold
    min_score: int | None = None  # None: the annotations' label column; N: label = score >= N
    embedder: str = MINILM  # minilm | textbooks:<model dir> | hf:<sentence-transformers model>
    device: str = execution_only("cpu")
    embed_batch_size: int = execution_only(32)
    embed_max_chars: int = 2000  # the head of each document that is embedded
    embed_max_tokens: int = 512  # textbooks checkpoints: tokens of that head
    cache_dir: str | None = execution_only(None)  # embeddings by embedder and content hash; None: in memory
    batch_docs: int = execution_only(1024)  # documents embedded, cached and scored per step
    test_fraction: float = 0.2  # held-out share of the annotations (stratified, seeded)
    seed: int = 0
    # RandomForestClassifier keyword arguments (random_state is ``seed``); positives are usually the minority
    forest: dict[str, Any] = field(
        default_factory=lambda: {
            "n_estimators": 200,
            "max_depth": None,
            "min_samples_leaf": 1,
            "max_features": "sqrt",
            "class_weight": "balanced",
        }
    )
    n_jobs: int = execution_only(-1)  # forest threads (-1: all cores); does not change results
    tokenizer: str | None = "p50k_base"  # counts tokens kept; None or unavailable: whitespace words
    write_dropped: bool = True  # dropped documents with their text in dropped/
    pattern: str = "**/*.py"  # files read inside source directories
    max_file_bytes: int | None = 1_000_000
    shard_bytes: int = 8 << 20  # source files per shard (JSONL/Parquet files and stage parts are one each)
    max_bad_fraction: float = execution_only(0.01)
    name: str = "classify"  # the stage (conf/stage/classify.yaml)

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"classify: threshold={self.threshold} must be a probability in [0, 1]")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"classify: test_fraction={self.test_fraction} must be in (0, 1)")
        if self.min_score is not None and not 0 <= self.min_score <= 5:
            raise ConfigError(f"classify: min_score={self.min_score} must be within 0..5 or null")
        for key in ("embed_max_chars", "embed_max_tokens", "embed_batch_size", "batch_docs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"classify: {key}={getattr(self, key)} must be at least 1")
        if "random_state" in self.forest or "n_jobs" in self.forest:
            raise ConfigError(
                "classify: set the forest's random_state with stage.seed, n_jobs with stage.n_jobs"
            )

    @property
    def inputs(self) -> list[str]:
        return [str(p) for p in ([self.input] if isinstance(self.input, str) else list(self.input))]


class Classify(Stage):
    name = "classify"
    stale = ("part-*.parquet", "*/part-*.parquet", CLASSIFIER, METRICS)

    def __init__(self, cfg: ClassifyConfig) -> None:
        if not cfg.inputs:
            raise ConfigError(
                "classify: stage.input is empty; give the corpus to filter (e.g. ${paths.data}/dedup)"
            )
        if not Path(cfg.annotations).exists():
            raise DataError(
                f"classify: annotations {cfg.annotations} do not exist: run {ANNOTATE_HINT} first, "
                "or set stage.annotations"
            )
        self.config = cfg
        self.sources: list[Source] = [resolve(s, where="classify") for s in cfg.inputs]
        self.inputs = [s.path for s in self.sources] + [cfg.annotations]
        self.pattern = cfg.pattern
        make_forest(cfg.forest, cfg.seed, cfg.n_jobs)  # a bad forest config fails before any work
        self.identity = embedder_identity(cfg.embedder, cfg.embed_max_tokens)

    def key_config(self) -> dict[str, Any]:
        return super().key_config() | {"embedder_identity": self.identity}

    def plan(self) -> dict[str, Any]:
        shards = plan_shards(self.sources, pattern=self.config.pattern, shard_bytes=self.config.shard_bytes)
        schema = shard_schema(shards, BASE)
        if "quality" in schema.names:  # an input scored before (e.g. an earlier filtered output): rescored
            schema = schema.remove(schema.get_field_index("quality"))
        schema = schema.append(pa.field("quality", pa.float64()))
        return {"shards": [s.to_dict() for s in shards], "schema": schema.serialize().to_pybytes().hex()}

    def steps(self) -> list[Step]:
        return [Step("train", "train", sharded=False), Step("score", "score", gpu=True)]

    def _embedding(self) -> tuple[LazyEmbedder, EmbeddingCache]:
        c = self.config
        embedder = LazyEmbedder(
            c.embedder, device=c.device, batch_size=c.embed_batch_size, max_tokens=c.embed_max_tokens
        )
        return embedder, EmbeddingCache(c.cache_dir, self.identity)

    def train(self, task: Task) -> dict[str, Any]:
        c = self.config
        t = time.perf_counter()
        ann = load_annotations(c.annotations, c.min_score, c.embed_max_chars)
        embedder, cache = self._embedding()
        counts, cached_before = EmbedCounts(), len(cache)
        with task.bar("classify: embed annotations", total=len(ann.texts)) as bar:
            x = embed_all(ann.texts, embedder, cache, counts, c.batch_docs, bar)
        embedded_s = time.perf_counter() - t
        model, metrics, balance = train(
            x, ann.labels, forest=c.forest, seed=c.seed, n_jobs=c.n_jobs, test_fraction=c.test_fraction,
            threshold=c.threshold,
        )  # fmt: skip
        log.info(
            "classify: held-out precision %.3f recall %.3f F1 %.3f (all-positive F1 %.3f) ROC-AUC %.3f",
            metrics["precision"], metrics["recall"], metrics["f1"], metrics["baseline"]["f1_all_positive"],
            metrics["roc_auc"],
        )  # fmt: skip
        embedded = {
            "what": f"the first {c.embed_max_chars} characters of each document, truncated further by the embedder"
            + (f" to {c.embed_max_tokens} tokens" if self.identity["embedder"] == "textbooks" else "")
            + (" to 256 word pieces" if self.identity["embedder"] == MINILM else ""),
            "embedder": c.embedder,
            "identity": self.identity,
            "dim": int(x.shape[1]),
        }
        report = {
            "labels": ann.label_rule,
            "class_balance": balance,
            "held_out": metrics,
            "embedding": embedded,
        }
        import joblib

        with atomic_path(task.publish_path(CLASSIFIER)) as tmp:
            joblib.dump(model, tmp)
        write_json_atomic(task.publish_path(METRICS), report)
        return {
            "annotations": len(ann.labels),
            "labels": ann.label_rule,
            "class_balance": balance,
            "held_out": metrics,
            "embedding": embedded,
            "computed": counts.computed,
            "cached": counts.cached,
            "embedding_seconds": counts.seconds,
            "cache_entries_before": cached_before,
            "cache": str(cache.dir) if cache.dir is not None else None,
            "model_loaded": embedder.loaded,
            "seconds": round(time.perf_counter() - t, 3),
            "embed_annotations_seconds": round(embedded_s, 3),
        }

    def score(self, task: Task) -> dict[str, Any]:
        import joblib

        c = self.config
        model = joblib.load(task.publish_path(CLASSIFIER))
        embedder, cache = self._embedding()
        counts = EmbedCounts()
        count_tokens, counter_name = token_counter(c.tokenizer)
        shards = [Shard.from_dict(d) for d in task.plan["shards"]]
        schema = pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(task.plan["schema"])))
        names = [n for n in schema.names if n != "quality"]
        bar = task.bar("classify: score")

        def one(i: int) -> dict[str, Any]:
            stats = ReadStats()
            tally = {"documents": 0, "kept": 0, "bytes_total": 0, "bytes_kept": 0, "tokens_total": 0,
                     "tokens_kept": 0, "kept_at": {str(t): 0 for t in REPORT_THRESHOLDS}}  # fmt: skip
            before = (counts.computed, counts.cached)
            writers = {
                "kept": PartWriter(task.publish_path(f"part-{i:05d}.parquet"), schema),
                "scores": PartWriter(task.publish_path(f"scores/part-{i:05d}.parquet"), SCORES_SCHEMA),
            }
            if c.write_dropped:
                writers["dropped"] = PartWriter(task.publish_path(f"dropped/part-{i:05d}.parquet"), schema)
            records = read_shard(shards[i], stats, fields=Fields(), columns=names, max_bytes=c.max_file_bytes)
            for batch in batched(records, c.batch_docs):
                texts = [r["text"] for r in batch]
                quality = positive_proba(
                    model, embed_texts([t[: c.embed_max_chars] for t in texts], embedder, cache, counts)
                )
                for rec, q, n_tok in zip(batch, quality.tolist(), count_tokens(texts)):
                    keep = q >= c.threshold
                    size = len(rec["text"].encode("utf-8", "surrogatepass"))
                    row = {n: rec.get(n) for n in names} | {"quality": q}
                    if keep:
                        writers["kept"].add(row)
                    elif "dropped" in writers:
                        writers["dropped"].add(row)
                    writers["scores"].add(
                        {
                            "id": rec["id"],
                            "source": rec["source"],
                            "quality": q,
                            "kept": keep,
                            "bytes": size,
                            "tokens": n_tok,
                        }
                    )
                    tally["documents"] += 1
                    tally["bytes_total"] += size
                    tally["tokens_total"] += n_tok
                    if keep:
                        tally["kept"] += 1
                        tally["bytes_kept"] += size
                        tally["tokens_kept"] += n_tok
                    for t in REPORT_THRESHOLDS:
                        tally["kept_at"][str(t)] += q >= t
                bar.update(len(batch))
            for w in writers.values():
                w.close()
            return tally | {
                "read": stats.to_dict(),
                "computed": counts.computed - before[0],
                "cached": counts.cached - before[1],
            }

        try:
            out = task.each_shard(len(shards), one)
        finally:
            bar.close()
        return out | {"token_counter": counter_name, "embedding_seconds": counts.seconds,
                      "model_loaded": embedder.loaded}  # fmt: skip

    def summarize(self, task: Task) -> dict[str, Any]:
        c = self.config
        shards = task.shard_stats("score")
        read = task.reads("score", c.max_bad_fraction, f"classify input {c.inputs}")
        tally = summed(shards)
        if tally.get("documents", 0) == 0:
            raise DataError(
                f"classify: no documents in {c.inputs} (pattern {c.pattern!r}); check stage.input"
            )
        tr = task.stats_of("train")[0]
        scoring = task.stats_of("score")
        log.info(
            "classify: kept %d of %d documents (%.1f%% of bytes) at quality >= %s",
            tally["kept"], tally["documents"], 100 * tally["bytes_kept"] / max(tally["bytes_total"], 1), c.threshold,
        )  # fmt: skip
        n = len(shards)
        return {
            "documents": tally["kept"],
            "input_documents": tally["documents"],
            "dropped": tally["documents"] - tally["kept"],
            "kept_fraction": tally["kept"] / tally["documents"],
            "bytes": tally["bytes_kept"],
            "bytes_total": tally["bytes_total"],
            "tokens": tally["tokens_kept"],
            "tokens_total": tally["tokens_total"],
            "token_counter": scoring[0]["token_counter"] if scoring else None,
            "kept_at_threshold": {str(t): tally["kept_at"].get(str(t), 0) for t in REPORT_THRESHOLDS},
            "annotations": tr["annotations"],
            "labels": tr["labels"],
            "class_balance": tr["class_balance"],
            "held_out": tr["held_out"],
            "embedding": tr["embedding"]
            | {
                "computed": tr["computed"] + tally.get("computed", 0),
                "from_cache": tr["cached"] + tally.get("cached", 0),
                "cache": tr["cache"],
                "cache_entries_before": tr["cache_entries_before"],
                "model_loaded": tr["model_loaded"] or any(s["model_loaded"] for s in scoring),
            },
            "malformed": read.bad + read.bad_files,
            "malformed_examples": read.bad_file_examples + read.examples,
            "timings": {
                "train": tr["seconds"],
                "embed_annotations": tr["embed_annotations_seconds"],
                "embedding_model": round(
                    tr["embedding_seconds"] + sum(s["embedding_seconds"] for s in scoring), 3
                ),
            },
            "parts": [f"part-{i:05d}.parquet" for i in range(n)],
        }


def classify(
    cfg: ClassifyConfig, executor: ExecutorConfig | None = None, *, progress: bool = True
) -> dict[str, Any]:
    """Run the stage (skipped when its manifest is current); returns the manifest."""
    return run_on(Classify(cfg), executor, progress=progress)


CONFIG = ClassifyConfig  # the schema of conf/stage/classify.yaml (registered as stage/classify_schema)


def from_config(cfg: Any) -> Classify:
    """The stage ``textbooks-data stage=classify`` runs: train the quality classifier, filter ``stage.input``."""
    return Classify(dataclass_from(ClassifyConfig, cfg.stage, "stage classify"))
