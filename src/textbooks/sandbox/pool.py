"""The harness's side of the sandbox: a pool of fork servers, what to run, and what came out.

Never ``exec``s anything in this process. A ``Sandbox`` starts ``workers`` fork servers (``_server.py``,
a clean interpreter with the standard library only, driven through ``client.ServerProcess``) and sends
each program (``programs``: a ``Program`` judged by its tests, or a ``CallProgram`` whose outputs come
back here) to a free one; ``results`` turns each server's report into the program's result.

The environment is scrubbed (no proxies, tokens, ``PYTHONPATH`` or ``HOME`` of the harness; ``HOME`` and
``TMPDIR`` point at the program's temp dir) and ``PYTHONHASHSEED=0``, so set and dict orders, hence
results, are the same on every run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import struct
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textbooks.sandbox.client import SANDBOX_ENV, SandboxError, ServerProcess
from textbooks.sandbox.programs import CallProgram, Limits, Program
from textbooks.sandbox.results import CallsResult, ExecResult, classify, common_fields, decode_record

# Standard-library modules the fork servers import before forking, so programs importing them start
# faster (what HumanEval and MBPP programs import most). ``random`` reseeds itself in every child.
PRELOAD = (
    "array",
    "bisect",
    "cmath",
    "collections",
    "copy",
    "datetime",
    "functools",
    "hashlib",
    "heapq",
    "itertools",
    "math",
    "operator",
    "random",
    "re",
    "string",
    "typing",
)
# Extra seconds the harness waits for a server's answer beyond the program's own wall limit.
SERVER_GRACE_S = 30.0


@dataclass(frozen=True)
class Isolation:
    """What the sandbox could set up on this machine."""

    network: bool
    filesystem: bool
    dedicated_uid: bool
    fresh_interpreter: bool
    python: str
    ipc: bool = False
    processes_hidden: bool = False
    notes: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "notes": list(self.notes)}


def default_workers() -> int:
    """CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_python() -> str:
    """The base interpreter (not a virtual environment's): programs need nothing but its standard library."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return base if os.path.exists(base) else sys.executable


def default_hidden() -> list[str]:
    """Paths no program should read: this package's installation and the harness's site-packages."""
    import site

    paths = [str(Path(__file__).resolve().parents[1])]
    with contextlib.suppress(AttributeError):
        paths += site.getsitepackages()
    paths.append(sys.prefix)
    return paths


def _frame_records(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos + 4 <= len(data):
        (n,) = struct.unpack_from(">I", data, pos)
        out.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


class Sandbox:
    """A pool of ``workers`` fork servers; ``run_many`` executes programs in parallel, results in order.

    Use as a context manager (or call ``close``). ``isolate=False`` skips the namespaces, the new root and
    the uid switch (for debugging); ``fresh=True`` runs every program in a newly ``exec``ed interpreter
    instead of a fork of the clean server (slower, ~50 ms each). ``hide`` adds paths to cover inside the
    sandbox (the benchmark files, if they sit somewhere it can see).
    """

    def __init__(
        self,
        workers: int | None = None,
        limits: Limits | None = None,
        *,
        fresh: bool = False,
        isolate: bool = True,
        python: str | None = None,
        tmpfs_mb: int = 512,
        hide: Sequence[str | os.PathLike] = (),
    ) -> None:
        self.workers = workers or default_workers()
        if self.workers < 1:
            raise SandboxError(f"sandbox: workers must be >= 1, got {workers}")
        self.limits = limits or Limits()
        self.fresh = fresh
        self.python = python or default_python()
        self._config = {
            "isolate": isolate,
            "tmpfs_mb": tmpfs_mb,
            "preload": list(PRELOAD),
            "python": self.python,
            "hide": [str(p) for p in (*default_hidden(), *hide)],
        }
        self._idle: queue.Queue[ServerProcess] = queue.Queue()
        self._all: list[ServerProcess] = []
        self._lock = threading.Lock()
        servers = [ServerProcess(self.python, self._config) for _ in range(self.workers)]
        try:
            hellos = [s.wait_hello() for s in servers]
        except SandboxError:
            for s in servers:
                s.kill()
            raise
        for s in servers:
            self._all.append(s)
            self._idle.put(s)
        notes = sorted({n for h in hellos for n in h.get("notes", [])})
        self.isolation = Isolation(
            network=all(h["network_isolated"] for h in hellos),
            filesystem=all(h["filesystem_isolated"] for h in hellos),
            dedicated_uid=all(h["uid"] is not None for h in hellos),
            fresh_interpreter=fresh,
            python=f"{self.python} ({hellos[0]['python']})",
            ipc=all(h.get("ipc") for h in hellos),
            processes_hidden=all(h.get("processes_hidden") for h in hellos),
            notes=tuple(notes),
        )

    @property
    def program_uids(self) -> tuple[int, ...]:
        """The dedicated uids programs run under, one per server (empty where none could be used)."""
        with self._lock:
            return tuple(s.hello["uid"] for s in self._all if s.hello and s.hello.get("uid") is not None)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            servers, self._all = self._all, []
        for s in servers:
            s.close()

    def _call(
        self,
        meta: dict[str, Any],
        payloads: list[bytes],
        timeout: float,
        on_outputs: Callable[[bytes], bool] | None = None,
    ) -> tuple[dict[str, Any] | None, str, str, str]:
        server = self._idle.get()
        raw, out, err, failure = None, "", "", ""
        try:
            raw, out, err = server.call(meta, payloads, timeout, on_outputs)
        except (TimeoutError, EOFError, OSError, ValueError) as e:
            failure = f"fork server failed ({type(e).__name__}: {e}) {server.stderr_tail()}".strip()
        finally:
            if raw is None:
                server.kill()
                with contextlib.suppress(SandboxError):
                    server = self._replace(server)
            self._idle.put(server)
        return raw, out, err, failure

    def run(self, program: Program, limits: Limits | None = None) -> ExecResult:
        """Run one program (blocks until a server is free)."""
        limits = limits or self.limits
        n = len(program.tests)
        worker = _payload({"mode": "judge", "setup": program.setup, "setup_cpu_s": limits.setup_cpu_s})
        judge = json.dumps(
            {
                "trusted": program.trusted,
                "test_setup": program.test_setup,
                "tests": list(program.tests),
                "entry_point": program.entry_point,
                "setup_cpu_s": limits.setup_cpu_s,
                "test_cpu_s": limits.test_cpu_s,
            }
        ).encode()
        meta = {
            "mode": "judge",
            "limits": limits.request(n),
            "cpu_s": limits.setup_cpu_s + n * limits.test_cpu_s,
            "env": SANDBOX_ENV,
            "fresh": self.fresh,
            "worker_bytes": len(worker),
            "judge_bytes": len(judge),
        }
        raw, out, err, failure = self._call(meta, [worker, judge], limits.wall_for(n) + SERVER_GRACE_S)
        if raw is None:
            return ExecResult("error", "SandboxError", failure)
        return classify(raw, limits, n, out, err)

    def run_calls(
        self,
        program: CallProgram,
        on_record: Callable[[int, list], bool] | None = None,
        limits: Limits | None = None,
    ) -> CallsResult:
        """Run a ``CallProgram``; ``on_record(i, record)`` gets each call's output as it comes (``i`` = -1
        for the setup's ``["ready"]``), already decoded (``decode_record``); returning False stops it."""
        limits = limits or self.limits
        wall = sum(g.wall_s for g in program.groups) + limits.wall_slack_s
        worker = _payload(
            {
                "mode": "calls",
                "setup": program.setup,
                "entry_point": program.entry_point,
                "return_args": program.return_args,
                "evalplus_guard": program.evalplus_guard,
                "recursion_room": program.recursion_room,
                "setup_cpu_s": None,
            },
            program.inputs,
        )
        meta = {
            "mode": "calls",
            "limits": {**limits.request(0), "wall_s": wall},
            "cpu_s": wall,
            "env": SANDBOX_ENV,
            "fresh": self.fresh,
            "worker_bytes": len(worker),
            "groups": [dataclasses.asdict(g) for g in program.groups],
        }
        state = {"next": -1, "setup": None, "go": True}

        def on_outputs(frame: bytes) -> bool:
            for data in _frame_records(frame):
                rec = decode_record(data)
                i = state["next"]
                state["next"] += 1
                if i == -1:
                    state["setup"] = rec
                if state["go"] and on_record is not None and on_record(i, rec) is False:
                    state["go"] = False
            return state["go"]

        raw, out, err, failure = self._call(meta, [worker], wall + SERVER_GRACE_S, on_outputs)
        if raw is None:
            return CallsResult("sandbox", message=failure)
        return CallsResult(
            end=raw.get("end") or "exited",
            answered=max(0, raw.get("records", 0) - 1),
            setup=state["setup"],
            **common_fields(raw, out, err),
        )

    def _replace(self, dead: ServerProcess) -> ServerProcess:
        fresh = ServerProcess(self.python, self._config)
        fresh.wait_hello()
        with self._lock:
            self._all = [s for s in self._all if s is not dead] + [fresh]
        return fresh

    def run_many(
        self,
        programs: Sequence[Program],
        limits: Limits | Sequence[Limits] | None = None,
        on_result: Callable[[int, ExecResult], None] | None = None,
    ) -> list[ExecResult]:
        """Run ``programs`` on all workers; returns results in input order. ``on_result(i, r)`` as each ends."""
        if limits is None or isinstance(limits, Limits):
            limits = [limits or self.limits] * len(programs)
        results: list[ExecResult | None] = [None] * len(programs)

        def one(i: int) -> None:
            results[i] = self.run(programs[i], limits[i])
            if on_result is not None:
                on_result(i, results[i])

        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="sandbox") as pool:
            for f in [pool.submit(one, i) for i in range(len(programs))]:
                f.result()
        return results  # type: ignore[return-value]


def _payload(header: dict[str, Any], rest: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return struct.pack(">I", len(head)) + head + rest


@contextlib.contextmanager
def open_sandbox(sandbox: Sandbox | None = None, **kwargs: Any) -> Iterator[Sandbox]:
    """Use ``sandbox`` if given (left open), else create one from ``kwargs`` and close it afterwards."""
    if sandbox is not None:
        yield sandbox
        return
    with Sandbox(**kwargs) as sb:
        yield sb


def run_programs(programs: Sequence[Program], workers: int | None = None, **kwargs: Any) -> list[ExecResult]:
    """One-shot convenience: start a sandbox, run ``programs``, close it."""
    limits = kwargs.pop("limits", None)
    with Sandbox(workers=min(workers or default_workers(), max(1, len(programs))), **kwargs) as sb:
        return sb.run_many(programs, limits=limits)
