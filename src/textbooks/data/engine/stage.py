"""The stage contract: every data stage is a list of steps whose tasks each process a share of the input.

A ``Stage`` names the config that defines its output (``config``), its inputs (fingerprinted, so a changed
input reruns it), a ``plan`` computed once by the launching process (typically the input shards, see
``textbooks.data.engine.inputs.plan_shards``) and its ``steps``. A step is a method ``fn(task) -> stats`` run as tasks ``rank`` of
``world_size`` (datatrove's ``PipelineStep.run(data, rank, world_size)`` model); a sharded step's task
processes its share of the shards (``balanced``: by the bytes it reads), a single step (clustering, training a
classifier, indexing benchmarks) runs as one task between sharded ones. A task writes its files atomically
under the stage's work directory and returns its stats, which are saved with its completion marker; an executor
(``textbooks.data.engine.executor``: a local process pool, SLURM job arrays or Ray) runs the tasks and skips the
ones already complete, so a killed run reruns only what did not finish.

The last step, added to every stage, publishes: it sums the tasks' stats (``Stage.summarize``, which is where
a stage fails when malformed inputs exceed its fraction), removes the old manifest, moves the staged outputs
into the stage directory and writes ``manifest.json`` (config, input fingerprints, outputs and document parts,
summed counts, per-step timings). Readers only read what a manifest lists, so they never see half a stage.

Layout of a stage directory ``out``::

    out/manifest.json, out/part-00000.parquet, ...   the published stage
    out/.stage/plan.json                             the key (config hash + inputs) and the plan of this build
    out/.stage/<step>/                               an executor's state: completions/, logs/, stats/, tasks/
    out/.stage/<step>/data/                          intermediate files of the step
    out/.stage/staged/                               outputs staged for publishing

A build whose key differs from ``plan.json`` starts from an empty ``.stage``; one whose key matches the
published manifest is skipped.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import heapq
import itertools
import json
import logging
import os
import resource
import shutil
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from textbooks.data.engine.inputs import WORK_DIR
from textbooks.data.engine.manifest import MANIFEST, fingerprint_input, read_manifest
from textbooks.data.engine.reader import ReadStats
from textbooks.errors import TextbooksError
from textbooks.io import config_hash, remove_stale_temporaries, write_json_atomic

log = logging.getLogger(__name__)

PLAN = "plan.json"
PUBLISH = "publish"  # the last step
STAGED = "staged"  # outputs waiting to be published


def execution_only(default: Any = None, **kwargs: Any) -> Any:
    """A config field that changes how a stage runs, not what it writes (threads, batch sizes, caches):
    it is left out of the stage's key, so changing it never reruns a finished stage."""
    metadata = {"execution": True}
    if "default_factory" in kwargs:
        return field(metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


def output_config(cfg: Any) -> dict[str, Any]:
    """The fields of a stage config dataclass that define its output (all but ``execution_only`` ones,
    ``out_dir`` and ``name``): the one place that tells the two kinds apart."""
    return {
        f.name: _plain(getattr(cfg, f.name))
        for f in fields(cfg)
        if not f.metadata.get("execution") and f.name not in ("out_dir", "name")
    }


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value


@dataclass(frozen=True)
class Step:
    """One step of a stage: ``Stage.<method>(task)`` run by ``world_size`` tasks, or by one (``sharded=False``).

    ``gpu`` asks the executor for ``gpus_per_task`` on clusters (the embedding of the quality classifier)."""

    name: str
    method: str
    sharded: bool = True
    gpu: bool = False


def balanced(n: int, world_size: int, weights: Sequence[int] | None = None) -> list[list[int]]:
    """Items ``0..n-1`` shared out to ``world_size`` tasks, each task's in increasing order: the heaviest
    item first to the least loaded task (ties: the lower rank), so tasks finish together; equal weights
    give ``rank, rank + world_size, ...``. Depends only on ``n``, ``world_size`` and ``weights``."""
    w = [1] * n if weights is None else [max(0, int(x)) for x in weights]
    if len(w) != n:
        raise ValueError(f"{len(w)} weights for {n} items")
    loads = [(0, 0, r) for r in range(world_size)]  # (weight, items, rank) of each task
    out: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(n), key=lambda i: (-w[i], i)):
        load, items, r = heapq.heappop(loads)
        out[r].append(i)
        heapq.heappush(loads, (load + w[i], items + 1, r))
    return [sorted(items) for items in out]


