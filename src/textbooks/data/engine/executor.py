"""Run a stage's steps on an existing engine: datatrove's executors (local processes, SLURM arrays, Ray).

datatrove runs plain callables ``f(data, rank, world_size)`` and already gives what a sharded stage needs: a
completion marker and stats per task, a log file per task, and skipping of completed tasks on a rerun. Each step
of a stage (``textbooks.data.engine.stage``) becomes one datatrove executor whose logging directory is the step's
state in ``<stage>/.stage/<step>``:

* ``local`` (the default): this machine. ``workers`` processes (forked from a clean server) each run tasks
  one after another, so a task killed by a signal or the OOM killer is named by rank while a new process
  takes the remaining tasks; ``workers=1`` runs the tasks in this process. Steps run one after the other,
  each with one progress bar that all its tasks count in (``Task.bar``; worker processes send their counts).
* ``slurm``: one job array per step (``--array`` with ``%workers``), with per-task CPUs, memory, time and, for
  steps that embed text, GPUs; the steps are chained by ``afterok`` dependencies and the last one publishes the
  manifest, so nothing needs to stay logged in. ``wait=true`` follows the jobs until they end. A failed task
  is requeued by SLURM (``requeue``) or, after the run, rerun alone by the same command.
* ``ray``: a Ray cluster (``address``; none starts a local runtime), the ``ray`` extra.

On clusters the tasks draw no bars (each has its log file); ``slurm`` with ``wait=true`` shows one bar of the
stage's completed tasks.

What is not the engine's job stays here: the plan, the stage's key, and one error that says which tasks failed,
why, where their logs are, and that rerunning the same command runs only those.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datatrove.executor.base
from datatrove.executor.slurm import SlurmPipelineExecutor

from textbooks.config import dataclass_from
from textbooks.data.engine.inputs import WORK_DIR
from textbooks.data.engine.manifest import read_manifest
from textbooks.data.engine.stage import Stage, StageTask, Step, all_steps, prepare, published
from textbooks.data.engine.workers import LocalExecutor, fork_server
from textbooks.errors import ConfigError, TextbooksError
from textbooks.io import one_scan_per_directory
from textbooks.sandbox.pool import default_workers

log = logging.getLogger(__name__)

ENGINES = ("local", "slurm", "ray")


def _task_logger(logging_dir: Any, rank: int, local_rank: int = 0, node_rank: int = -1) -> Any:
    """A task's log goes to its file only (datatrove also copies it, tracebacks included, to the console);
    the console keeps the library's own logging, progress and the one-line errors of the command lines."""
    from loguru import logger

    logger.remove()
    logfile = logging_dir.open(f"logs/task_{rank:05d}.log", "w")
    prefix = f"[NODE {node_rank}] " if node_rank != -1 else ""
    fmt = prefix + "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {name}:{function}:{line} - {message}"
    logger.add(logfile, colorize=False, level="DEBUG", format=fmt)
    logger.info(f"Launching pipeline for {rank=}")
    return logfile


datatrove.executor.base.add_task_logger = _task_logger  # datatrove has no switch for its console copy


@dataclass
class ExecutorConfig:
    """``conf/executor/*.yaml``: where a stage's tasks run. Nothing here changes what a stage writes."""

    name: str = "local"  # local | slurm | ray
    tasks: int = 1  # tasks of each sharded step (the world size); outputs do not depend on it
    workers: int = 1  # tasks at once (local: processes, 0 = one per CPU it may use; slurm/ray: -1 = no limit)
    # clusters
    partition: str | None = None  # slurm partition (None: the cluster's default)
    time: str = "24:00:00"  # slurm time limit per task
    cpus_per_task: int = 1
    mem_per_cpu_gb: float = 2.0
    gpus_per_task: int = 0  # given to the steps that run a model (the classifier's embedding)
    qos: str | None = None
    sbatch_args: dict[str, Any] = field(default_factory=dict)  # more #SBATCH options, e.g. {account: x}
    env_command: str | None = None  # shell line run before each task (default: this Python's bin on PATH)
    requeue: bool = True  # let SLURM requeue a task whose node failed or was preempted
    wait: bool = True  # slurm: follow the jobs until the stage is published (false: submit and return)
    poll_seconds: float = 5.0
    address: str | None = None  # ray: the cluster to join ("auto", "ray://host:10001"); None starts one here

    def validate(self) -> None:
        if self.name not in ENGINES:
            raise ConfigError(f"executor={self.name!r} is not one of {', '.join(ENGINES)}")
        if self.tasks < 1:
            raise ConfigError(f"executor.tasks={self.tasks} must be at least 1")
        if self.name == "local" and self.workers < 0:
            raise ConfigError(f"executor.workers={self.workers}: use 0 (one per CPU) or a positive number")

    @classmethod
    def from_config(cls, node: Any) -> ExecutorConfig:
        cfg = cls() if node is None else dataclass_from(cls, node, "executor", drop=())
        cfg.validate()
        return cfg


