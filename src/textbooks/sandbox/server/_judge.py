"""The trusted side of a program: runs the benchmark's own tests in an interpreter the program cannot reach.

Standard library only. One judge per fork server, forked from it once and kept (so a program costs one
fork, not two); it runs as its own uid (``worker uid + 1``), non-dumpable, in its own IPC namespace, so
a program can neither signal, trace, read nor write it. For each program the server hands it, over a
private socket, the two pipes to the program's worker, the memfd holding the tests and the pipes that
capture output. It then

1. compiles the trusted code (``trusted``: definitions that take precedence over the program's, such as
   HumanEval's prompt helpers; ``test_setup``: HumanEval's ``check``; ``tests``: one statement each);
2. waits for the worker to finish the program's setup, within ``setup_cpu_s`` of the worker's CPU time;
3. asks the worker for the top-level names the trusted code uses (never built-ins) and binds each to a
   ``Remote`` proxy (a function or object of the program: calling it, or reading or setting one of its
   attributes, is a request to the worker) or to the plain value it holds; a module the program imported
   is imported here instead, from the standard library;
4. executes ``trusted`` and ``test_setup``, binds ``entry_point`` to the program's again, and runs each
   test with a budget of ``test_cpu_s`` CPU seconds counted over both processes: the worker enforces the
   rest of it on each call (``ITIMER_PROF``), the judge re-reads the worker's CPU time from ``/proc`` when
   a call takes longer than the budget left and reports ``cpulimit`` (the server then kills the worker);
5. sends the verdict to the server on its private socket, with the job's one-time token: passed, or the
   first failure (an assertion, an exception, a timeout, the worker gone or writing garbage).

Everything the worker sends is decoded by ``plain`` into plain values or ``Remote`` references (``_link``);
the comparisons, the tests' control flow and the verdict never leave this process.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import json
import os
import signal
import socket
import sys
import types

from _link import Garbled, JudgeBudget, Link, Stop, WorkerTimeout

MESSAGE_CHARS = 2000


def _on_sigprof(signum: int, frame: object) -> None:
    raise JudgeBudget()


def used_names(code: types.CodeType) -> set[str]:
    """Every global or attribute name ``code`` and its nested functions mention."""
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= used_names(c)
    return names


class Judge:
    def __init__(self, ctl: socket.socket, devnull: int) -> None:
        self.ctl, self.devnull = ctl, devnull
        self.compiled: dict[tuple[str, str], tuple[types.CodeType, set[str]]] = {}

    def compile(self, source: str, filename: str) -> tuple[types.CodeType, set[str]]:
        """(code, the names it uses), cached: a problem's tests are compiled once per judge."""
        key = (source, filename)
        hit = self.compiled.get(key)
        if hit is None:
            if len(self.compiled) > 2048:
                self.compiled.clear()
            code = compile(source, filename, "exec")
            hit = self.compiled[key] = (code, used_names(code))
        return hit

    def serve(self) -> None:
        while True:
            try:
                msg, fds, _, _ = socket.recv_fds(self.ctl, 1 << 16, 8)
            except OSError:
                return
            if not msg:
                return
            job = json.loads(msg)
            try:
                verdict = self.run(job, fds)
            except BaseException as e:  # a judge bug: reported, never a pass
                verdict = {"passed": False, "event": {"event": "judge", "message": repr(e)[:MESSAGE_CHARS]}}
            finally:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self.ctl.send(json.dumps({"id": job["id"], "token": job.get("token"), **verdict}).encode())

    def run(self, job: dict, fds: list[int]) -> dict:
        call_w, answer_r, payload_fd, out_w, err_w = fds
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        try:
            os.chdir(job["workdir"])
        except OSError:
            os.chdir("/")
        link = Link(os.dup(call_w), os.dup(answer_r), int(job["worker_pid"]))
        try:
            return self.judge(link, _read_all(payload_fd))
        finally:
            link.close()
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(BaseException):
                    stream.flush()
            os.dup2(self.devnull, 1)
            os.dup2(self.devnull, 2)
            os.chdir("/")

    def judge(self, link: Link, payload: dict) -> dict:
        entry = payload.get("entry_point")
        try:
            compiled = [self.compile(payload.get("trusted", ""), "<trusted>")]
            compiled.append(self.compile(payload.get("test_setup", ""), "<test setup>"))
            compiled += [self.compile(t, f"<test {i}>") for i, t in enumerate(payload["tests"])]
        except (SyntaxError, ValueError) as e:
            return _error("setup", e, kind="judge")
        (trusted, _), (test_setup, _) = compiled[:2]
        tests = [code for code, _ in compiled[2:]]
        wanted = set().union(*(names for _, names in compiled))
        wanted = {n for n in wanted if not hasattr(builtins, n)}
        if entry:
            wanted.add(entry)
        setup_cpu, test_cpu = float(payload["setup_cpu_s"]), float(payload["test_cpu_s"])
        ns: dict = {"__name__": "__main__", "__builtins__": builtins}
        phase: str | int = "setup"
        try:
            link.start("setup", setup_cpu)
            link.send(["names", sorted(wanted)])  # answered right after the setup: no extra round trip
            first = link.receive()
            if first[0] == "setup_error" and len(first) == 3:
                return {"passed": False, "event": _event("error", "setup", first[1], first[2])}
            if first[0] == "timeout":
                raise link._fail(WorkerTimeout())
            if first != ["ready"]:
                raise link._fail(Garbled("no ready signal"))
            names = link.receive()
            if names[0] != "names" or len(names) != 2 or not isinstance(names[1], list):
                raise link._fail(Garbled("a bad answer to the names request"))
            program = _bind(names[1])
            ns.update(program)
            _arm(setup_cpu)
            exec(trusted, ns)
            exec(test_setup, ns)
            _disarm()
            if entry and entry in program:
                ns[entry] = program[entry]
            for i, code in enumerate(tests):
                phase = i
                link.start(i, test_cpu)
                _arm(test_cpu)
                exec(code, ns)
                _disarm()
        except BaseException as e:
            _disarm()
            stop = link.dead or (e if isinstance(e, Stop) else None)
            if stop is not None:
                return {"passed": False, "event": _event(stop.event, phase, type(stop).__name__, str(stop))}
            return _error(phase, e)
        if link.dead is not None:  # a test swallowed the failure
            stop = link.dead
            return {"passed": False, "event": _event(stop.event, phase, type(stop).__name__, str(stop))}
        return {"passed": True, "event": None}