@dataclass
class Task:
    """What a step's method gets: where to read and write, its rank, and the stage's plan."""

    stage_dir: Path
    step: str
    rank: int
    world_size: int
    plan: dict[str, Any]
    progress: bool = False

    @property
    def work(self) -> Path:
        return self.stage_dir / WORK_DIR

    def data_dir(self, step: str | None = None) -> Path:
        """Intermediate files of ``step`` (default: this one; created)."""
        d = self.work / (step or self.step) / "data"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def publish_path(self, relative: str) -> Path:
        """Where an output that ends up as ``<stage dir>/<relative>`` is staged."""
        return self.work / STAGED / relative

    def bar(self, desc: str, unit: str = "doc", total: int | None = None) -> Any:
        """The step's progress bar (a tqdm-like ``update``, ``set_postfix``, ``close``), to count this task's
        work in: every task and shard of a step counts in the same one bar, whether tasks run in this
        process or in the local executor's worker processes (they send their counts to it). ``total`` is
        this task's share, added to the bar's. A disabled bar when the run shows no progress."""
        if _sink is not None:
            return _RemoteBar(_sink, desc, unit, total)
        if not self.progress:
            return _NullBar()
        if _step_bar is None:  # a task run outside an executor: a bar of its own
            return _OwnBar(StepBar(True), desc, unit, total)
        return _step_bar.open(desc, unit, total)

    def mine(self, n: int, weights: Sequence[int] | None = None) -> list[int]:
        """Indices ``0..n-1`` this task processes, in order: ``balanced(n, world_size, weights)[rank]``."""
        return balanced(n, self.world_size, weights)[self.rank]

    def each_shard(self, n: int, work: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
        """``work(i)`` for each of this task's shards, returning ``{"shards": {i: stats}}``.

        When the step iterates over the plan's shards, they are shared out by the bytes the stage reads of
        each (one stage's parts are the next one's shards, and their sizes vary a thousandfold).
        ``work`` writes its outputs atomically; its stats are saved after them, so a shard finished by a
        killed run of the same build is not redone (its saved stats are reused)."""
        done_dir = self.work / self.step / "shards"
        out: dict[str, Any] = {}
        for i in self.my_shards(n):
            f = done_dir / f"{i:05d}.json"
            if f.is_file():
                out[str(i)] = json.loads(f.read_text())
                continue
            out[str(i)] = stats = work(i)
            write_json_atomic(f, stats)
        return {"shards": out}

    def my_shards(self, n: int) -> list[int]:
        """The shards of ``n`` that ``each_shard`` gives this task, in order (weighed as it says)."""
        shards = self.plan.get("shards")
        weights = [_work(s) for s in shards] if isinstance(shards, list) and len(shards) == n else None
        return self.mine(n, weights)

    def my_items(self, n: int, per: int) -> int:
        """How many of ``n`` items split in parts of ``per`` (``plan["parts"]`` of them, shared out as
        ``my_shards`` says) are this task's: its share of a progress bar's total."""
        items = range(n)
        return sum(len(items[p * per : (p + 1) * per]) for p in self.my_shards(self.plan["parts"]))

    def reads(self, step: str, max_bad_fraction: float, what: str) -> ReadStats:
        """The read counts of every shard of ``step`` summed, after failing the stage (one ``DataError``)
        when malformed records and unreadable files exceed ``max_bad_fraction`` of them."""
        read = ReadStats.merge([s["read"] for s in self.shard_stats(step)])
        read.check(max_bad_fraction, what)
        return read

    def shard_stats(self, step: str) -> list[dict[str, Any]]:
        """The per-shard stats of an earlier ``each_shard`` step, in shard order."""
        shards: dict[int, dict[str, Any]] = {}
        for t in self.stats_of(step):
            shards.update({int(k): v for k, v in t["shards"].items()})
        return [shards[i] for i in sorted(shards)]

    def stats_of(self, step: str) -> list[dict[str, Any]]:
        """The stats the tasks of an earlier ``step`` returned, in rank order."""
        return task_stats(self.work / step)


def _work(shard: Any) -> int:
    """A planned shard's weight: the bytes its stage reads (``inputs.Shard.read_bytes``), else all its bytes."""
    if not isinstance(shard, dict):
        return 0
    read = shard.get("read_bytes")
    return int(shard.get("bytes", 0) if read is None else read)


def task_stats(step_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text())["stats"] for p in sorted((step_dir / "tasks").glob("*.json"))]