def run(stage: Stage, executor: ExecutorConfig | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Build ``stage`` (skipped when its manifest is current) and return its manifest.

    With ``executor.name=slurm`` and ``wait=false`` the jobs are submitted and a dict with their ids returned."""
    ex = executor or ExecutorConfig()
    ex.validate()
    if ex.name == "local" and ex.tasks > 1 and ex.workers != 1:
        fork_server(stage)  # its imports run while the stage is keyed and planned (idle if it is current)
    with one_scan_per_directory():  # the key and the plan list raw inputs once
        key = stage.key()
        state = published(stage, key)
        if state == "current":
            log.info("%s: %s is current, skipping", stage.name, stage.out_dir)
            return read_manifest(stage.out_dir)  # type: ignore[return-value]
        if ex.name == "slurm":
            _check_no_jobs_running(stage)
        prepare(stage, key, fresh=state == "damaged")  # damaged outputs: nothing of that build is reused
    stage.on_executor(ex.name)
    steps = all_steps(stage)
    if ex.name == "slurm":
        ids = _submit_slurm(stage, steps, ex, progress)
        if not ex.wait:
            return {"stage": stage.name, "submitted": ids, "out_dir": str(stage.out_dir)}
        _wait_slurm(stage, steps, ids, ex, progress)
    else:
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm():  # a log line printed while a step's bar is shown goes above it
            for step in steps:
                executor_ = (
                    _local(stage, step, ex, progress)
                    if ex.name == "local"
                    else _ray(stage, step, ex, progress)
                )
                executor_.run()
                _check_step(stage, step, executor_.world_size, getattr(executor_, "exit_codes", {}))
    manifest = read_manifest(stage.out_dir)
    if manifest is None or {k: manifest.get(k) for k in key} != key:
        _check_step(stage, steps[-1], 1, {})
        raise TextbooksError(
            f"{stage.name}: finished without a manifest in {stage.out_dir}; rerun the command"
        )
    return manifest


def _tasks(step: Step, ex: ExecutorConfig) -> int:
    return ex.tasks if step.sharded else 1


def _step_dir(stage: Stage, step: Step) -> Path:
    return stage.out_dir / WORK_DIR / step.name


# -- failures -----------------------------------------------------------------------------------------------
def _user_error(name: str) -> type[TextbooksError]:
    todo: list[type[TextbooksError]] = [TextbooksError]
    while todo:
        cls = todo.pop()
        if cls.__name__ == name:
            return cls
        todo.extend(cls.__subclasses__())
    return TextbooksError


def _check_step(stage: Stage, step: Step, world_size: int, exit_codes: dict[int, int]) -> None:
    """Raise one error naming the failed tasks of ``step`` (nothing when all are complete)."""
    d = _step_dir(stage, step)
    done = {p.name for p in (d / "completions").glob("*")}
    missing = [r for r in range(world_size) if f"{r:05d}" not in done]
    if not missing:
        return
    errors = {}
    for r in missing:
        f = d / "errors" / f"{r:05d}.json"
        if f.is_file():
            errors[r] = json.loads(f.read_text())
    if len(missing) == 1 and missing[0] in errors and errors[missing[0]]["user_error"]:
        e = errors[missing[0]]
        raise _user_error(e["type"])(e["message"])
    reasons = []
    for r in missing[:5]:
        if r in errors:
            why = f"{errors[r]['type']}: {errors[r]['message']}"
        elif exit_codes.get(r, 0) < 0:
            why = f"its process was killed by {signal.Signals(-exit_codes[r]).name}"
        elif r in exit_codes:
            why = f"its process exited with status {exit_codes[r]}"
        else:
            why = "did not finish"
        reasons.append(f"task {r} {why} (log: {d / 'logs' / f'task_{r:05d}.log'})")
    more = f"; and {len(missing) - 5} more" if len(missing) > 5 else ""
    raise TextbooksError(
        f"{stage.name}: step {step.name!r}: {len(missing)} of {world_size} tasks did not complete: "
        + "; ".join(reasons)
        + more
        + f". Fix the cause and rerun the same command: the {world_size - len(missing)} complete tasks are kept"
    )


def _local(stage: Stage, step: Step, ex: ExecutorConfig, progress: bool) -> LocalExecutor:
    tasks = _tasks(step, ex)
    workers = ex.workers or default_workers()
    return LocalExecutor(
        pipeline=[StageTask(stage, step, progress=progress and min(workers, tasks) == 1)],
        tasks=tasks,
        workers=min(workers, tasks),
        logging_dir=str(_step_dir(stage, step)),
        progress=progress,
        desc=f"{stage.name}/{step.name}",  # its worker processes' name
    )


# -- ray ----------------------------------------------------------------------------------------------------
def _ray(stage: Stage, step: Step, ex: ExecutorConfig, progress: bool) -> Any:
    try:
        import ray
        from datatrove.executor.ray import RayPipelineExecutor
    except ImportError as e:
        raise ConfigError(
            "executor=ray needs Ray: pip install 'textbooks[ray]' (or pip install ray) on every node"
        ) from e
    if not ray.is_initialized():
        ray.init(address=ex.address, ignore_reinit_error=True, log_to_driver=False, include_dashboard=False)
    return RayPipelineExecutor(
        pipeline=[StageTask(stage, step)],
        tasks=_tasks(step, ex),
        workers=ex.workers if ex.workers > 0 else -1,
        logging_dir=str(_step_dir(stage, step)),
        cpus_per_task=ex.cpus_per_task,
        mem_per_cpu_gb=ex.mem_per_cpu_gb,
        gpus_per_task=ex.gpus_per_task if step.gpu else 0,
    )


# -- slurm --------------------------------------------------------------------------------------------------
class SlurmExecutor(SlurmPipelineExecutor):
    """datatrove's SLURM executor without its extra stats-merging job (the publishing step sums the stats) and
    without ``#SBATCH`` lines for options left unset."""

    def launch_merge_stats(self) -> None:
        pass

    def get_sbatch_args(self, max_array: int = 1) -> dict:
        args = {k: v for k, v in super().get_sbatch_args(max_array).items() if v is not None}
        args["mem-per-cpu"] = f"{round(float(self.mem_per_cpu_gb) * 1024)}M"  # sbatch takes whole units
        return args


def _slurm_state(stage: Stage) -> Path:
    return stage.out_dir / WORK_DIR / "slurm.json"


def _squeue(ids: list[str]) -> set[str]:
    """The ids among ``ids`` that SLURM still has queued or running."""
    if not ids:
        return set()
    proc = subprocess.run(
        ["squeue", "-h", "-o", "%F", "-j", ",".join(ids)], capture_output=True, text=True, check=False
    )
    return {line.strip() for line in proc.stdout.splitlines() if line.strip()} & set(ids)


def _check_no_jobs_running(stage: Stage) -> None:
    f = _slurm_state(stage)
    if f.is_file():
        ids = [str(i) for i in json.loads(f.read_text())["jobs"].values()]
        alive = _squeue(ids)
        if alive:
            raise TextbooksError(
                f"{stage.name}: jobs {sorted(alive)} of an earlier submission are still queued or running; "
                f"wait for them (squeue -j {','.join(sorted(alive))}) or cancel them (scancel) before rerunning"
            )


def _submit_slurm(stage: Stage, steps: list[Step], ex: ExecutorConfig, progress: bool) -> dict[str, str]:
    if shutil.which("sbatch") is None:
        raise ConfigError(
            "executor=slurm: sbatch is not on PATH; run on a SLURM login node (or use executor=local)"
        )
    env = ex.env_command or f"export PATH={Path(sys.executable).parent}:$PATH"
    previous: SlurmExecutor | None = None
    executors = []
    for step in steps:
        previous = SlurmExecutor(
            pipeline=[StageTask(stage, step)],
            tasks=_tasks(step, ex),
            time=ex.time,
            partition=ex.partition,  # type: ignore[arg-type]
            cpus_per_task=ex.cpus_per_task,
            mem_per_cpu_gb=ex.mem_per_cpu_gb,  # type: ignore[arg-type]
            gpus_per_task=ex.gpus_per_task if step.gpu else 0,
            workers=ex.workers if ex.workers > 0 else -1,
            job_name=f"{stage.name}-{step.name}",
            qos=ex.qos,  # type: ignore[arg-type]
            env_command=env,
            sbatch_args={"kill-on-invalid-dep": "yes", **ex.sbatch_args},
            depends=previous,
            logging_dir=str(_step_dir(stage, step)),
            requeue=ex.requeue,
            mail_type=None,  # type: ignore[arg-type]
        )
        executors.append((step, previous))
    assert previous is not None
    try:
        previous.run()
    except subprocess.CalledProcessError as e:
        raise ConfigError(
            f"{stage.name}: sbatch refused the job (exit status {e.returncode}; its message is above): fix "
            "the executor.* options (partition, time, cpus_per_task, mem_per_cpu_gb, sbatch_args)"
        ) from e
    ids = {step.name: str(e.job_id) for step, e in executors if e.job_id not in (None, -1)}
    from textbooks.io import write_json_atomic

    write_json_atomic(_slurm_state(stage), {"jobs": ids})
    log.info("%s: submitted SLURM jobs %s", stage.name, ids)
    return ids


def _wait_slurm(
    stage: Stage, steps: list[Step], ids: dict[str, str], ex: ExecutorConfig, progress: bool
) -> None:
    from tqdm.auto import tqdm

    total = sum(_tasks(s, ex) for s in steps)
    bar = tqdm(total=total, desc=f"{stage.name} (slurm)", unit="task", disable=not progress)

    def done() -> int:
        return sum(
            min(_tasks(s, ex), len(list((_step_dir(stage, s) / "completions").glob("*")))) for s in steps
        )

    try:
        while _squeue(list(ids.values())):
            bar.update(done() - bar.n)
            time.sleep(ex.poll_seconds)
        bar.update(done() - bar.n)
    finally:
        bar.close()
    for step in steps:
        _check_step(stage, step, _tasks(step, ex), {})
