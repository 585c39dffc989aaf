"""Tokenizers: p50k_base loaded the tiktoken way (offline), a BPE trained with `tokenizers`."""

from __future__ import annotations

import hashlib
import json

import pytest
import requests
import tiktoken

from textbooks.data.reader import read_texts
from textbooks.tokenizer import (
    ENDOFTEXT,
    P50K_SHA256,
    P50K_URL,
    TokenizerError,
    cache_path_for,
    eot_token,
    fingerprint,
    load_tokenizer,
    padded_vocab_size,
)


@pytest.fixture(scope="module")
def p50k():
    if not cache_path_for(P50K_URL).is_file():
        pytest.skip("p50k_base is not installed: run `make p50k`")
    return load_tokenizer("p50k_base")


def roundtrip_all(enc: tiktoken.Encoding, stdlib_dir) -> int:
    texts = list(read_texts([stdlib_dir]))
    ids = enc.encode_ordinary_batch(texts, num_threads=2)
    bad = [t[:60] for t, i in zip(texts, ids) if enc.decode(i) != t]
    assert not bad, f"{len(bad)} files do not round-trip, e.g. {bad[:3]}"
    return len(texts)


def test_p50k_is_the_official_encoding(p50k):
    assert p50k.n_vocab == 50281
    assert eot_token(p50k) == 50256
    assert hashlib.sha256(cache_path_for(P50K_URL).read_bytes()).hexdigest() == P50K_SHA256
    # whitespace runs are single tokens (the codegen feature p50k adds to GPT-2)
    assert len(p50k.encode_ordinary("        ")) == 1
    assert p50k.encode("hello world") == [31373, 995]


def test_p50k_round_trips_the_standard_library(p50k, stdlib_dir):
    assert roundtrip_all(p50k, stdlib_dir) > 1500


def test_p50k_offline_error_names_the_fix(tmp_path, monkeypatch):
    from textbooks import tokenizer

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    tokenizer._load_cached.cache_clear()

    def offline(*a, **k):
        raise requests.ConnectionError("no network")

    monkeypatch.setattr(requests, "get", offline)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    with pytest.raises(TokenizerError) as e:
        load_tokenizer("p50k_base")
    msg = str(e.value)
    assert "TIKTOKEN_CACHE_DIR" in msg and "make p50k" in msg and str(tmp_path) in msg
    tokenizer._load_cached.cache_clear()


def test_trained_bpe_round_trips_the_standard_library(tiny_data, stdlib_dir):
    enc = load_tokenizer(tiny_data["tokenizer"])
    assert enc.n_vocab == 512
    assert eot_token(enc) == 511
    meta = json.loads(tiny_data["tokenizer"].with_suffix(".json").read_text())
    assert meta["special_tokens"] == {ENDOFTEXT: 511}
    # learned merges compress code well below one token per byte
    text = (stdlib_dir / "json" / "decoder.py").read_text()
    assert len(enc.encode_ordinary(text)) < 0.5 * len(text.encode())
    # special-token text inside a document stays ordinary text
    assert eot_token(enc) not in enc.encode_ordinary("x = '<|endoftext|>'")
    assert roundtrip_all(enc, stdlib_dir) > 1500


def test_trained_bpe_file_is_standard_tiktoken_format(tiny_data):
    ranks = tiktoken.load.load_tiktoken_bpe(str(tiny_data["tokenizer"]))
    assert len(ranks) == 511 and sorted(ranks.values()) == list(range(511))
    assert all(ranks[bytes([b])] == b for b in range(256))
    enc = load_tokenizer(tiny_data["tokenizer"])
    assert fingerprint(enc) == fingerprint(load_tokenizer(str(tiny_data["tokenizer"])))


def test_bad_tokenizer_names(tmp_path):
    with pytest.raises(TokenizerError, match="train it with"):
        load_tokenizer(tmp_path / "missing.tiktoken")
    with pytest.raises(TokenizerError, match="unknown tokenizer"):
        load_tokenizer("not_an_encoding")


def test_padded_vocab():
    assert padded_vocab_size(50281) == 50304
    assert padded_vocab_size(512) == 512
