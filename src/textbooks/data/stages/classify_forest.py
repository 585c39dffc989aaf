"""The quality classifier: annotations in, a seeded random forest and its held-out metrics out.

Labels come from ``textbooks-data stage=annotate`` (``label``, or ``score`` re-cut at ``min_score``). The
forest is scikit-learn's ``RandomForestClassifier`` trained on a seeded stratified split; the held-out report
gives precision / recall / F1 at the threshold, accuracy, ROC-AUC, the confusion matrix, the same numbers at
other thresholds, and the chance baselines a reader compares them with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from textbooks.data.engine.parquet import part_files
from textbooks.errors import ConfigError, DataError

ANNOTATE_HINT = (
    "textbooks-data stage=annotate (the paper's method: an LLM) or, offline, "
    "textbooks-data stage=annotate stage.annotator=heuristic"
)
REPORT_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


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


def train(
    x: np.ndarray,
    y: np.ndarray,
    *,
    forest: dict[str, Any],
    seed: int,
    n_jobs: int,
    test_fraction: float,
    threshold: float,
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Fit the forest on a seeded split of ``(x, y)``; returns it, held-out metrics and class balance."""
    tr, te = split(y, test_fraction, seed)
    model = make_forest(forest, seed, n_jobs)
    try:
        model.fit(x[tr], y[tr])
    except ValueError as e:  # sklearn's InvalidParameterError for a bad value in stage.forest
        raise ConfigError(f"classify: training the forest with stage.forest={forest} failed: {e}") from e
    metrics = evaluate(y[te], positive_proba(model, x[te]), threshold)
    balance = {
        part: {"documents": len(i), "positive": int(y[i].sum()), "negative": int(len(i) - y[i].sum())}
        for part, i in (("all", np.arange(len(y))), ("train", tr), ("test", te))
    }
    return model, metrics, balance
