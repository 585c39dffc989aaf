"""Training in more than one real process on CPU (gloo): two DDP processes train as one with the same
global batch, FSDP2 (fully_shard) as DDP, a run killed with -9 resumes at another world size with the same
data order, a local sweep starts each job's ranks, and on a real SLURM a sweep survives scancel and a
2-task job trains with DDP.

Dropout is off here: its masks are drawn per rank and micro-batch, so with dropout the runs differ by the
noise it adds, not by a bug. Without it the two world sizes compute the same sums in another order (two
half-batch gradients all-reduced by gloo instead of one accumulation), so losses agree to float32 rounding,
not bit for bit: ``TOL`` is 1e-5 on losses of ~6 (~20 float32 ulps; 1e-6 is what 39 steps differ by here).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_train import BIN, FAST, cli, losses

TOL = 1e-5
RUN = "pretrain-stdlib-cpu_tiny-20K-s0"
ARGS = [
    *FAST,
    "train.tokens=20K",  # 39 steps
    "recipe.checkpoint.every_steps=3",  # odd, so 1 and 2 micro-batches per step place checkpoints differently
    "recipe.dropout.embd=0",
    "recipe.dropout.attn=0",
    "recipe.dropout.resid=0",
    "logger=[csv,wandb]",
    "train.export=false",
]
DDP = ["trainer.devices=2", "trainer.strategy=ddp"]


def args(tiny_data, runs: Path, *extra: str) -> list[str]:
    return [*tiny_data["overrides"], *ARGS, f"paths.runs={runs}", *extra]


def close(a: list[tuple[str, str]], b: list[tuple[str, str]]) -> bool:
    """Same steps, and values equal to ``TOL``."""
    return [s for s, _ in a] == [s for s, _ in b] and all(
        abs(float(x) - float(y)) <= TOL for (_, x), (_, y) in zip(a, b)
    )


def column(run_dir: Path, key: str) -> list[str]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [r[key] for r in csv.DictReader(f) if r.get(key)]


def kill_after(cmd: list[str], cwd: Path, ckpt: Path, log: Path) -> None:
    """Start ``cmd`` (all its processes in one group, its output in ``log``) and kill the group with -9 once
    ``ckpt`` exists."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        p = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.time() + 300
        while not ckpt.is_file() and time.time() < deadline and p.poll() is None:
            time.sleep(0.1)
        time.sleep(0.3)  # a little past the checkpoint: the resumed run redoes a step or two
        ended = p.poll()
        if ended is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    tail = log.read_text(errors="replace")[-3000:]
    assert ended is None, f"the run ended (exit {ended}) without writing {ckpt.name}:\n{tail}"


@pytest.fixture(scope="module")
def one_process(tiny_data, tmp_path_factory) -> Path:
    """The reference: the run in one process, uninterrupted."""
    runs = tmp_path_factory.mktemp("one")
    r = cli(args(tiny_data, runs), cwd=tiny_data["root"])
    assert r.returncode == 0, r.stderr[-3000:]
    return runs / RUN


@pytest.fixture(scope="module")
def two_processes(tiny_data, tmp_path_factory) -> tuple[Path, str]:
    """The run with DDP in two processes, and what it printed."""
    runs = tmp_path_factory.mktemp("two")
    r = cli(args(tiny_data, runs, *DDP), cwd=tiny_data["root"])
    assert r.returncode == 0, r.stderr[-3000:]
    return runs / RUN, r.stdout + r.stderr


@pytest.mark.slow
def test_two_processes_train_as_one_with_the_same_global_batch(one_process, two_processes):
    run, out = two_processes
    assert "accumulate 1, 2 devices" in out and "GLOBAL_RANK: 1, MEMBER: 2/2" in out
    assert [p.name for p in run.parent.iterdir()] == [RUN]  # one run directory, shared by both ranks
    assert close(losses(one_process), losses(run)) and len(losses(run)) == 39
    assert close(losses(one_process, "val/loss"), losses(run, "val/loss"))
    assert column(one_process, "train/tokens_seen") == column(run, "train/tokens_seen")
    one, two = (json.loads((d / "results.json").read_text()) for d in (one_process, run))
    assert two["status"] == "complete" and two["tokens_seen"] == one["tokens_seen"] == 39 * 8 * 64
    assert len(list(run.rglob("metrics.csv"))) == 1
    from wandb_records import summarize

    (offline,) = (run / "wandb").glob("offline-run-*")  # one W&B run, rank 0's
    wb = summarize(next(offline.rglob("run-*.wandb")))
    assert wb["run"].run_id == (run / "wandb_id.txt").read_text() and "train/loss" in wb["history_keys"]
    assert float(wb["summary"]["final/steps"]) == 39


