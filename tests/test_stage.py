"""The stage contract on real files: any number of tasks gives the same output, a killed worker loses only its
task, unreadable inputs are named and counted, and readers never see a half-published stage."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from textbooks.data.engine.executor import ExecutorConfig
from textbooks.data.engine.inputs import plan_shards, resolve
from textbooks.data.engine.manifest import read_manifest
from textbooks.data.engine.reader import ReadStats, read_shard
from textbooks.data.engine.stage import Task, balanced
from textbooks.data.stages.ingest import Ingest, IngestConfig, ingest
from textbooks.data.stages.pack import PackConfig, pack
from textbooks.errors import DataError

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("json", "email", "logging", "http", "urllib")


def cli() -> list[str]:
    script = Path(sys.executable).with_name("textbooks-data")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "textbooks.data.app"]


def table(out: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(out / p) for p in read_manifest(out)["parts"])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, stdlib_dir: Path) -> list[str]:
    return [str(stdlib_dir / p) for p in PACKAGES]


def test_any_number_of_tasks_writes_the_same_output(tmp_path: Path, corpus: list[str], tiny_data) -> None:
    one = ingest(
        IngestConfig(inputs=corpus, out_dir=str(tmp_path / "one"), shard_bytes=200_000), progress=False
    )
    four = ingest(
        IngestConfig(inputs=corpus, out_dir=str(tmp_path / "four"), shard_bytes=200_000),
        ExecutorConfig(tasks=4, workers=2),
        progress=False,
    )
    assert len(one["parts"]) > 4 and one["parts"] == four["parts"]
    assert table(tmp_path / "one").equals(table(tmp_path / "four"))
    assert {k: one[k] for k in ("documents", "filtered", "per_input")} == {
        k: four[k] for k in ("documents", "filtered", "per_input")
    }
    assert one["steps"]["filter"]["tasks"] == 1 and four["steps"]["filter"]["tasks"] == 4
    tok = str(tiny_data["tokenizer"])
    p1 = pack(
        PackConfig(inputs=[str(tmp_path / "one")], out_dir=str(tmp_path / "p1"), tokenizer=tok),
        progress=False,
    )
    p4 = pack(
        PackConfig(inputs=[str(tmp_path / "four")], out_dir=str(tmp_path / "p4"), tokenizer=tok),
        ExecutorConfig(tasks=3, workers=2),
        progress=False,
    )
    assert p1["shards"] == p4["shards"] and p1["tokens"] == p4["tokens"] > 0
    for s in p1["shards"]:
        assert (tmp_path / "p1" / s["path"]).read_bytes() == (tmp_path / "p4" / s["path"]).read_bytes()


def _ingest_cli(inputs: list[str], out: Path, *extra: str) -> subprocess.Popen:
    args = [
        *cli(),
        "stage=ingest",
        f"stage.inputs=[{','.join(inputs)}]",
        f"stage.out_dir={out}",
        "stage.shard_bytes=100000",
        f"paths.data={out.parent / 'data'}",
        "progress=false",
        *extra,
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_killed_worker_loses_only_its_task(tmp_path: Path, corpus: list[str]) -> None:
    full, killed = tmp_path / "full", tmp_path / "killed"
    proc = _ingest_cli(corpus, full, "executor.tasks=6", "executor.workers=2")
    assert proc.wait(timeout=300) == 0, proc.stdout.read()
    proc = _ingest_cli(corpus, killed, "executor.tasks=6", "executor.workers=2")
    running = killed / ".stage" / "filter" / "running"
    deadline = time.time() + 120
    victim = None
    while victim is None:
        assert time.time() < deadline and proc.poll() is None, "no task was seen running"
        for f in sorted(running.glob("*")) if running.is_dir() else []:
            try:
                victim = (int(f.name), int(f.read_text()))
            except (ValueError, FileNotFoundError):
                continue
            break
        time.sleep(0.005)
    os.kill(victim[1], signal.SIGKILL)  # the worker process; it may have moved on to its next task
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 2, output
    line = [x for x in output.splitlines() if x.startswith("error:")]
    killed_task = re.search(r"task (\d+) its process was killed by SIGKILL", line[0] if line else "")
    assert len(line) == 1 and killed_task and int(killed_task[1]) >= victim[0], output
    rank = int(killed_task[1])
    assert "rerun the same command" in line[0] and "Traceback" not in output
    # a reader of the half-built stage is told so instead of reading part of it
    with pytest.raises(DataError, match="not complete"):
        plan_shards([resolve(str(killed), where="test")])
    completions = killed / ".stage" / "filter" / "completions"
    done = {
        p.name: (killed / ".stage" / "filter" / "tasks" / f"{p.name}.json").stat().st_mtime_ns
        for p in completions.iterdir()
    }
    assert f"{rank:05d}" not in done and len(done) < 6
    proc = _ingest_cli(corpus, killed, "executor.tasks=6", "executor.workers=2")
    assert proc.wait(timeout=300) == 0, proc.stdout.read()
    tasks = killed / ".stage" / "filter" / "tasks"
    assert {n: (tasks / f"{n}.json").stat().st_mtime_ns for n in done} == done  # not run again
    assert table(killed).equals(table(full))
    assert read_manifest(killed)["filtered"] == read_manifest(full)["filtered"]


@pytest.mark.slow
def test_unreadable_inputs_are_named_counted_and_fatal_above_the_fraction(
    tmp_path: Path, stdlib_dir: Path
) -> None:
    good = [
        {"id": str(i), "text": (stdlib_dir / "json" / n).read_text()}
        for i, n in enumerate(["decoder.py", "encoder.py"])
    ]
    inputs = tmp_path / "in"
    inputs.mkdir()
    pq.write_table(pa.Table.from_pylist(good * 20), inputs / "a.parquet")
    whole = (inputs / "a.parquet").read_bytes()
    (inputs / "b.parquet").write_bytes(whole[: len(whole) // 2])  # truncated
    (inputs / "c.parquet").write_bytes(os.urandom(5000))  # not Parquet at all
    jsonl = tmp_path / "d.jsonl.gz"
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in good * 20).encode())
    jsonl.write_bytes(data[: len(data) - 200])  # truncated gzip
    bad_utf8 = tmp_path / "e.jsonl"
    bad_utf8.write_bytes(
        b'{"text": "ok"}\n{"text": "caf\xe9"}\n' + os.urandom(300).replace(b"\n", b"") + b"\n"
    )
    cfg = IngestConfig(
        inputs=[str(inputs), str(jsonl), str(bad_utf8)], out_dir=str(tmp_path / "out"), max_bad_fraction=0.5
    )
    m = ingest(cfg, progress=False)
    read = m["read"]
    assert read["bad_files"] == 3
    named = "\n".join(read["bad_file_examples"])
    assert "b.parquet" in named and "c.parquet" in named and "d.jsonl.gz: truncated or corrupt gzip" in named
    assert read["bad"] == 2 and any(f"{bad_utf8}:2: invalid UTF-8" in e for e in read["bad_examples"])
    assert m["documents"] >= 40 and "caf\ufffd" not in "".join(
        table(tmp_path / "out").column("text").to_pylist()
    )
    proc = _ingest_cli([str(inputs)], tmp_path / "strict", "stage.max_bad_fraction=0.01")
    output = proc.communicate(timeout=300)[0]
    errors = [x for x in output.splitlines() if x.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in output, output
    assert "c.parquet: not a readable Parquet file" in errors[0] and "stage.max_bad_fraction" in errors[0]
    # the counted tasks are kept: raising the fraction (how the stage runs, not what it writes) only publishes
    strict = tmp_path / "strict"
    tasks = {p.name: p.stat().st_mtime_ns for p in (strict / ".stage" / "filter" / "tasks").iterdir()}
    proc = _ingest_cli([str(inputs)], strict, "stage.max_bad_fraction=0.9")
    assert proc.wait(timeout=300) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (strict / ".stage" / "filter" / "tasks").iterdir()} == tasks


def test_reader_shards_are_deterministic_and_cover_every_file(stdlib_dir: Path) -> None:
    src = resolve(str(stdlib_dir / "email"), where="test")
    shards = plan_shards([src], shard_bytes=50_000)
    assert shards == plan_shards([src], shard_bytes=50_000) and len(shards) > 3
    files = [f for s in shards for f in s.files]
    assert files == sorted(files) and len(set(files)) == len(files)
    assert all(s.bytes <= 50_000 or len(s.files) == 1 for s in shards)
    stats = ReadStats()
    texts = [r["text"] for s in shards for r in read_shard(s, stats)]
    assert len(texts) == stats.documents == len(files)


def _rows(out: Path) -> list[dict]:
    m = read_manifest(out)
    return [r for p in m["parts"] for r in pq.read_table(out / p).to_pylist()]


@pytest.mark.slow
def test_every_stage_writes_the_same_rows_with_one_or_four_tasks(tmp_path: Path, stdlib_dir: Path) -> None:
    """annotate, exercises (mined and synthetic), textbooks, decontaminate and classify: tasks=1 and tasks=4
    on 2 workers give the same rows (ids, texts, every column); the LLM stages ask each request once."""
    import hashlib

    from openai_server import OpenAIServer, last_user_message

    from textbooks.data.stages.annotate import AnnotateConfig, annotate
    from textbooks.data.stages.classify import ClassifyConfig, classify
    from textbooks.data.stages.decontaminate import DecontaminateConfig, decontaminate
    from textbooks.data.stages.exercises import ExercisesConfig, build_exercises
    from textbooks.data.stages.textbooks import TextbooksConfig, synthesize
    from textbooks.llm.config import Backoff, LLMConfig

    src = tmp_path / "src"
    src.mkdir()
    for f in [p for p in sorted(stdlib_dir.glob("*.py")) if p.stat().st_size < 30_000][:48]:
        (src / f.name).write_bytes(f.read_bytes())

    def answer(messages: list[dict], body: dict) -> str:
        prompt = last_user_message(messages)
        h = hashlib.sha256(f"{prompt}|{body.get('seed')}".encode()).hexdigest()
        k = int(h[:4], 16)
        if "write `" in prompt:  # an exercise that passes its two tests (the stage runs them)
            name = prompt.split("write `")[1].split("`")[0]
            doc = f'    """Return x plus {k}.\n\n    >>> {name}(1)\n    {k + 1}\n    """\n'
            return f"```python\ndef {name}(x):\n{doc}    return x + {k}\n\nassert {name}(2) == {k + 2}\n```"
        words = " ".join(f"word{c}" for c in h) * 4  # a section whose code runs (the stage runs it)
        return f"# Section {h[:8]}\n\n{words}\n\n```python\ntotal = {k}\nprint(total + 1)\n```\n"

    with OpenAIServer(answer) as server:
        outs: dict[int, Path] = {}
        for tasks in (1, 4):
            ex = ExecutorConfig(tasks=tasks, workers=2 if tasks > 1 else 1)
            root = tmp_path / f"t{tasks}"
            llm = LLMConfig(
                base_url=server.url,
                model="m",
                cache=str(root / "llm.sqlite"),
                progress=False,
                backoff=Backoff(base=0.01),
            )
            ingest(
                IngestConfig(inputs=[str(src)], out_dir=str(root / "corpus"), shard_bytes=60_000),
                ex,
                progress=False,
            )
            annotate(
                AnnotateConfig(
                    input=str(root / "corpus"),
                    out_dir=str(root / "annotate"),
                    annotator="heuristic",
                    sample_size=30,
                ),
                None,
                ex,
                progress=False,
            )
            build_exercises(
                ExercisesConfig(out_dir=str(root / "mined"), source="mined", input=str(root / "corpus")),
                None,
                ex,
                progress=False,
            )
            received = server.received
            build_exercises(
                ExercisesConfig(out_dir=str(root / "synthetic"), n=10, requests_per_part=3, topics=["a", "b"],
                                name_verbs=["get", "put"], name_nouns=["x", "y"], prompt="On {topic}: write `{name}`."),
                llm, ex, progress=False,
            )  # fmt: skip
            synthesize(
                TextbooksConfig(out_dir=str(root / "textbooks"), topics=["t1", "t2"], audiences=["a1"], n=10, requests_per_part=3, min_chars=10),
                llm, ex, progress=False,
            )  # fmt: skip
            assert server.received - received == 20  # each request asked once, whatever the tasks
            decontaminate(
                DecontaminateConfig(inputs=[str(root / "mined")], out_dir=str(root / "decontaminated"), benchmarks=["humaneval"], embedder=None),
                ex, progress=False,
            )  # fmt: skip
            classify(
                ClassifyConfig(input=str(root / "corpus"), annotations=str(root / "annotate"), out_dir=str(root / "filtered"),
                               embed_max_chars=200, forest={"n_estimators": 20}, n_jobs=1, tokenizer=None),
                ex, progress=False,
            )  # fmt: skip
            outs[tasks] = root
    for stage in ("corpus", "annotate", "mined", "synthetic", "textbooks", "decontaminated", "filtered"):
        one, four = _rows(outs[1] / stage), _rows(outs[4] / stage)
        assert one == four and one, stage


def test_shards_are_shared_out_by_weight_and_every_shard_once():
    assert balanced(7, 3) == [[0, 3, 6], [1, 4], [2, 5]]  # equal weights: rank, rank + world_size, ...
    assert balanced(5, 2, [0] * 5) == [[0, 2, 4], [1, 3]]
    sizes = [677, 2_092_302, 205_353, 1_500_000, 90_000, 3_000, 800_000, 1_200_000, 40_000, 600_000] * 3
    for world in (1, 2, 4, 8, 40):
        tasks = balanced(len(sizes), world, sizes)
        assert sorted(i for t in tasks for i in t) == list(range(len(sizes)))
        assert all(t == sorted(t) for t in tasks)
        loads = [sum(sizes[i] for i in t) for t in tasks]
        assert max(loads) - min(loads) <= max(sizes)  # the greedy's bound: within one shard of each other
        assert tasks == balanced(len(sizes), world, sizes)  # deterministic
    round_robin = [sum(sizes[r::4]) for r in range(4)]
    assert max(sum(sizes[i] for i in t) for t in balanced(len(sizes), 4, sizes)) < max(round_robin)


def test_shards_are_shared_out_by_the_bytes_a_stage_reads(tmp_path: Path, stdlib_dir: Path) -> None:
    """Ingest lists every file (``**/*``) but reads only wanted ones: a big binary, alone in its shard,
    weighs nothing, so the Python files are shared out evenly instead of all to the other task."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.so").write_bytes(os.urandom(3_000_000))
    text = (stdlib_dir / "json" / "decoder.py").read_text()
    for i in range(6):
        (src / f"m{i}.py").write_text(text)
    size = (src / "m0.py").stat().st_size
    cfg = IngestConfig(inputs=[str(src)], out_dir=str(tmp_path / "out"), shard_bytes=size + 10)
    shards = Ingest(cfg).plan()["shards"]
    assert [(len(s["files"]), s["bytes"], s["read_bytes"]) for s in shards] == [
        (1, 3_000_000, 0),
        *[(1, size, size)] * 6,
    ]
    ranks = []
    for rank in range(2):
        task = Task(tmp_path / "out", "filter", rank, 2, {"shards": shards})
        ranks.append(sorted(int(i) for i in task.each_shard(len(shards), lambda i: {})["shards"]))
    assert sorted(i for r in ranks for i in r) == list(range(7))
    assert [len([i for i in r if i > 0]) for r in ranks] == [3, 3]  # by all bytes: 0 and 6
    by_bytes = balanced(len(shards), 2, [s["bytes"] for s in shards])
    assert sorted(len([i for i in r if i > 0]) for r in by_bytes) == [0, 6]