class Stage:
    """A data stage: subclasses set ``name``, ``config`` (a dataclass with ``out_dir``), ``inputs`` and
    ``pattern`` (for fingerprints), and implement ``plan``, ``steps`` and ``summarize``."""

    name: ClassVar[str]
    config: Any
    inputs: list[Any]
    pattern: str = "**/*"
    # the outputs a run publishes replace these leftovers of earlier runs (globs relative to out_dir)
    stale: tuple[str, ...] = ("part-*.parquet", "*/part-*.parquet")
    # modules the tasks import on first use (beyond the stage module's own imports): imported once, before
    # the tasks start, by the local executor's fork server rather than by every task process
    preload: tuple[str, ...] = ()

    @property
    def out_dir(self) -> Path:
        return Path(self.config.out_dir)

    def key(self) -> dict[str, Any]:
        cfg = self.key_config()
        return {
            "stage": self.name,
            "config_hash": config_hash(cfg),
            "inputs": [fingerprint_input(i, self.pattern) for i in self.inputs],
        }

    def key_config(self) -> dict[str, Any]:
        return output_config(self.config)

    def plan(self) -> dict[str, Any]:
        """JSON-able facts every task needs, computed once (e.g. the input shards)."""
        return {}

    def is_built(self, manifest: dict[str, Any]) -> bool:
        """Whether a published manifest's outputs are still what the stage wrote (beyond their sizes)."""
        return True

    def on_executor(self, engine: str) -> None:
        """Told which engine runs the tasks (``local``, ``slurm``, ``ray``) before any runs."""

    def published(self) -> None:
        """Called by the publishing step once the manifest is written (e.g. to fold per-task caches)."""

    def steps(self) -> list[Step]:
        raise NotImplementedError

    def summarize(self, task: Task) -> dict[str, Any]:
        """Manifest fields from the tasks' stats (``task.stats_of(step)``); raises when the stage fails as a
        whole (e.g. too many malformed inputs). Must include ``parts`` (document parts, in order) when the
        stage writes documents."""
        return {}