@pytest.mark.slow
def test_fully_shard_on_two_cpu_processes_trains_as_ddp(tiny_data, two_processes, tmp_path):
    """trainer=fully_shard (FSDP2, gloo): the losses of DDP to TOL; the exported model is the whole one."""
    import torch

    from textbooks.checkpoint import load_pretrained

    r = cli(
        args(tiny_data, tmp_path, "trainer=fully_shard", "trainer.devices=2", "train.export=true"),
        cwd=tiny_data["root"],
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    run, (ddp, _) = tmp_path / RUN, two_processes
    assert close(losses(ddp), losses(run)) and len(losses(run)) == 39
    assert close(losses(ddp, "val/loss"), losses(run, "val/loss"))
    model, _ = load_pretrained(run / "model")
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 39
    assert torch.equal(model.lm_head.weight, last["state_dict"]["model.lm_head.weight"])


@pytest.mark.slow
def test_a_killed_run_resumes_at_another_world_size_with_the_same_data_order(
    tiny_data, one_process, tmp_path
):
    """2 processes, killed -> 1 process, killed -> 2 processes to the end: every step's loss (so its
    samples), the validation and checkpoint steps and the W&B run are those of the uninterrupted run."""
    run, root, cmd = tmp_path / RUN, tiny_data["root"], [str(BIN / "textbooks-train")]
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    kill_after(
        [*cmd, *args(tiny_data, tmp_path, *DDP)], root, run / "checkpoints" / "step0000009.ckpt", first
    )
    # resume from step 9 whichever checkpoint the kill came after (as if it had cut last.ckpt short): an odd
    # step, at which 2 micro-batches per step count the steps' batches differently from 1
    for c in (run / "checkpoints").iterdir():
        if c.name == "last.ckpt" or c.name > "step0000009.ckpt":
            c.unlink()
    kill_after([*cmd, *args(tiny_data, tmp_path)], root, run / "checkpoints" / "step0000021.ckpt", second)
    r = cli(args(tiny_data, tmp_path, *DDP), cwd=root)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Restored all states" in out, out[-3000:]
    assert close(losses(one_process), losses(run)) and len(losses(run)) == 39
    assert close(losses(one_process, "val/loss"), losses(run, "val/loss"))
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == sorted(p.name for p in (one_process / "checkpoints").iterdir())
    assert json.loads((run / "results.json").read_text())["tokens_seen"] == 39 * 8 * 64
    run_id = (run / "wandb_id.txt").read_text()
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 3 and all(p.name.endswith(run_id) for p in offline)  # one W&B run, resumed


@pytest.mark.slow
def test_a_local_sweep_with_ddp_starts_each_jobs_ranks_for_that_job(tiny_data, tmp_path):
    """Lightning starts rank 1 by re-running the command line: in a multirun it must run this job in
    this job's directory, not the whole sweep, and the next job must start its own."""
    sweep = ["sweep_name=grid", "train.tokens=2K,3K", "logger=[csv]"]
    r = cli(["-m", *args(tiny_data, tmp_path, *DDP), *sweep], cwd=tiny_data["root"])
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert out.count("Launching 2 jobs") == 1 and out.count("GLOBAL_RANK: 1, MEMBER: 2/2") == 2
    assert [p.name for p in tmp_path.iterdir()] == ["grid"]
    for tokens, steps in (("2K", 3), ("3K", 5)):
        run = tmp_path / "grid" / f"pretrain-stdlib-cpu_tiny-{tokens}-s0"
        assert json.loads((run / "results.json").read_text())["steps"] == steps
        assert (run / "train_ddp_process_1.log").is_file()  # rank 1's Hydra log: it ran in this directory


# -- SLURM ------------------------------------------------------------------------------------------------
# conf/hydra/launcher/slurm.yaml sized for the one-node test cluster: no GPUs, 1 CPU and 2 GB per task
ON_SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.tasks_per_node=1",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "hydra.launcher.timeout_min=10",
]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A real one-node SLURM cluster (tests/slurm_cluster.py); its clients' environment."""
    import slurm_cluster

    why = slurm_cluster.missing()
    if why:
        pytest.skip(why)
    with slurm_cluster.cluster(tmp_path_factory.mktemp("slurm")) as env:
        yield {**os.environ, **env, "PYTHONUNBUFFERED": "1"}