def _bind(entries: list) -> dict:
    """The judge's bindings for the worker's answer to the names request."""
    out = {}
    stdlib = getattr(sys, "stdlib_module_names", frozenset())
    for item in entries:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            continue
        name, entry = item
        if not (isinstance(entry, list) and len(entry) == 2):
            continue
        kind, value = entry
        if kind == "ok":
            out[name] = value
        elif kind == "m" and isinstance(value, str) and value.split(".")[0] in stdlib:
            with contextlib.suppress(BaseException):  # the judge's own copy of a standard module
                out[name] = importlib.import_module(value)
    return out


def _event(event: str, phase: str | int, type_name: str, message: str) -> dict:
    return {"event": event, "phase": phase, "type": type_name, "message": str(message)[:MESSAGE_CHARS]}


def _error(phase: str | int, e: BaseException, kind: str = "error") -> dict:
    try:
        message = str(e)
    except BaseException:
        message = "<unprintable>"
    name = getattr(e, "program_type", None) or type(e).__name__
    return {"passed": False, "event": _event(kind, phase, name, message)}


def _arm(seconds: float) -> None:
    signal.setitimer(signal.ITIMER_PROF, max(seconds, 0.001))


def _disarm() -> None:
    signal.setitimer(signal.ITIMER_PROF, 0)


def _read_all(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return json.loads(b"".join(chunks))


def main(ctl: socket.socket) -> None:
    """Entry point in the judge process (after the server dropped its privileges); never returns."""
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    signal.signal(signal.SIGPROF, _on_sigprof)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        Judge(ctl, devnull).serve()
    finally:
        os._exit(0)
