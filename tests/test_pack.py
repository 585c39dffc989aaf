"""Packing documents into memmap token shards: content, sidecars, skipping, killing, bad input."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from textbooks.data.engine.reader import read_texts
from textbooks.data.stages.pack import PackConfig, pack
from textbooks.errors import DataError
from textbooks.io import EXCLUDE_DIRS, list_source_files, one_scan_per_directory, scan_source_files
from textbooks.tokenizer import load_tokenizer
from textbooks.train.shards import TokenShards


def test_shards_hold_every_document_separated_by_eot(tiny_data):
    enc = load_tokenizer(tiny_data["tokenizer"])
    shards = TokenShards(tiny_data["shards"])
    m = tiny_data["manifest"]
    assert shards.dtype == np.uint16 and len(m["shards"]) > 1
    stream = shards.read(0, shards.n_tokens)
    docs = [
        enc.decode(list(d[:-1]))
        for d in np.split(stream, np.flatnonzero(stream == shards.eot_token) + 1)[:-1]
    ]
    expected = list(read_texts(tiny_data["inputs"]))
    assert len(docs) == m["documents"] == len(expected)
    assert docs == expected
    side = json.loads((tiny_data["shards"] / "shard-00000.json").read_text())
    assert side["dtype"] == "uint16" and side["eot_token"] == 511
    assert side["tokenizer"]["fingerprint"] == m["tokenizer"]["fingerprint"]
    assert side["tokens"] * 2 == (tiny_data["shards"] / "shard-00000.bin").stat().st_size


def test_tokens_are_encode_ordinary_even_for_special_token_text(tmp_path, tiny_data):
    texts = ["x = '<|endoftext|>'\n", "", "def f():\n    return 1\n" * 50, "é ü ∑ 🐍"]
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
    tok = str(tiny_data["tokenizer"])
    pack(
        PackConfig(inputs=[str(src)], out_dir=str(tmp_path / "out"), tokenizer=tok, batch_docs=3),
        progress=False,
    )
    enc = load_tokenizer(tok)
    expected = [t for text in texts for t in [*enc.encode_ordinary(text), enc.eot_token]]
    shards = TokenShards(tmp_path / "out")
    assert shards.read(0, shards.n_tokens).tolist() == expected


@pytest.mark.parametrize(
    "pattern", ["**/*.py", "*.py", "email/**/*.py", "**/test_[a-c]*.py", "[!_]*.py", "**/?.py", "json/*"]
)
def test_source_listing_is_path_glob_without_excluded_dirs(stdlib_dir, pattern):
    expected = sorted(
        p
        for p in stdlib_dir.glob(pattern)
        if p.is_file() and not set(p.relative_to(stdlib_dir).parts[:-1]) & set(EXCLUDE_DIRS)
    )
    assert list_source_files(stdlib_dir, pattern) == expected and expected


def test_one_scan_gives_paths_in_path_order_with_their_stats(tmp_path, monkeypatch):
    # "a-b" sorts before "a/" as a string but after "a" part by part, as sorted Paths do
    for rel in ("a/b.py", "a-b/c.py", "a.py", "a/z/y.py", "b.py", "a/__pycache__/x.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    expected = sorted(p for p in tmp_path.rglob("*.py") if "__pycache__" not in p.parts)
    scanned = scan_source_files(tmp_path)
    assert [f.path for f in scanned] == [str(p) for p in expected]
    assert [f.rel for f in scanned] == [p.relative_to(tmp_path).as_posix() for p in expected]
    assert [(f.size, f.mtime_ns) for f in scanned] == [
        (p.stat().st_size, p.stat().st_mtime_ns) for p in expected
    ]
    monkeypatch.chdir(tmp_path)  # a relative root spells paths as Path(root, rel) does
    assert [f.path for f in scan_source_files(".")] == [p.relative_to(tmp_path).as_posix() for p in expected]


def test_a_run_lists_a_directory_once(tmp_path):
    (tmp_path / "a.py").write_text("a = 1\n")
    with one_scan_per_directory():
        first = scan_source_files(tmp_path)
        (tmp_path / "b.py").write_text("b = 1\n")  # the plan sees what the fingerprint saw
        assert scan_source_files(tmp_path) == first
        assert len(scan_source_files(tmp_path, "**/*")) == 2  # another pattern is another listing
    assert [f.rel for f in scan_source_files(tmp_path)] == ["a.py", "b.py"]


def test_reads_cross_shard_boundaries(tiny_data):
    shards = TokenShards(tiny_data["shards"])
    whole = np.concatenate([np.asarray(a) for a in shards.arrays])
    edge = int(shards.offsets[1])
    assert np.array_equal(shards.read(edge - 5, 10), whole[edge - 5 : edge + 5])
    with pytest.raises(IndexError):
        shards.read(shards.n_tokens - 2, 5)


def test_rerun_is_skipped_and_input_change_repacks(tmp_path, stdlib_dir, tiny_data):
    src = tmp_path / "src"
    src.mkdir()
    for f in sorted((stdlib_dir / "json").glob("*.py")):
        (src / f.name).write_text(f.read_text())
    cfg = PackConfig(inputs=[str(src)], out_dir=str(tmp_path / "out"), tokenizer=str(tiny_data["tokenizer"]))
    first = pack(cfg, progress=False)
    bin0 = tmp_path / "out" / "shard-00000.bin"
    mtime = bin0.stat().st_mtime_ns
    assert pack(cfg, progress=False) == first and bin0.stat().st_mtime_ns == mtime
    (src / "extra.py").write_text("def added():\n    return 42\n")
    second = pack(cfg, progress=False)
    assert second["documents"] == first["documents"] + 1


@pytest.mark.slow
def test_killed_pack_resumes_to_identical_output(tmp_path, tiny_data, stdlib_dir):
    def run(out, kill_after_shards=None):
        code = (
            "import sys; from textbooks.data.stages.pack import PackConfig, pack; "
            f"pack(PackConfig(inputs=[{str(stdlib_dir)!r}], out_dir={str(out)!r}, "
            f"tokenizer={str(tiny_data['tokenizer'])!r}, shard_bytes=1_000_000, batch_docs=16, num_threads=1), "
            "progress=False)"
        )
        p = subprocess.Popen([sys.executable, "-c", code])
        if kill_after_shards is None:
            assert p.wait(120) == 0
            return
        deadline = time.time() + 120
        while (
            len(list(out.glob(".stage/encode/shards/*.json"))) < kill_after_shards and time.time() < deadline
        ):
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert not (out / "manifest.json").exists()

    ref, killed = tmp_path / "ref", tmp_path / "killed"
    run(ref)
    run(killed, kill_after_shards=3)
    done_before = {p.name: p.stat().st_mtime_ns for p in killed.glob(".stage/staged/shard-*.bin")}
    run(killed)
    files = sorted(p.name for p in ref.iterdir() if not p.name.startswith("."))
    assert files == sorted(p.name for p in killed.iterdir() if not p.name.startswith("."))
    for name in files:
        if name.endswith(".bin"):
            assert (ref / name).read_bytes() == (killed / name).read_bytes(), name
    kept = [n for n, t in done_before.items() if (killed / n).stat().st_mtime_ns == t]
    assert len(kept) >= 2  # finished shards were not re-encoded


def test_jsonl_and_parquet_inputs_and_malformed_lines(tmp_path, tiny_data):
    good = [{"id": str(i), "text": f"def f{i}(x):\n    return x + {i}\n"} for i in range(50)]
    jl = tmp_path / "docs.jsonl"
    jl.write_text(
        "\n".join([json.dumps(r) for r in good] + ["{not json", json.dumps({"id": "x", "txt": "?"})])
    )
    m = pack(
        PackConfig(
            inputs=[str(jl)],
            out_dir=str(tmp_path / "j"),
            tokenizer=str(tiny_data["tokenizer"]),
            max_bad_fraction=0.1,
        ),
        progress=False,
    )
    assert m["documents"] == 50 and m["read"]["bad"] == 2
    assert any("docs.jsonl:51" in e for e in m["read"]["bad_examples"])
    with pytest.raises(DataError, match="malformed"):
        pack(
            PackConfig(
                inputs=[str(jl)],
                out_dir=str(tmp_path / "j2"),
                tokenizer=str(tiny_data["tokenizer"]),
                max_bad_fraction=0.01,
            ),
            progress=False,
        )
    pq.write_table(pa.Table.from_pylist(good), tmp_path / "docs.parquet")
    p = pack(
        PackConfig(
            inputs=[str(tmp_path / "docs.parquet")],
            out_dir=str(tmp_path / "p"),
            tokenizer=str(tiny_data["tokenizer"]),
        ),
        progress=False,
    )
    assert p["tokens"] == m["tokens"]


def test_missing_inputs_and_shards_are_clear(tmp_path, tiny_data):
    with pytest.raises(DataError, match="does not exist"):
        pack(
            PackConfig(
                inputs=[str(tmp_path / "nope")],
                out_dir=str(tmp_path / "o"),
                tokenizer=str(tiny_data["tokenizer"]),
            ),
            progress=False,
        )
    with pytest.raises(DataError, match=re.escape("textbooks-data stage=pack stage.component=x")):
        TokenShards(tmp_path / "none", build_hint="textbooks-data stage=pack stage.component=x")


def test_tokenizer_mismatch_is_refused(tiny_data):
    shards = TokenShards(tiny_data["shards"])
    with pytest.raises(DataError, match="repack"):
        shards.check_tokenizer("0" * 16, "p50k_base")
