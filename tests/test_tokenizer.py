"""Tokenizers: p50k_base loaded the tiktoken way (offline), a BPE trained with `tokenizers`."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import tiktoken

from textbooks.data.engine.reader import read_texts
from textbooks.tokenizer import (
    ENDOFTEXT,
    P50K_SHA256,
    P50K_URL,
    TokenizerError,
    cache_path_for,
    encoding_pool,
    eot_token,
    fingerprint,
    load_tokenizer,
    padded_vocab_size,
    verify_bpe_file,
)

BIN = Path(sys.executable).parent


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


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_encoding_threads_are_kept_by_the_process_and_not_inherited_by_a_fork():
    pool = encoding_pool(2)
    assert encoding_pool(2) is pool and encoding_pool(3) is not pool
    assert list(pool.map(len, ["ab", "c"])) == [2, 1]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the parent's threads are not in the child: it must start its own (or map would hang)
        try:
            mine = encoding_pool(2)
            os.write(w, b"1" if mine is not pool and list(mine.map(len, ["abc"])) == [3] else b"0")
        finally:
            os._exit(0)
    deadline = time.time() + 30
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.time() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung on its parent's encoding threads")
        time.sleep(0.01)
    assert os.read(r, 1) == b"1"
    os.close(r)
    os.close(w)


def test_padded_vocab():
    assert padded_vocab_size(50281) == 50304
    assert padded_vocab_size(512) == 512


def _train(path, stdlib_dir, package: str, vocab: int = 300):
    from textbooks.data.engine.reader import read_texts
    from textbooks.tokenizer import train_bpe

    return train_bpe(read_texts([str(stdlib_dir / package)]), vocab, path, show_progress=False)


def test_a_bpe_retrained_at_the_same_path_is_never_served_stale(tmp_path, stdlib_dir, monkeypatch):
    """Neither tiktoken's path-keyed file cache nor an earlier load in this process hides a new file."""
    cache = tmp_path / "tiktoken-cache"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    path = tmp_path / "bpe.tiktoken"
    old = fingerprint(_train(path, stdlib_dir, "json"))
    old_bytes = path.read_bytes()
    assert fingerprint(load_tokenizer(path)) == old
    new = fingerprint(_train(path, stdlib_dir, "email"))
    assert new != old and fingerprint(load_tokenizer(path)) == new == fingerprint(load_tokenizer(str(path)))
    # what tiktoken's loader would serve for this path: a cached copy keyed by sha1(path)
    cache.mkdir(exist_ok=True)
    (cache / hashlib.sha1(str(path.resolve()).encode()).hexdigest()).write_bytes(old_bytes)
    (cache / hashlib.sha1(str(path).encode()).hexdigest()).write_bytes(old_bytes)
    assert fingerprint(load_tokenizer(path)) == new
    ranks = load_tokenizer(path)._mergeable_ranks
    assert hashlib.sha256(
        b"".join(base64.b64encode(t) + b" %d\n" % r for t, r in ranks.items())
    ).hexdigest() == (hashlib.sha256(path.read_bytes()).hexdigest())


def test_a_truncated_or_replaced_bpe_is_refused(tmp_path, stdlib_dir):
    path = tmp_path / "bpe.tiktoken"
    _train(path, stdlib_dir, "json")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        TokenizerError, match=r"bpe\.tiktoken .* does not match its sidecar bpe\.json .* truncated"
    ):
        load_tokenizer(path)
    with pytest.raises(TokenizerError, match="truncated or replaced"):
        verify_bpe_file(path)
    path.write_bytes(data)
    meta = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({k: v for k, v in meta.items() if k != "sha256"}))
    with pytest.raises(TokenizerError, match=r"bpe\.json is not a tokenizer sidecar with a sha256"):
        load_tokenizer(path)


def _data(root, *args):
    """``textbooks-data`` as a user runs it (tiktoken's cache dir set, as the Makefile does)."""
    env = os.environ | {"TIKTOKEN_CACHE_DIR": str(root / "tiktoken-cache")}
    cmd = [str(BIN / "textbooks-data"), f"paths.root={root}", "tokenizer=bpe", "tokenizer.vocab_size=300"]
    cmd += ["progress=false", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=600)


@pytest.mark.slow
def test_pack_after_retraining_uses_the_new_tokenizer_and_training_refuses_old_shards(tmp_path, stdlib_dir):
    """stage=tokenizer on a new corpus at the same path, then stage=pack: the shards are the new tokenizer's,
    the shards packed before are refused; a truncated file stops pack and is retrained by stage=tokenizer."""
    from textbooks.errors import DataError
    from textbooks.train.shards import TokenShards

    tok = tmp_path / "data" / "tokenizer" / "bpe-300.tiktoken"
    corpus = str(stdlib_dir / "json")

    def pack(out):
        r = _data(tmp_path, "stage=pack", f"stage.inputs=[{corpus}]", f"stage.out_dir={tmp_path / out}")
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads((tmp_path / out / "shard-00000.json").read_text())["tokenizer"]["fingerprint"]

    for package, out in (("json", "before"), ("email", "after")):
        r = _data(tmp_path, "stage=tokenizer", f"stage.inputs=[{stdlib_dir / package}]")
        assert r.returncode == 0, r.stderr[-3000:]
        recorded = pack(out)
        assert recorded == fingerprint(load_tokenizer(tok))  # the file actually on disk
    assert TokenShards(tmp_path / "before").tokenizer["fingerprint"] != recorded
    with pytest.raises(DataError, match="were written with tokenizer"):
        TokenShards(tmp_path / "before").check_tokenizer(fingerprint(load_tokenizer(tok)), "bpe-300")
    TokenShards(tmp_path / "after").check_tokenizer(fingerprint(load_tokenizer(tok)), "bpe-300")

    good = tok.read_bytes()
    tok.write_bytes(good[:-100])
    r = _data(tmp_path, "stage=pack", f"stage.inputs=[{corpus}]", f"stage.out_dir={tmp_path / 'cut'}")
    assert r.returncode == 2 and not (tmp_path / "cut" / "manifest.json").exists()
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: tokenizer file") and "does not match its sidecar" in line, r.stderr[-3000:]
    r = _data(tmp_path, "stage=tokenizer", f"stage.inputs=[{stdlib_dir / 'email'}]")
    assert r.returncode == 0 and "does not match its sidecar" in r.stdout + r.stderr, r.stderr[-3000:]
    assert "training it again" in r.stdout + r.stderr
    assert tok.read_bytes() == good  # the same corpus trains the same file
