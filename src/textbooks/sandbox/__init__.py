"""Run untrusted code (model completions, generated programs) and judge it where it cannot reach.

The harness never executes a program itself. ``Sandbox`` keeps a pool of fork servers (``_server.py``:
clean interpreters with the standard library only); each program runs in a fresh child of one of them,
the *worker*, and everything that decides the program's verdict lives in another process:

* a ``Program``'s trusted tests run in the server's *judge* (``_judge.py``), an interpreter under its
  own uid that the worker can neither signal, trace, read nor write; the names the tests use are proxies
  that ask the worker, which answers with plain data only (``plain``);
* a ``CallProgram``'s outputs come back to the harness as plain data and are compared there
  (``textbooks.eval.verdicts.plus``: EvalPlus's rules).

What the sandbox guarantees (as root on Linux; ``Sandbox.isolation`` reports what was set up, and every
results file records it):

* no verdict can be forged from inside the program: it holds no test, expected output, reference
  solution, pass marker or result channel, only the channel it answers on, and what it sends there is
  decoded as plain values (an object that "equals everything" arrives as an opaque stand-in equal only to
  itself; ``int``/``list`` subclasses arrive as plain ``int``/``list``); hooks it installs in its own
  interpreter (``builtins``, ``sys.settrace``, frames) touch nothing of the judge's;
* nothing a previous program was sent or produced can be found in a later one's memory: payloads go
  from the harness to the child that needs them through memfds (spliced in the kernel) and outputs
  through wipe-on-fork buffers, never through the server's heap, which children are forked from;
* the program sees the operating system, the Python standard library and its own temp dir, nothing else:
  no checkout, virtual environment, site-packages, benchmark files, ``/home``, ``/root`` (a new root
  filesystem, read-only but for ``/tmp`` and ``/dev/shm``, wiped after every program); no network (a
  namespace without devices); no other user's processes in ``/proc``; no IPC objects of other programs
  (a new IPC namespace per program); a dedicated uid, so every process it leaves behind is killed;
* resources are bounded: CPU budgets per test, wall-clock limits, address space, file size, processes,
  open files, and captured output.

What it does not guarantee: without root (no namespaces, no uid switch) programs run under the harness's
uid with the rlimits, timeouts and session kill only, see the user's files and could signal the harness
or its servers (a killed judge or server fails the program, it never passes it); ``RLIMIT_AS`` is per
process, so a program that forks its allowance of processes can use that many times the address space;
timing is not isolated (a program can slow its neighbours down); kernel bugs are out of scope.
"""

from textbooks.sandbox.client import SandboxError
from textbooks.sandbox.pool import Isolation, Sandbox, default_workers, open_sandbox, run_programs
from textbooks.sandbox.programs import STATUSES, CallGroup, CallProgram, Limits, Program
from textbooks.sandbox.results import CallsResult, ExecResult, decode_record

__all__ = [
    "STATUSES",
    "CallGroup",
    "CallProgram",
    "CallsResult",
    "ExecResult",
    "Isolation",
    "Limits",
    "Program",
    "Sandbox",
    "SandboxError",
    "decode_record",
    "default_workers",
    "open_sandbox",
    "run_programs",
]
