"""The same stages on the three engines: local processes, a real one-node SLURM cluster (job arrays chained by
dependencies) and a local Ray runtime. Outputs equal the local ones, a failing task is named with its log, and
the rerun runs only the tasks that did not complete."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import slurm_cluster
from stage_fixtures import Squares, SquaresConfig

from textbooks.data.engine.executor import ExecutorConfig, _local, run
from textbooks.data.engine.manifest import read_manifest
from textbooks.data.engine.stage import all_steps
from textbooks.data.stages.dedup import DedupConfig, dedup
from textbooks.data.stages.ingest import IngestConfig, ingest
from textbooks.data.stages.pack import PackConfig, pack
from textbooks.errors import DataError

TINY = "smollm2-135m-instruct-q4_1"  # the server's mechanics: the fastest model to start and answer

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
PACKAGES = ("json", "email", "http")


def table(out: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(out / p) for p in read_manifest(out)["parts"])


def task_times(out: Path, step: str) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / ".stage" / step / "tasks").glob("*.json")}


def expected_sum(cfg: SquaresConfig) -> int:
    return sum(n * n for n in range(cfg.shards * cfg.per_shard))


@pytest.fixture()
def importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tasks run in other processes (jobs, Ray workers) that import this test's stage and the library."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(TESTS), str(SRC), os.environ.get("PYTHONPATH", "")])
    )


def check_failure_then_rerun(tmp_path: Path, ex: ExecutorConfig) -> None:
    """Task 1 fails; the error names it and its log; the rerun runs task 1 only and publishes."""
    fail = tmp_path / "fail-now"
    fail.write_text("")
    cfg = SquaresConfig(out_dir=str(tmp_path / "squares"), fail_rank=1, fail_file=str(fail))
    with pytest.raises(DataError, match=r"task 1 was told to fail"):
        run(Squares(cfg), ex, progress=False)
    out = Path(cfg.out_dir)
    assert read_manifest(out) is None
    done = task_times(out, "square")
    assert sorted(done) == ["00000.json", "00002.json"]
    log = (out / ".stage" / "square" / "logs" / "task_00001.log").read_text()
    assert "told to fail" in log
    fail.unlink()
    m = run(Squares(cfg), ex, progress=False)
    after = task_times(out, "square")
    assert {k: after[k] for k in done} == done and "00001.json" in after  # only task 1 ran again
    assert m["sum"] == expected_sum(cfg) and m["steps"]["square"]["tasks"] == 3
    assert m["values"] == [n * n for n in range(cfg.shards * cfg.per_shard)]


def test_local_processes_rerun_only_the_failed_task(tmp_path: Path, importable: None) -> None:
    check_failure_then_rerun(tmp_path, ExecutorConfig(tasks=3, workers=2))


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's")
def test_zero_workers_are_one_per_cpu_this_process_may_use(tmp_path: Path) -> None:
    """``workers=0`` counts the CPUs the process may run on (a container's or a SLURM job's share), not the
    machine's."""
    stage = Squares(SquaresConfig(out_dir=str(tmp_path / "squares")))
    step = all_steps(stage)[0]
    allowed = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(allowed)})
        assert _local(stage, step, ExecutorConfig(tasks=3, workers=0), progress=False).workers == 1
    finally:
        os.sched_setaffinity(0, allowed)
    wide = _local(stage, step, ExecutorConfig(tasks=8, workers=0), progress=False).workers
    assert wide == min(8, len(allowed))


def test_local_workers_run_several_tasks_each_with_its_own_peak_memory(
    tmp_path: Path, importable: None
) -> None:
    """2 worker processes run the 6 tasks (a process's imports and memory serve all its tasks); a task's
    peak memory is its own, not that of the tasks its process ran before (each process's first task holds
    300 MB; one of the two runs at least 3 tasks, whichever way the tasks fell)."""
    cfg = SquaresConfig(out_dir=str(tmp_path / "squares"), big_mb=300, seconds=0.3)
    m = run(Squares(cfg), ExecutorConfig(tasks=6, workers=2), progress=False)
    assert m["sum"] == expected_sum(cfg)
    tasks = [
        json.loads(p.read_text())
        for p in sorted((tmp_path / "squares" / ".stage" / "square" / "tasks").glob("*.json"))
    ]
    pids = {t["pid"] for t in tasks}
    assert len(tasks) == 6 and len(pids) == 2 and os.getpid() not in pids
    for pid in pids:
        first, *later = [t for t in tasks if t["pid"] == pid]  # in rank order, the order they are handed out
        assert all(first["max_rss_mb"] > t["max_rss_mb"] + 250 for t in later), (first, later)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_step_shows_one_bar_that_all_its_tasks_count_in(
    tmp_path: Path, importable: None, capfd: pytest.CaptureFixture[str], workers: int
) -> None:
    """3 tasks run in this process (workers=1) or in 2 worker processes: one progress bar for the step,
    counting every task's numbers, not a bar per task or per shard; its total is what the tasks added, and
    the counts beside it (each task's own running count) are summed over the tasks."""
    cfg = SquaresConfig(out_dir=str(tmp_path / "squares"))
    run(Squares(cfg), ExecutorConfig(tasks=3, workers=workers))
    err = capfd.readouterr().err
    bars = [line for line in err.split("\n") if "squares" in line]
    assert len(bars) == 1, err
    final = bars[0].split("\r")[-1]
    n = cfg.shards * cfg.per_shard
    assert final.startswith("squares: 100%") and f" {n}/{n} " in final and "tasks=3/3" in final, final
    assert f"shards={cfg.shards}," in final, final