def squeue(env: dict[str, str]) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.mark.slow
def test_a_sweep_on_slurm_writes_its_runs_and_resumes_after_scancel(tiny_data, slurm, tmp_path):
    """Figure 2.1's grid, tiny (2 data sets x 1 model), one SLURM job per run: both jobs are cancelled
    mid-run, the same command resubmitted resumes each from its last checkpoint, and textbooks-collect
    tables the two runs."""
    from textbooks.data.stages.pack import PackConfig, pack

    root = tmp_path / "root"
    shutil.copytree(tiny_data["root"] / "data", root / "data")
    filtered = root / "data" / "tokens" / "bpe512" / "filtered"  # a second data set: half the corpus
    pack(
        PackConfig(
            inputs=tiny_data["inputs"][:3], out_dir=str(filtered), tokenizer=str(tiny_data["tokenizer"])
        ),
        progress=False,
    )
    cmd = [
        str(BIN / "textbooks-train"),
        "-m",
        *args(tiny_data, tmp_path / "runs", f"paths.root={root}", *ON_SLURM),
        "sweep_name=grid",
        "dataset=stdlib,filtered",
    ]
    sweep = tmp_path / "runs" / "grid"
    runs = [sweep / f"pretrain-{d}-cpu_tiny-20K-s0" for d in ("stdlib", "filtered")]
    launcher = subprocess.Popen(
        cmd, cwd=tmp_path, env=slurm, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while (
        not all((r / "checkpoints" / "step0000009.ckpt").is_file() for r in runs) and time.time() < deadline
    ):
        assert launcher.poll() is None, "the sweep ended before it was cancelled"
        time.sleep(0.2)
    jobs = squeue(slurm)
    assert len(jobs) == 2, jobs
    subprocess.run(["scancel", *jobs], env=slurm, check=True)
    while squeue(slurm) and time.time() < deadline:
        time.sleep(0.5)
    # the launcher waits for results that a cancelled job never writes (this cluster keeps no accounting
    # for it to learn of the cancellation from): stop it, as a user would
    launcher.terminate()
    launcher.wait()
    assert not any((r / "results.json").exists() for r in runs)
    r = subprocess.run(cmd, cwd=tmp_path, env=slurm, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert logs.count("; resuming from ") == 2 and "SLURM auto-requeueing enabled" in logs
    for run in runs:
        res = json.loads((run / "results.json").read_text())
        assert res["status"] == "complete" and res["steps"] == 39 and res["sweep_name"] == "grid"
        assert [s for s, _ in losses(run)] == [f"{k}.0" for k in range(1, 40)]  # each step logged once
        assert len(list((run / "wandb").glob("offline-run-*"))) == 2  # one W&B run, resumed
    c = subprocess.run(
        [str(BIN / "textbooks-collect"), str(sweep)], cwd=tmp_path, env=slurm, capture_output=True, text=True
    )
    assert c.returncode == 0, c.stderr[-3000:]
    with open(sweep / "runs.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert sorted((t["dataset"], t["status"], t["steps"]) for t in table) == [
        ("filtered", "complete", "39"),
        ("stdlib", "complete", "39"),
    ]


@pytest.mark.slow
def test_a_two_task_slurm_job_trains_with_ddp_as_one_process(tiny_data, slurm, one_process, tmp_path):
    """--ntasks-per-node=2: SLURM starts both ranks, Lightning takes them from its environment."""
    cmd = [
        str(BIN / "textbooks-train"),
        "-m",
        *args(tiny_data, tmp_path, *ON_SLURM, *DDP),
        "hydra.launcher.tasks_per_node=2",
        "sweep_name=ddp",
    ]
    r = subprocess.run(cmd, cwd=tmp_path, env=slurm, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    logs = "".join(p.read_text() for p in (tmp_path / "ddp" / ".submitit").rglob("*_log.*"))
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in logs and "accumulate 1, 2 devices" in logs
    run = tmp_path / "ddp" / RUN
    assert close(losses(one_process), losses(run)) and len(losses(run)) == 39
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
