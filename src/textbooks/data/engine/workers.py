"""The local engine: ``workers`` processes of our own that run a step's tasks (datatrove's ``PipelineExecutor``).

datatrove's own local executor runs tasks in a multiprocessing pool, which hangs when a worker is killed (a
signal, the OOM killer). Here each worker process is watched through its pipe: one that dies is reported with
the rank it was running and its signal, and a new process takes the remaining ranks. Workers are forked from a
server that has imported what tasks need (``TASK_PRELOAD``, the stage's module and ``Stage.preload``), and
each runs tasks one after another, so imports, allocator and page tables serve all its tasks: on this machine
dedup's ``buckets`` and ``filter`` steps (8 tasks each) took 4.2 s of task time in fresh processes and
3.3 s in two reused ones (2.6 s as one task).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import multiprocessing.connection
import multiprocessing.forkserver
import os
import signal
from dataclasses import dataclass
from typing import Any

from datatrove.executor.local import LocalPipelineExecutor

from textbooks.data.engine.stage import Stage, received, send_progress_to, step_progress

# imported by the local executor's fork server before any task: every data task reads or writes Parquet, and
# pyarrow imports pandas (~0.2 s, when installed) the first time it converts Python objects; each task
# process forked after these imports starts with them done instead of paying for them itself
TASK_PRELOAD = ("pyarrow.parquet", "pyarrow.dataset", "pandas")


def _die_with_parent() -> None:
    """Linux: this task process is killed when its parent goes (the fork server, which exits with the
    launcher), so a killed command leaves no task running into the next run."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _worker(executor: LocalPipelineExecutor, conn: Any, slot: int) -> None:
    """A worker process: runs the ranks it is sent, one at a time, and answers each with its rank once it is
    complete; ``None`` ends it. A task that raises ends the process (its error is in its errors/ file and
    its log), so a failed task never leaves state behind for the next one. With ``progress``, its tasks'
    bars send their counts to the launcher's one bar of the step (tuples, told apart from the ranks)."""
    _die_with_parent()
    send_progress_to(conn.send if executor.progress else None)
    while (rank := conn.recv()) is not None:
        try:
            executor._run_for_rank(rank, slot)
        except BaseException:
            os._exit(1)
        conn.send(rank)


@dataclass
class _Worker:
    process: Any
    conn: Any
    slot: int
    rank: int | None = None


class LocalExecutor(LocalPipelineExecutor):
    """datatrove's local executor with ``workers`` processes of our own: each runs tasks one after another
    (as datatrove's pool does: a process's imports, allocator and page tables serve all its tasks), and one
    whose process dies is reported by rank with its signal while a new process takes the remaining tasks (a
    shared pool would hang)."""

    def __init__(self, *args: Any, progress: bool = False, desc: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.progress = progress
        self.desc = desc
        self.exit_codes: dict[int, int] = {}

    def run(self) -> None:
        ranks = self.get_incomplete_ranks(range(self.tasks))
        if not ranks:
            return
        self.save_executor_as_json()
        # one bar for the step, whichever process runs its tasks (``Task.bar``)
        with step_progress(self.progress, self.tasks, self.tasks - len(ranks)) as bar:
            if self.workers == 1:
                for rank in ranks:
                    self._run_for_rank(rank)
                    bar.task_done()
            else:
                self._run_in_workers(ranks, bar)

    def _run_in_workers(self, ranks: list[int], bar: Any) -> None:
        ctx = fork_server(self.pipeline[0].stage)
        pending = list(reversed(ranks))
        workers: dict[Any, _Worker] = {}  # by their end of the pipe

        def start(slot: int) -> None:
            ours, theirs = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(self, theirs, slot), name=f"{self.desc}-worker-{slot}")
            p.start()
            theirs.close()
            workers[ours] = _Worker(p, ours, slot)
            give(workers[ours])

        def give(w: _Worker) -> None:
            w.rank = pending.pop() if pending else None
            w.conn.send(w.rank)

        try:
            for slot in range(min(self.workers, len(ranks))):
                start(slot)
            while workers:
                for conn in mp.connection.wait(list(workers)):
                    w = workers[conn]
                    try:
                        message = conn.recv()
                    except (EOFError, OSError):  # the process ended: told to, or died in its task
                        del workers[conn]
                        w.process.join()
                        conn.close()
                        if w.rank is not None:
                            self.exit_codes[w.rank] = w.process.exitcode or 1
                            if pending:
                                start(w.slot)
                        continue
                    if isinstance(message, tuple):  # progress of the task it runs
                        received(bar, message)
                        continue
                    bar.task_done()
                    give(w)
        except BaseException:
            for w in workers.values():
                w.process.terminate()
            for w in workers.values():
                w.process.join(5)
            raise


def fork_server(stage: Stage) -> Any:
    """The context local task processes start from: a server forked once per command (a clean process,
    unlike this one, which may hold threads) that has imported the stage's module and ``TASK_PRELOAD``.
    The server is started here and now, without waiting for its imports, so they overlap the caller's work."""
    ctx = mp.get_context("forkserver")
    # the executor module for its task logging (a stage module need not import it); a server started
    # earlier in this process keeps its first list
    modules = ["textbooks.data.engine.executor", type(stage).__module__, *TASK_PRELOAD, *stage.preload]
    ctx.set_forkserver_preload(modules)
    multiprocessing.forkserver.ensure_running()
    return ctx