# -- progress: one bar per step --------------------------------------------------------------------------------
class StepBar:
    """The one progress bar of a step, shown by the launching process: opened by the first task that counts
    (its ``desc`` and ``unit``), then counted in by every task, in this process or sent by worker processes.
    ``tasks`` puts the number of complete tasks beside the count when a step has several. Each task's postfix
    holds its own running counts (requests answered, cached, ...): the bar shows their sums over the tasks."""

    def __init__(self, enabled: bool, tasks: int = 1, done: int = 0) -> None:
        self.enabled = enabled
        self.tasks = tasks
        self.done = done
        self.bar: Any = None
        self.postfixes: dict[Any, dict[str, Any]] = {}  # by the task's bar that set it

    def open(self, desc: str, unit: str, total: int | None) -> _SharedBar:
        if self.enabled and self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(desc=desc, unit=unit, total=total, postfix=self._postfix())
        elif total is not None:
            self.extend(total)
        return _SharedBar(self)

    def extend(self, n: int) -> None:
        if self.bar is not None:
            self.bar.total = (self.bar.total or 0) + n
            self.bar.refresh()

    def update(self, n: int = 1, postfix: dict[str, Any] | None = None, source: Any = None) -> None:
        if postfix:
            self.set_postfix(source, postfix, refresh=False)
        if self.bar is not None:
            self.bar.update(n)

    def task_done(self) -> None:
        self.done += 1
        self._show()

    def set_postfix(self, source: Any, postfix: dict[str, Any], refresh: bool = True) -> None:
        """``source``'s latest counts (a task's bar)."""
        self.postfixes.setdefault(source, {}).update(postfix)
        self._show(refresh)

    def _postfix(self) -> dict[str, Any] | None:
        merged: dict[str, Any] = {}
        for postfix in self.postfixes.values():
            for key, value in postfix.items():
                summed = isinstance(value, int | float) and not isinstance(value, bool)
                merged[key] = merged.get(key, 0) + value if summed else value
        tasks = {"tasks": f"{self.done}/{self.tasks}"} if self.tasks > 1 else {}
        return {**merged, **tasks} or None

    def _show(self, refresh: bool = True) -> None:
        if self.bar is not None:
            self.bar.set_postfix(self._postfix(), refresh=refresh)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _SharedBar:
    """A task's view of its step's bar: closing it leaves the bar open for the step's other tasks, and closes
    it in the step's last task (so what the task prints after, a server stopping, goes below the bar)."""

    def __init__(self, step: StepBar) -> None:
        self.step = step
        self.source = next(_bar_ids)  # keys this task's postfix in the step's bar

    def update(self, n: int = 1) -> None:
        self.step.update(n)

    def extend(self, n: int) -> None:
        """``n`` more to count than the task said when it opened the bar (work found on the way)."""
        self.step.extend(n)

    def set_postfix(
        self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kw: Any
    ) -> None:
        self.step.set_postfix(self.source, {**(ordered_dict or {}), **kw}, refresh)

    def close(self) -> None:
        if self.step.bar is not None and self.step.done >= self.step.tasks - 1:
            self.step.done = self.step.tasks  # the last task has counted all it does
            self.step._show()
            self.step.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _OwnBar(_SharedBar):
    def __init__(self, step: StepBar, desc: str, unit: str, total: int | None) -> None:
        super().__init__(step)
        step.open(desc, unit, total)

    def close(self) -> None:
        self.step.close()


class _NullBar(_SharedBar):
    def __init__(self) -> None:
        super().__init__(StepBar(False))


class _RemoteBar(_SharedBar):
    """A task's bar in a worker process: its counts go to the launcher's step bar, at most every
    ``SEND_SECONDS`` (and when it closes)."""

    SEND_SECONDS = 0.2

    def __init__(self, send: Callable[[Any], None], desc: str, unit: str, total: int | None) -> None:
        super().__init__(StepBar(False))
        self.send = send
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self.source = f"{os.getpid()}:{self.source}"  # unique among the step's processes
        self.sent = time.monotonic()
        send(("bar", desc, unit, total))

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.sent >= self.SEND_SECONDS:
            self._flush()

    def extend(self, n: int) -> None:
        self.send(("extend", n))

    def set_postfix(
        self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kw: Any
    ) -> None:
        self.postfix.update({**(ordered_dict or {}), **kw})

    def _flush(self) -> None:
        self.send(("count", self.n, dict(self.postfix), self.source))
        self.n = 0
        self.postfix.clear()
        self.sent = time.monotonic()

    def close(self) -> None:
        if self.n or self.postfix:
            self._flush()


_bar_ids = itertools.count()
_step_bar: StepBar | None = None  # the launching process's bar of the step its executor runs
_sink: Callable[[Any], None] | None = None  # in a local worker process: sends progress to the launcher


