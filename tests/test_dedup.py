"""Stage dedup on real standard-library files: exact and near copies go, distinct files stay, runs repeat."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from datasketch import MinHash

from textbooks.config import dataclass_from
from textbooks.data.app import compose
from textbooks.data.engine.executor import ExecutorConfig
from textbooks.data.engine.manifest import read_manifest
from textbooks.data.engine.parquet import read_table
from textbooks.data.stages.dedup import DedupConfig, dedup
from textbooks.data.stages.ingest import IngestConfig, ingest
from textbooks.data.text.minhash import MinHasher, deduplicate, exact_key
from textbooks.errors import ConfigError, DataError
from textbooks.io import list_source_files

REPO = Path(__file__).resolve().parents[1]
# distinct modules of the standard library (none is a near copy of another)
ORIGINALS = [
    "json/decoder.py",
    "json/encoder.py",
    "csv.py",
    "shlex.py",
    "textwrap.py",
    "fnmatch.py",
    "bisect.py",
    "heapq.py",
    "colorsys.py",
    "glob.py",
    "getopt.py",
    "string.py",
]


def _rename(text: str, name: str) -> str:
    """Rename one identifier everywhere (a light edit of the kind near-dedup must catch)."""
    return re.sub(rf"\b{name}\b", name + "_renamed", text)


@pytest.fixture()
def copies_dir(tmp_path: Path, stdlib_dir: Path) -> Path:
    """Originals first, then an exact copy (CRLF + trailing spaces), a renamed-variable and a commented copy."""
    src = tmp_path / "src"
    src.mkdir()
    for i, rel in enumerate(ORIGINALS):
        (src / f"a{i:02d}_{Path(rel).name}").write_text((stdlib_dir / rel).read_text())
    text = {rel: (stdlib_dir / rel).read_text() for rel in ORIGINALS}
    crlf = "".join(line.rstrip("\n") + "   \r\n" for line in text["csv.py"].splitlines(keepends=True))
    (src / "b_exact_csv.py").write_bytes(crlf.encode())
    (src / "c_renamed_shlex.py").write_text(_rename(text["shlex.py"], "token"))
    lines = text["textwrap.py"].splitlines(keepends=True)
    lines.insert(40, "# a comment added in the middle of the file\n")
    (src / "d_comment_textwrap.py").write_text("".join(lines))
    return src


def _ingest(src: Path, out: Path) -> Path:
    ingest(IngestConfig(inputs=[str(src)], out_dir=str(out)), progress=False)
    return out


def _cfg(inputs: list[Path], out: Path, **kw) -> DedupConfig:
    return DedupConfig(inputs=[str(i) for i in inputs], out_dir=str(out), **kw)


def test_signatures_match_datasketch(stdlib_dir: Path) -> None:
    h = MinHasher(num_perm=64, shingle_size=5, seed=3)
    shingles = h.shingles((stdlib_dir / "json/decoder.py").read_text())
    ref = MinHash(num_perm=64, seed=3, hashfunc=int)
    ref.update_batch(shingles.tolist())
    assert len(shingles) > 500
    np.testing.assert_array_equal(h.signature(shingles), ref.hashvalues)


def test_exact_key_normalises_whitespace_only() -> None:
    assert exact_key("a = 1  \r\nb = 2\n\n") == exact_key("\na = 1\nb = 2")
    assert exact_key("a = 1\nb = 2") != exact_key("a = 1\nb = 3")
    assert exact_key("a = 1\n  b") != exact_key("a = 1\nb")  # indentation is content


def test_dedup_removes_exact_and_near_copies(copies_dir: Path, tmp_path: Path) -> None:
    corpus = _ingest(copies_dir, tmp_path / "corpus")
    out = tmp_path / "dedup"
    m = dedup(_cfg([corpus], out), progress=False)
    assert m["counts"] == {"input": 15, "exact_duplicates": 1, "near_duplicates": 2, "kept": 12}
    kept = read_table(out).to_pylist()
    assert sorted(r["path"] for r in kept) == sorted(p.name for p in copies_dir.glob("a*.py"))
    assert [r["minhash_cluster"] for r in kept] == list(range(12))
    assert {"id", "text", "source", "path", "bytes", "lang", "minhash_cluster"} <= set(kept[0])
    by_id = {r["id"]: r for r in read_table(corpus).to_pylist()}
    removed = {by_id[r["id"]]["path"]: r for r in read_table(out / "removed").to_pylist()}
    expect = {
        "b_exact_csv.py": ("a02_csv.py", "exact"),
        "c_renamed_shlex.py": ("a03_shlex.py", "near"),
        "d_comment_textwrap.py": ("a04_textwrap.py", "near"),
    }
    assert {k: (by_id[r["duplicate_of"]]["path"], r["reason"]) for k, r in removed.items()} == expect
    cluster_of = {r["path"]: r["minhash_cluster"] for r in kept}
    for dup, (orig, _) in expect.items():
        assert removed[dup]["minhash_cluster"] == cluster_of[orig]
    assert 0.7 <= removed["c_renamed_shlex.py"]["jaccard"] < 1.0


DATATROVE_BANDS = {"num_perm": 112, "lsh_bands": 14, "threshold": 0.72}  # datatrove's 14 bands x 8 rows


@pytest.mark.parametrize(
    "definition", [{}, {"exact": False}, {"near": False}, {"threshold": 0.5}, DATATROVE_BANDS]
)
def test_sharded_stage_decides_as_the_streaming_rule(
    stdlib_dir: Path, tmp_path: Path, copies_dir: Path, definition: dict
) -> None:
    """Any number of tasks, any memory bound: the same kept documents, clusters and removals as
    ``Deduplicator`` reading the documents in order (site of many near copies: email, json, the planted ones)."""
    src = tmp_path / "mix"
    src.mkdir()
    for f in list_source_files(stdlib_dir / "email") + list_source_files(stdlib_dir / "json"):
        (src / f"{f.parent.name}_{f.name}").write_text(f.read_text())
    for f in copies_dir.iterdir():
        (src / f"z_{f.name}").write_bytes(f.read_bytes())
    corpus = _ingest(src, tmp_path / "corpus")
    rows = read_table(corpus).to_pylist()
    ids = [r["id"] for r in rows]
    ref = deduplicate(
        [r["text"] for r in rows], DedupConfig(inputs=[], out_dir="", **definition).definition()
    )
    expect_kept = [(ids[i], v.cluster) for i, v in enumerate(ref) if v.duplicate_of is None]
    expect_removed = sorted(
        (ids[i], ids[v.duplicate_of], v.cluster, v.reason, v.jaccard)
        for i, v in enumerate(ref)
        if v.duplicate_of is not None
    )
    assert expect_removed
    for tasks, max_rows in ((1, 2_000_000), (4, 40)):
        out = tmp_path / f"dedup-{tasks}"
        m = dedup(
            _cfg([corpus], out, max_rows=max_rows, shard_bytes=20_000, **definition),
            ExecutorConfig(tasks=tasks, workers=2 if tasks > 1 else 1),
            progress=False,
        )
        kept = read_table(out).to_pylist()
        assert [(r["id"], r["minhash_cluster"]) for r in kept] == expect_kept
        removed = read_table(out / "removed").to_pylist()
        got = sorted(
            (r["id"], r["duplicate_of"], r["minhash_cluster"], r["reason"], r["jaccard"]) for r in removed
        )
        assert got == expect_removed
        assert m["counts"]["kept"] == len(expect_kept) and m["steps"]["buckets"]["tasks"] == tasks
        if "lsh_bands" in definition:
            assert m["lsh"] == {"bands": 14, "rows": 8}


def test_token_patterns_that_match_whitespace_are_refused(tmp_path: Path, copies_dir: Path) -> None:
    with pytest.raises(ConfigError, match="matches whitespace"):
        dedup(_cfg([copies_dir], tmp_path / "x", token_pattern=r"[^,]+"), progress=False)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"shingle_size": 0}, "shingle_size=0 must be at least 1"),
        ({"num_perm": 1}, "num_perm=1 must be"),
        ({"lsh_bands": 129}, "lsh_bands=129 must be in"),
    ],
)
def test_impossible_signatures_are_refused_before_anything_runs(tmp_path, copies_dir, bad, message) -> None:
    with pytest.raises(ConfigError, match=message):
        dedup(_cfg([copies_dir], tmp_path / "x", **bad), progress=False)
    assert not (tmp_path / "x").exists()


def test_dedup_keeps_distinct_stdlib_files(stdlib_dir: Path, tmp_path: Path) -> None:
    files = [stdlib_dir / rel for rel in ORIGINALS] + list_source_files(stdlib_dir / "email")
    v = deduplicate([f.read_text() for f in files], DedupConfig(inputs=[], out_dir="").definition())
    removed = [
        (files[i].name, files[d.duplicate_of].name) for i, d in enumerate(v) if d.duplicate_of is not None
    ]
    assert removed == []


def test_malformed_jsonl_and_missing_input(tmp_path: Path, stdlib_dir: Path) -> None:
    lines = [json.dumps({"id": rel, "text": (stdlib_dir / rel).read_text()}) for rel in ORIGINALS]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join([*lines[:6], "{broken", *lines[6:]]) + "\n")
    m = dedup(_cfg([path], tmp_path / "ok", max_bad_fraction=0.2), progress=False)
    assert m["malformed"] == 1 and m["counts"]["kept"] == len(ORIGINALS)
    with pytest.raises(DataError, match="1 of 13 records are malformed"):
        dedup(_cfg([path], tmp_path / "strict", max_bad_fraction=0.0), progress=False)
    with pytest.raises(
        DataError, match=r"dedup: input .*missing does not exist; run the stage that writes it"
    ):
        dedup(_cfg([tmp_path / "missing"], tmp_path / "x"), progress=False)


def _run_app(corpus: Path, out: Path, data: Path) -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        "textbooks.data.app",
        "stage=dedup",
        f"stage.inputs=[{corpus}]",
        f"stage.out_dir={out}",
        "stage.shard_bytes=20000",
        "executor.tasks=3",
        "executor.workers=2",
        f"paths.data={data}",
        "progress=false",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.Popen(args, cwd=data, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_killed_run_reruns_to_same_output(stdlib_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for f in list_source_files(stdlib_dir / "email") + list_source_files(stdlib_dir / "json"):
        (src / f"{f.parent.name}_{f.name}").write_text(f.read_text())
    corpus = _ingest(src, tmp_path / "corpus")
    data = tmp_path / "data"
    data.mkdir()
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert _run_app(corpus, full, data).wait(timeout=120) == 0
    proc = _run_app(corpus, killed, data)
    deadline = time.time() + 60
    while not list(killed.glob(".stage/signatures/shards/*.json")) and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert read_manifest(killed) is None and not list(killed.glob("*.parquet"))
    assert _run_app(corpus, killed, data).wait(timeout=120) == 0
    for sub in ("", "removed"):
        assert read_table(killed / sub).equals(read_table(full / sub))
    assert read_manifest(killed)["counts"] == read_manifest(full)["counts"]
    # bad input through the CLI: one line naming the problem, exit status 2
    proc = _run_app(tmp_path / "nothing", tmp_path / "x", data)
    output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 2 and "error: dedup: input" in output and "Traceback" not in output


def test_stage_config_matches_dataclass(tmp_path: Path) -> None:
    cfg = compose(["stage=dedup", f"paths.data={tmp_path}"])
    c = dataclass_from(DedupConfig, cfg.stage, "stage dedup")
    assert c.inputs == [f"{tmp_path}/corpus"] and c.threshold == 0.7 and c.token_pattern == r"\w+"
