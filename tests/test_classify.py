"""Stage ``classify`` on real code: stdlib packages labelled by the heuristic annotator, MiniLM embeddings,
a seeded random forest, every document scored; resume after SIGKILL, re-threshold from cached embeddings,
the textbooks-checkpoint embedder route, and the errors a user can fix."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pyarrow.parquet as pq
import pytest
from models import saved_tiny_model

from textbooks.data.app import compose, run
from textbooks.data.engine.manifest import read_manifest
from textbooks.data.engine.parquet import read_table
from textbooks.data.stages.classify_embeddings import EmbeddingCache, text_key
from textbooks.data.stages.classify_forest import positive_proba
from textbooks.data.text.embeddings import EmbedderError
from textbooks.errors import ConfigError, DataError

# ~290 files, ~45% labelled educational by the heuristic (score >= 3): test files, 2to3 fixers, email, ...
PACKAGES = ("lib2to3", "unittest", "email", "test/test_importlib", "json", "logging", "importlib")
# what keeps the test fast: the first 300 characters embedded (MiniLM ~15 docs/s on 2 loaded cores)
FAST = ["stage.embed_max_chars=300", "stage.batch_docs=32", "stage.n_jobs=1", "progress=false"]
REPO = Path(__file__).resolve().parents[1]


def overrides(root: Path, *extra: str) -> list[str]:
    return [f"paths.root={root}", f"paths.data={root}/data", f"paths.cache={root}/.cache", *extra]


def stage(root: Path, *extra: str) -> dict[str, Any]:
    """One stage through the real config (conf/data.yaml + conf/stage/<name>.yaml), in process."""
    return run(compose(overrides(root, *extra)))


def ids_quality(directory: Path) -> dict[str, float]:
    t = read_table(directory, columns=["id", "quality"])
    return dict(zip(t.column("id").to_pylist(), t.column("quality").to_pylist()))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, stdlib_dir: Path) -> Path:
    """ingest -> dedup -> annotate (heuristic, every document) of a few hundred stdlib files."""
    root = tmp_path_factory.mktemp("classify")
    inputs = [str(stdlib_dir / p) for p in PACKAGES if (stdlib_dir / p).is_dir()]
    stage(root, "stage=ingest", f"stage.inputs=[{','.join(inputs)}]", "progress=false")
    stage(root, "stage=dedup", "progress=false")
    m = stage(
        root, "stage=annotate", "stage.annotator=heuristic", "stage.sample_size=100000", "progress=false"
    )
    if m["documents"] < 150:
        pytest.skip(f"only {m['documents']} documents in {PACKAGES} on this Python")
    return root


@pytest.fixture(scope="module")
def reference(corpus: Path) -> dict[str, Any]:
    """An uninterrupted classify run (MiniLM) into data/filtered."""
    return stage(corpus, "stage=classify", *FAST)


@pytest.mark.slow
def test_held_out_metrics_beat_chance(corpus: Path, reference: dict[str, Any]) -> None:
    m = reference["held_out"]
    balance = reference["class_balance"]
    assert (
        balance["all"]["documents"]
        == reference["annotations"]
        == read_manifest(corpus / "data/annotate")["documents"]
    )
    assert balance["test"]["documents"] == m["documents"] == sum(m["confusion"].values())
    assert balance["train"]["documents"] + balance["test"]["documents"] == balance["all"]["documents"]
    assert 0.25 < balance["all"]["positive"] / balance["all"]["documents"] < 0.75
    # well above chance: calling everything educational, or the majority class
    assert m["f1"] >= m["baseline"]["f1_all_positive"] + 0.05, m
    assert m["accuracy"] >= m["baseline"]["accuracy_majority"] + 0.1, m
    assert m["roc_auc"] >= 0.75, m
    assert m["precision"] > 0.6 and m["recall"] > 0.6, m
    out = corpus / "data/filtered"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["held_out"] == m and metrics["embedding"]["dim"] == 384
    assert "first 300 characters" in metrics["embedding"]["what"]


@pytest.mark.slow
def test_saved_classifier_reproduces_the_scores(corpus: Path, reference: dict[str, Any]) -> None:
    """classifier.joblib on the cached embeddings of the documents' heads gives their quality column."""
    out = corpus / "data/filtered"
    model = joblib.load(out / "classifier.joblib")
    docs = read_table(out, columns=["id", "text", "quality"]).to_pylist()[:40]
    cache = EmbeddingCache(corpus / ".cache/embeddings", reference["embedding"]["identity"])
    assert cache.dir == Path(reference["embedding"]["cache"])
    x = cache.get([text_key(d["text"][:300]) for d in docs])
    np.testing.assert_array_equal(positive_proba(model, x), [d["quality"] for d in docs])