@contextlib.contextmanager
def step_progress(enabled: bool, tasks: int = 1, done: int = 0) -> Any:
    """The bar of the step run inside (``Task.bar`` counts in it), closed at its end."""
    global _step_bar
    bar = StepBar(enabled, tasks, done)
    _step_bar = bar
    try:
        yield bar
    finally:
        _step_bar = None
        bar.close()


def send_progress_to(send: Callable[[Any], None] | None) -> None:
    """In a worker process: where ``Task.bar`` sends its counts (``None``: nowhere, no bar)."""
    global _sink
    _sink = send


def received(bar: StepBar, message: Any) -> None:
    """A worker's progress message (from ``_RemoteBar``) into the step's bar."""
    if message[0] == "bar":
        bar.open(*message[1:])
    elif message[0] == "extend":
        bar.extend(message[1])
    else:
        bar.update(*message[1:])


# -- running one task ---------------------------------------------------------------------------------------
class TaskFailed(TextbooksError):
    """A task raised; the message is the task's own error (one line) and where its log is."""


@dataclass
class StageTask:
    """The callable an executor runs: datatrove calls it as ``f(data, rank, world_size)``."""

    stage: Stage
    step: Step
    progress: bool = False
    launcher_pid: int = field(default_factory=os.getpid)

    def __repr__(self) -> str:  # what datatrove logs as the pipeline
        return f"{self.stage.name}/{self.step.name}"

    def __call__(self, data: Any, rank: int = 0, world_size: int = 1) -> None:
        out = self.stage.out_dir
        step_dir = out / WORK_DIR / self.step.name
        plan = json.loads((out / WORK_DIR / PLAN).read_text())["plan"]
        task = Task(out, self.step.name, rank, world_size, plan, progress=self.progress)
        running = step_dir / "running" / f"{rank:05d}"
        running.parent.mkdir(parents=True, exist_ok=True)
        running.write_text(str(os.getpid()))
        forward = None
        if os.getpid() != self.launcher_pid:  # a worker process, which may have run other tasks before
            forward = _forward_logs()
            _reset_peak_memory()
        started = time.time()
        try:
            if self.step.name == PUBLISH:
                result = publish(self.stage, task)
            else:
                result = getattr(self.stage, self.step.method)(task)
        except BaseException as e:
            write_json_atomic(
                step_dir / "errors" / f"{rank:05d}.json",
                {
                    "type": type(e).__name__,
                    "message": str(e).splitlines()[0] if str(e) else type(e).__name__,
                    "user_error": isinstance(e, TextbooksError),
                    "traceback": traceback.format_exc(),
                },
            )
            raise
        finally:
            running.unlink(missing_ok=True)
            if forward is not None:
                logging.getLogger("textbooks").removeHandler(forward)
        (step_dir / "errors" / f"{rank:05d}.json").unlink(missing_ok=True)
        write_json_atomic(
            step_dir / "tasks" / f"{rank:05d}.json",
            {
                "rank": rank,
                "world_size": world_size,
                "pid": os.getpid(),  # a local worker process runs several tasks
                "seconds": round(time.time() - started, 3),
                # peak resident memory of the task's process since it started the task (of the launcher's
                # whole run when tasks run in it)
                "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "stats": result,
            },
        )


