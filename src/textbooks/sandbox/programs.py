"""What the sandbox runs: programs of two kinds, and the resource limits each runs under.

* ``Program``: untrusted ``setup`` (a completion with what it needs) runs in a worker process; the
  trusted ``tests`` (benchmark code: asserts, HumanEval's ``check``) run in the server's judge, another
  process, where the names the tests use are proxies that ask the worker and get plain data back. The
  verdict is the judge's (``Sandbox.run`` returns an ``ExecResult``);
* ``CallProgram``: untrusted ``setup`` defines ``entry_point``, which the worker calls on each input;
  each output comes back to the harness as plain data (``plain``) as soon as it is produced, and
  ``Sandbox.run_calls`` hands it to a callback that compares it (``textbooks.eval.verdicts.plus`` does, with
  EvalPlus's rules) and may stop the program at the first wrong answer.

Default limits (``Limits``) budget per test rather than per program (as EvalPlus does): each test (an
MBPP ``assert`` line, HumanEval's ``check(...)`` call) gets ``test_cpu_s`` = 10 CPU seconds, the code
before the tests ``setup_cpu_s`` = 10, counted over the worker and the judge, and the program's wall
clock is the sum of those plus 5 s (at most ``max_wall_s`` = 300 s). The slowest reference solution here
(MBPP task 123, ~4.4 s for one assert) passes with room to spare even on a loaded machine, because the
budgets count CPU time, not wall time. Address space 4 GiB, files 16 MiB, 32 processes (per dedicated
uid), 64 KiB of stdout/stderr kept (the rest is drained and counted). ``CallProgram``s carry their own
wall-clock limits per call and per group of calls.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

STATUSES = ("passed", "failed", "timeout", "error")


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