@pytest.mark.slow
def test_kept_are_exactly_those_at_or_above_threshold(corpus: Path, reference: dict[str, Any]) -> None:
    out = corpus / "data/filtered"
    dedup_ids = read_table(corpus / "data/dedup", columns=["id"]).column("id").to_pylist()
    kept, dropped = ids_quality(out), ids_quality(out / "dropped")
    scores = read_table(out / "scores").to_pylist()
    assert [s["id"] for s in scores] == dedup_ids  # every document scored, in input order
    quality = {s["id"]: s["quality"] for s in scores}
    assert kept == {i: q for i, q in quality.items() if q >= 0.5}
    assert dropped == {i: q for i, q in quality.items() if q < 0.5}
    assert 0 < len(kept) < len(dedup_ids) and all(s["kept"] == (s["quality"] >= 0.5) for s in scores)
    # the input's columns are kept, texts unchanged
    cols = pq.read_schema(next(out.glob("part-*.parquet"))).names
    assert {"id", "text", "source", "path", "minhash_cluster", "quality"} <= set(cols)
    texts = dict(zip(*read_table(corpus / "data/dedup", columns=["id", "text"]).to_pydict().values()))
    assert all(texts[r["id"]] == r["text"] for r in read_table(out, columns=["id", "text"]).to_pylist())
    # manifest counts agree with the files
    assert reference["documents"] == len(kept) and reference["dropped"] == len(dropped)
    assert reference["input_documents"] == len(dedup_ids)
    assert reference["bytes"] == sum(s["bytes"] for s in scores if s["kept"])
    assert (
        reference["bytes_total"]
        == sum(s["bytes"] for s in scores)
        == sum(read_table(corpus / "data/dedup", columns=["bytes"]).column("bytes").to_pylist())
    )
    assert reference["tokens"] == sum(s["tokens"] for s in scores if s["kept"]) > 0
    assert reference["kept_at_threshold"]["0.5"] == len(kept)
    assert reference["kept_at_threshold"]["0.8"] == sum(q >= 0.8 for q in quality.values())


@pytest.mark.slow
def test_rerun_is_skipped(corpus: Path, reference: dict[str, Any]) -> None:
    before = (corpus / "data/filtered/manifest.json").read_bytes()
    t = time.perf_counter()
    again = stage(corpus, "stage=classify", *FAST)
    assert time.perf_counter() - t < 5
    assert again == reference and (corpus / "data/filtered/manifest.json").read_bytes() == before


@pytest.mark.slow
def test_threshold_change_reuses_embeddings(corpus: Path, reference: dict[str, Any]) -> None:
    out = corpus / "data/filtered-0.3"
    m = stage(corpus, "stage=classify", *FAST, "stage.threshold=0.3", f"stage.out_dir={out}")
    emb = m["embedding"]
    assert emb["computed"] == 0 and emb["model_loaded"] is False
    assert emb["from_cache"] == m["annotations"] + m["input_documents"]
    scores = read_table(out / "scores", columns=["id", "quality"]).to_pydict()
    ref = read_table(corpus / "data/filtered/scores", columns=["id", "quality"]).to_pydict()
    assert scores == ref  # same embeddings, same seeded forest
    kept = ids_quality(out)
    assert kept == {i: q for i, q in zip(scores["id"], scores["quality"]) if q >= 0.3}
    assert len(kept) == reference["kept_at_threshold"]["0.3"] > reference["documents"]