# -- SLURM ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory):
    why = slurm_cluster.missing()
    if why:
        pytest.skip(why)
    with slurm_cluster.cluster(tmp_path_factory.mktemp("slurm")) as env:
        yield env


@pytest.fixture()
def on_slurm(slurm: dict[str, str], monkeypatch: pytest.MonkeyPatch, importable: None) -> ExecutorConfig:
    for k, v in slurm.items():
        monkeypatch.setenv(k, v)
    return ExecutorConfig(
        name="slurm", tasks=3, workers=-1, time="00:10:00", mem_per_cpu_gb=1.0, poll_seconds=0.5
    )


@pytest.mark.slow
def test_slurm_arrays_rerun_only_the_failed_task(tmp_path: Path, on_slurm: ExecutorConfig) -> None:
    check_failure_then_rerun(tmp_path, on_slurm)
    jobs = json.loads((tmp_path / "squares" / ".stage" / "slurm.json").read_text())["jobs"]
    assert set(jobs) == {"square", "total", "publish"}  # one array per step, chained


@pytest.mark.slow
def test_slurm_builds_the_same_data_as_local(
    tmp_path: Path, on_slurm: ExecutorConfig, stdlib_dir: Path
) -> None:
    inputs = [str(stdlib_dir / p) for p in PACKAGES]
    outs = {}
    for name, ex in (("local", None), ("slurm", on_slurm)):
        root = tmp_path / name
        ingest(
            IngestConfig(inputs=inputs, out_dir=str(root / "corpus"), shard_bytes=150_000), ex, progress=False
        )
        dedup(DedupConfig(inputs=[str(root / "corpus")], out_dir=str(root / "dedup")), ex, progress=False)
        outs[name] = root
    for stage in ("corpus", "dedup"):
        assert table(outs["slurm"] / stage).equals(table(outs["local"] / stage)), stage
    assert (
        read_manifest(outs["slurm"] / "dedup")["counts"] == read_manifest(outs["local"] / "dedup")["counts"]
    )
    jobs = json.loads((outs["slurm"] / "dedup" / ".stage" / "slurm.json").read_text())["jobs"]
    assert list(jobs) == ["signatures", "buckets", "cluster", "filter", "publish"]
    script = (outs["slurm"] / "dedup" / ".stage" / "signatures" / "launch_script.slurm").read_text()
    assert "#SBATCH --array=0-2" in script and "#SBATCH --requeue" in script


# -- Ray -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_runtime():
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'textbooks[ray]')")
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_runs_stages_and_reruns_only_the_failed_task(
    tmp_path: Path, importable: None, ray_runtime, stdlib_dir: Path, tiny_data
) -> None:
    if not ray_runtime.is_initialized():
        ray_runtime.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ex = ExecutorConfig(name="ray", tasks=3, workers=-1, mem_per_cpu_gb=0.5)
    check_failure_then_rerun(tmp_path, ex)
    inputs = [str(stdlib_dir / p) for p in PACKAGES]
    local, remote = tmp_path / "local", tmp_path / "ray"
    tok = str(tiny_data["tokenizer"])
    for root, e in ((local, None), (remote, ex)):
        ingest(
            IngestConfig(inputs=inputs, out_dir=str(root / "corpus"), shard_bytes=150_000), e, progress=False
        )
        pack(
            PackConfig(inputs=[str(root / "corpus")], out_dir=str(root / "tokens"), tokenizer=tok),
            e,
            progress=False,
        )
    assert table(remote / "corpus").equals(table(local / "corpus"))
    shards = read_manifest(local / "tokens")["shards"]
    assert shards == read_manifest(remote / "tokens")["shards"] and len(shards) > 3
    for s in shards:
        assert (local / "tokens" / s["path"]).read_bytes() == (remote / "tokens" / s["path"]).read_bytes()


@pytest.mark.slow
def test_slurm_llm_stage_with_a_server_per_task_shares_one_cache(
    tmp_path: Path, on_slurm: ExecutorConfig, importable: None
) -> None:
    """textbooks (LLM) on SLURM with llm=local: each task starts its own llama.cpp server on its node, writes
    a cache shard of its own; publishing folds the shards in, so the same stage elsewhere asks nothing."""
    from textbooks.data.stages.textbooks import TextbooksConfig, synthesize
    from textbooks.llm.cache import shard_dir
    from textbooks.llm.config import LLMConfig, LocalServerConfig

    def llm() -> LLMConfig:
        local = LocalServerConfig(model=TINY, parallel=1, ctx_size=1024, log_dir=str(tmp_path / "logs"))
        return LLMConfig(base_url=None, local=local, model="smollm2", cache=str(tmp_path / "llm.sqlite"),
                         concurrency=1, max_tokens=24, progress=False)  # fmt: skip

    def cfg(out: str) -> TextbooksConfig:
        return TextbooksConfig(out_dir=str(tmp_path / out), topics=["loops", "lists"], audiences=["kids"], n=4,
                           requests_per_part=2, min_chars=5)  # fmt: skip

    m = synthesize(cfg("slurm"), llm(), on_slurm, progress=False)
    assert m["requested"] == 4 and m["llm"]["http_requests"] >= 4 and m["steps"]["generate"]["tasks"] == 3
    assert not list(shard_dir(tmp_path / "llm.sqlite").glob("*.sqlite"))  # folded into the cache
    again = synthesize(cfg("local"), llm(), progress=False)
    assert again["llm"]["cache_hits"] == 4 and again["llm"]["http_requests"] == 0
