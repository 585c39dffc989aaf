"""What a duplicate is: the exact key and the MinHash signature of a document, and the greedy rule.

* **Exact**: the SHA-256 of the normalised text (newlines ``\\n``, trailing whitespace of every line and
  blank lines at both ends removed).
* **Near**: word n-grams (``shingle_size`` tokens of ``token_pattern``) are MinHashed with ``num_perm``
  permutations (datasketch's ``affine32`` scheme computed in numpy for a whole document at once: n-gram
  hashes from cached 64-bit token hashes, then one ``[n_shingles, num_perm]`` min-reduction, the same
  signatures as ``MinHash.update_batch`` on the same 32-bit shingle hashes, several times faster). Two
  documents are candidates when they share an LSH band (``b`` bands of ``r`` rows chosen by datasketch for
  ``threshold`` and ``lsh_weights``, or ``lsh_bands`` bands of ``num_perm // lsh_bands`` rows when set, e.g.
  datatrove's 14 x 8), and duplicates when their estimated Jaccard similarity is at least
  ``threshold``.
* **The rule** (first of its cluster kept): documents are taken in order; a document is an exact duplicate
  of the kept document with its exact key, else a near duplicate of the earliest kept candidate at or above
  the threshold, else it is kept and opens a cluster.

``Deduplicator`` applies the rule to a stream in memory (the synthetic stages' generations, small corpora);
the ``dedup`` stage (``textbooks.data.stages.dedup``) computes exactly the same decisions on sharded data with
bounded memory.
"""

from __future__ import annotations

import hashlib
import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from textbooks.errors import ConfigError

if TYPE_CHECKING:
    from datasketch import LeanMinHash

SCHEME = "affine32"
_MASK32 = np.uint64(0xFFFFFFFF)
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the n-gram polynomial hash
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))


@dataclass(frozen=True)
class Duplicates:
    """The definition of a duplicate (the ``dedup`` stage's keys of the same names)."""

    exact: bool = True
    near: bool = True
    threshold: float = 0.7  # estimated Jaccard similarity at which two documents are near duplicates
    num_perm: int = 128
    shingle_size: int = 5  # tokens per shingle (word n-gram)
    token_pattern: str = r"\w+"  # what a token is (identifiers, keywords, numbers; punctuation ignored)
    ascii_tokens: bool = True  # match token_pattern in ASCII mode (faster; other characters are ignored)
    seed: int = 1  # MinHash permutations
    lsh_weights: tuple[float, float] = (0.5, 0.5)  # false-positive / false-negative weights of LSH bands
    lsh_bands: int = 0  # bands of num_perm // lsh_bands rows; 0: datasketch's choice for the threshold

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"dedup: threshold={self.threshold} must be in (0, 1]")
        if not (self.exact or self.near):
            raise ConfigError("dedup: both exact and near are false; enable at least one")
        if self.shingle_size < 1:
            raise ConfigError(f"dedup: shingle_size={self.shingle_size} must be at least 1")
        if self.num_perm < 2:
            raise ConfigError(f"dedup: num_perm={self.num_perm} must be at least 2")
        try:
            rx = re.compile(self.token_pattern, re.ASCII if self.ascii_tokens else 0)
        except re.error as e:
            raise ConfigError(
                f"dedup: token_pattern {self.token_pattern!r} is not a regular expression: {e}"
            ) from e
        if not 0 <= self.lsh_bands <= self.num_perm:
            raise ConfigError(f"dedup: lsh_bands={self.lsh_bands} must be in [0, num_perm={self.num_perm}]")
        if any(rx.search(c) for c in " \t\r\n"):
            raise ConfigError(
                f"dedup: token_pattern {self.token_pattern!r} matches whitespace; tokens must not, because "
                "exact keys ignore whitespace differences (use e.g. \\w+ or \\S+)"
            )

    def bands(self) -> tuple[int, int]:
        """LSH bands and rows per band: ``lsh_bands`` when set, else as datasketch chooses them."""
        if self.lsh_bands:
            return self.lsh_bands, self.num_perm // self.lsh_bands
        from datasketch import MinHashLSH  # on use: it imports scipy (~0.25 s of every command's start)

        lsh = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm, weights=tuple(self.lsh_weights))  # type: ignore[arg-type]
        return lsh.b, lsh.r


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
        from datasketch import MinHash

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
        from datasketch import LeanMinHash

        return LeanMinHash(seed=self.seed, hashvalues=signature, scheme=SCHEME)


Sketch = tuple[bytes | None, np.ndarray | None]  # (exact key, MinHash signature) of one document


class Sketcher:
    """What deduplication needs of each document: its exact key and its MinHash signature."""

    def __init__(self, cfg: Duplicates) -> None:
        self.exact = cfg.exact
        self.near = cfg.near
        self.hasher = MinHasher(cfg.num_perm, cfg.shingle_size, cfg.seed, cfg.token_pattern, cfg.ascii_tokens)

    def __call__(self, texts: list[str]) -> list[Sketch]:
        return [(exact_key(t) if self.exact else None, self.hasher(t) if self.near else None) for t in texts]


@dataclass
class Verdict:
    """What deduplication decided for one document."""

    cluster: int
    duplicate_of: int | None  # index of the kept document it duplicates; None when kept
    reason: str | None  # "exact" or "near"
    jaccard: float


class Deduplicator:
    """Streaming exact + near deduplication: ``add(sketch)`` decides for each document in input order."""

    def __init__(self, cfg: Duplicates) -> None:
        cfg.validate()
        self.cfg = cfg
        self.hasher = MinHasher(cfg.num_perm, cfg.shingle_size, cfg.seed, cfg.token_pattern, cfg.ascii_tokens)
        weights = tuple(cfg.lsh_weights)
        from datasketch import MinHashLSH

        params = cfg.bands() if cfg.lsh_bands else None
        self.lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, weights=weights, params=params)  # type: ignore[arg-type]
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


def deduplicate(texts: Iterable[str], definition: Duplicates) -> list[Verdict]:
    """Verdicts for in-memory texts, in order."""
    d = Deduplicator(definition)
    sketch = Sketcher(definition)
    return [d.add(s) for t in texts for s in sketch([t])]