@pytest.mark.slow
def test_killed_run_resumes_without_re_embedding(
    corpus: Path, reference: dict[str, Any], tmp_path: Path
) -> None:
    """SIGKILL ``python -m textbooks.data.app stage=classify`` while it embeds; the rerun embeds only what the
    killed run had not cached and writes what an uninterrupted run writes."""
    ref_cache = Path(reference["embedding"]["cache"])
    total = len(list(ref_cache.glob("chunk-*.npy")))
    # start from the reference cache without its last chunks, so the killed run has a few batches to embed
    cache_root = tmp_path / "cache"
    cache = cache_root / "embeddings" / ref_cache.name
    shutil.copytree(ref_cache, cache)
    for f in sorted(cache.glob("chunk-*.npy"))[total // 2 :]:
        f.unlink()
    seeded = len(list(cache.glob("chunk-*.npy")))
    out = tmp_path / "filtered"
    args = overrides(corpus, "stage=classify", *FAST, f"stage.out_dir={out}", f"paths.cache={cache_root}")
    env = os.environ | {"PYTHONPATH": str(REPO / "src")}
    log = tmp_path / "classify.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "textbooks.data.app", *args], env=env, stdout=sink, stderr=sink
        )
    try:
        deadline = time.monotonic() + 120
        while len(list(cache.glob("chunk-*.npy"))) <= seeded:  # the first new batch is cached
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "classify wrote no embeddings in 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (out / "manifest.json").exists() and not list(out.glob("part-*.parquet"))
    after_kill = len(EmbeddingCache(cache_root / "embeddings", reference["embedding"]["identity"]))
    unique = len(EmbeddingCache(ref_cache.parent, reference["embedding"]["identity"]))
    assert 0 < after_kill < unique

    m = stage(corpus, "stage=classify", *FAST, f"stage.out_dir={out}", f"paths.cache={cache_root}")
    assert m["embedding"]["cache_entries_before"] == after_kill
    assert m["embedding"]["computed"] == unique - after_kill  # nothing the killed run cached is redone
    assert ids_quality(out) == ids_quality(corpus / "data/filtered")
    assert ids_quality(out / "dropped") == ids_quality(corpus / "data/filtered/dropped")
    assert m["held_out"] == reference["held_out"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised textbooks model with the p50k tokenizer."""
    return saved_tiny_model(tmp_path_factory.mktemp("tiny") / "model", max_seq_len=128)


@pytest.mark.slow
def test_textbooks_checkpoint_embedder(corpus: Path, tiny_checkpoint: Path) -> None:
    out = corpus / "data/filtered-textbooks"
    m = stage(
        corpus,
        "stage=classify",
        *FAST,
        f"stage.embedder=textbooks:{tiny_checkpoint}",
        "stage.embed_max_tokens=64",
        "stage.embed_batch_size=16",
        f"stage.out_dir={out}",
    )
    emb = m["embedding"]
    assert emb["identity"]["embedder"] == "textbooks" and emb["identity"]["max_tokens"] == 64
    assert emb["dim"] == 64 and emb["computed"] > 0 and "to 64 tokens" in emb["what"]
    assert Path(emb["cache"]).parent == corpus / ".cache/embeddings"
    assert Path(emb["cache"]).name != Path(read_manifest(corpus / "data/filtered")["embedding"]["cache"]).name
    assert 0.0 <= m["held_out"]["roc_auc"] <= 1.0
    scores = read_table(out / "scores", columns=["id", "quality"]).to_pydict()
    assert ids_quality(out) == {i: q for i, q in zip(scores["id"], scores["quality"]) if q >= 0.5}
    assert m["input_documents"] == len(scores["id"])


def test_errors_name_the_fix(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no annotations .*textbooks-data stage=annotate"):
        stage(corpus, "stage=classify", *FAST, f"stage.annotations={tmp_path}", f"stage.out_dir={tmp_path}/o")
    with pytest.raises(DataError, match=r"annotations .* do not exist: run textbooks-data stage=annotate"):
        stage(
            corpus, "stage=classify", *FAST, f"stage.annotations={tmp_path}/x", f"stage.out_dir={tmp_path}/o"
        )
    with pytest.raises(DataError, match=r"all positive .*stage.min_score.*sample_size"):
        stage(corpus, "stage=classify", *FAST, "stage.min_score=0", f"stage.out_dir={tmp_path}/o")
    with pytest.raises(EmbedderError, match=r"unknown stage\.embedder=.bert."):
        stage(corpus, "stage=classify", *FAST, "stage.embedder=bert", f"stage.out_dir={tmp_path}/o")
    with pytest.raises(EmbedderError, match="no textbooks model at"):
        stage(
            corpus,
            "stage=classify",
            *FAST,
            f"stage.embedder=textbooks:{tmp_path}",
            f"stage.out_dir={tmp_path}/o",
        )
    with pytest.raises(ConfigError, match=r"stage\.forest"):
        stage(corpus, "stage=classify", *FAST, "+stage.forest.n_trees=3", f"stage.out_dir={tmp_path}/o")
    with pytest.raises(ConfigError, match=r"threshold=1\.5"):
        stage(corpus, "stage=classify", *FAST, "stage.threshold=1.5", f"stage.out_dir={tmp_path}/o")
    assert not (tmp_path / "o" / "manifest.json").exists()