def _reset_peak_memory() -> None:
    """Linux: make the process's peak resident memory (``ru_maxrss``) count from now."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


class _ToLoguru(logging.Handler):
    """The library's log records into datatrove's task log (loguru), in tasks run away from the launcher."""

    def emit(self, record: logging.LogRecord) -> None:
        from loguru import logger

        logger.opt(depth=6).log(record.levelname, record.getMessage())


def _forward_logs() -> logging.Handler:
    h = _ToLoguru(logging.INFO)
    lg = logging.getLogger("textbooks")
    lg.setLevel(logging.INFO)
    lg.addHandler(h)
    return h


# -- publishing ---------------------------------------------------------------------------------------------
def publish(stage: Stage, task: Task) -> dict[str, Any]:
    """The last step: summarize, replace the published outputs with the staged ones, write the manifest."""
    out = stage.out_dir
    work = out / WORK_DIR
    extra = stage.summarize(task)
    staged = work / STAGED
    files = (
        sorted(p for p in staged.rglob("*") if p.is_file() and ".tmp-" not in p.name)
        if staged.is_dir()
        else []
    )
    (out / MANIFEST).unlink(missing_ok=True)
    remove_stale_temporaries(out)
    for pattern in stage.stale:
        for old in out.glob(pattern):
            old.unlink()
    outputs = []
    for f in files:
        rel = f.relative_to(staged)
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(f, out / rel)
        outputs.append({"path": rel.as_posix(), "bytes": (out / rel).stat().st_size})
    plan_doc = json.loads((work / PLAN).read_text())
    steps = {}
    for s in stage.steps():
        tasks = [json.loads(p.read_text()) for p in sorted((work / s.name / "tasks").glob("*.json"))]
        steps[s.name] = {
            "tasks": len(tasks),
            "task_seconds": round(sum(t["seconds"] for t in tasks), 3),
            "max_task_seconds": max((t["seconds"] for t in tasks), default=0.0),
            "max_task_rss_mb": max((t.get("max_rss_mb", 0.0) for t in tasks), default=0.0),
        }
        if s.name != PUBLISH:
            shutil.rmtree(work / s.name / "data", ignore_errors=True)
    ended = dt.datetime.now(dt.timezone.utc)
    started = dt.datetime.fromisoformat(plan_doc["created"])
    manifest = {
        **plan_doc["key"],
        "config": stage.key_config(),
        "outputs": outputs,
        **extra,
        "steps": steps,
        "started": plan_doc["created"],
        "seconds": round((ended - started).total_seconds(), 3),
    }
    write_json_atomic(out / MANIFEST, manifest)
    stage.published()
    return {"outputs": len(outputs)}


def published(stage: Stage, key: dict[str, Any]) -> str:
    """``current``: a manifest with this key whose outputs are all present and intact; ``damaged``: such a
    manifest whose outputs are not (missing, resized, or ``Stage.is_built`` says so); else ``absent``."""
    out = stage.out_dir
    m = read_manifest(out)
    if m is None or {k: m.get(k) for k in key} != key:
        return "absent"
    intact = all(
        (out / o["path"]).is_file() and (out / o["path"]).stat().st_size == o["bytes"]
        for o in m.get("outputs", [])
    )
    return "current" if intact and stage.is_built(m) else "damaged"


def prepare(stage: Stage, key: dict[str, Any], fresh: bool = False) -> dict[str, Any]:
    """The build state of ``stage``: reuse ``.stage`` when its key matches (finished tasks are kept), else
    (or when ``fresh``) start it afresh with a new plan. Returns the plan document."""
    work = stage.out_dir / WORK_DIR
    path = work / PLAN
    if path.is_file() and not fresh:
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError:
            doc = {}
        if doc.get("key") == key:
            return doc
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    doc = {
        "key": key,
        "plan": stage.plan(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    write_json_atomic(path, doc)
    return doc


def all_steps(stage: Stage) -> list[Step]:
    """The stage's steps and the publishing step."""
    steps = stage.steps()
    names = [s.name for s in steps]
    if len(set(names)) != len(names) or PUBLISH in names:
        raise ValueError(f"{stage.name}: step names must be unique and not {PUBLISH!r}: {names}")
    return [*steps, Step(PUBLISH, "publish", sharded=False)]


def summed(parts: Sequence[dict[str, Any]], keys: Sequence[str] | None = None) -> dict[str, Any]:
    """Numbers summed key by key over tasks' stats (nested dicts of numbers too)."""
    total: dict[str, Any] = {}
    for p in parts:
        for k, v in p.items():
            if keys is not None and k not in keys:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float, dict)):
                continue
            if isinstance(v, dict):
                total[k] = summed([total.get(k, {}), v])
            else:
                total[k] = total.get(k, 0) + v
    return total
