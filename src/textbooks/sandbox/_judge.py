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

Everything the worker sends is decoded by ``plain`` into plain values or ``Remote`` references; the
comparisons, the tests' control flow and the verdict never leave this process.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import json
import os
import select
import signal
import socket
import struct
import sys
import time
import types

import plain

MESSAGE_CAP = 256 << 20  # a larger answer is garbage
MESSAGE_CHARS = 2000
CPU_GRACE_S = 0.5  # beyond the budget before the judge stops waiting for a call
GARBAGE_GRACE_S = 0.2  # after garbage, how long the judge watches for the worker's exit
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class _Stop(BaseException):
    """Ends a program's tests (never caught by test code that catches ``Exception``)."""

    event = "error"


class WorkerTimeout(_Stop):
    event = "timeout"


class CpuLimit(_Stop):
    event = "cpulimit"


class WorkerGone(_Stop):
    event = "gone"


class Garbled(_Stop):
    event = "garbled"


class JudgeBudget(_Stop):
    event = "timeout"


class ProgramError(Exception):
    """An exception the program raised whose type is not a built-in one."""


def _on_sigprof(signum: int, frame: object) -> None:
    raise JudgeBudget()


def rebuild_exception(type_name: str, message: str) -> BaseException:
    """The program's exception as a judge-side one: the built-in type of that name, or ``ProgramError``."""
    cls = getattr(builtins, type_name, None) if isinstance(type_name, str) else None
    e: BaseException | None = None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            e = cls(message)
        except BaseException:
            e = None
    if e is None:
        e = ProgramError(f"{type_name}: {message}")
    with contextlib.suppress(AttributeError):
        e.program_type = str(type_name)[:200]  # type: ignore[attr-defined]
    return e


class Link:
    """The judge's end of one program's channel to its worker, with the CPU budget of the current phase."""

    def __init__(self, call_w: int, answer_r: int, worker_pid: int) -> None:
        self.call_w, self.answer_r = call_w, answer_r
        self.dead: _Stop | None = None
        try:
            self.stat_fd: int | None = os.open(f"/proc/{worker_pid}/stat", os.O_RDONLY)
        except OSError:
            self.stat_fd = None
        self.hook = plain.make_hook(self._remote)
        self.remotes: dict[int, Remote] = {}
        self.budget = 0.0
        self.phase: str | int = "setup"
        self.worker_at_start = self.judge_at_start = 0.0
        self.token = 0  # tells the worker when a new phase (budget) begins
        self.rbuf = bytearray()

    def close(self) -> None:
        for fd in (self.call_w, self.answer_r, self.stat_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)

    # -- CPU accounting --------------------------------------------------------------------------------
    def worker_cpu(self) -> float:
        if self.stat_fd is None:
            return 0.0
        try:
            fields = os.pread(self.stat_fd, 4096, 0).rsplit(b")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, ValueError, IndexError):
            return 0.0

    def start(self, phase: str | int, budget: float) -> None:
        self.phase, self.budget = phase, float(budget)
        self.worker_at_start, self.judge_at_start = self.worker_cpu(), time.process_time()
        self.token += 1

    def left(self, exact: bool = True) -> float:
        """CPU seconds left in the phase; ``exact=False`` skips reading the worker's time (an upper bound)."""
        used = time.process_time() - self.judge_at_start
        if exact:
            used += self.worker_cpu() - self.worker_at_start
        return self.budget - used

    # -- messages --------------------------------------------------------------------------------------
    def _fail(self, stop: _Stop) -> _Stop:
        if self.dead is None:
            self.dead = stop
        return self.dead

    def _read(self, n: int) -> bytes:
        """The next ``n`` bytes from the worker, waiting no longer than the phase's CPU budget allows."""
        buf = self.rbuf
        left = self.left(exact=False)
        while len(buf) < n:
            ready = select.select([self.answer_r], [], [], max(left, 0.0) + CPU_GRACE_S)[0]
            if not ready:
                left = self.left()
                if left + CPU_GRACE_S <= 0:
                    raise self._fail(CpuLimit())
                continue
            chunk = os.read(self.answer_r, max(n - len(buf), 1 << 16))
            if not chunk:
                raise self._fail(WorkerGone())
            buf += chunk
        out = bytes(buf[:n])
        del buf[:n]
        return out

    def receive(self) -> list:
        if self.dead is not None:
            raise self.dead
        (n,) = struct.unpack(">I", self._read(4))
        if n > MESSAGE_CAP:
            raise self._garbled(f"an answer of {n} bytes")
        try:
            record = plain.decode(self._read(n), self.hook)
        except plain.PlainDataError as e:
            raise self._garbled(str(e)) from None
        if not isinstance(record, list) or not record or not isinstance(record[0], str):
            raise self._garbled("an answer that is not a record")
        return record

    def _garbled(self, why: str) -> _Stop:
        """Garbage on the channel: a worker on its way out (it wrote, then exited) is ``gone``, one that
        goes on is ``garbled``."""
        deadline = time.monotonic() + GARBAGE_GRACE_S
        while (left := deadline - time.monotonic()) > 0 and select.select([self.answer_r], [], [], left)[0]:
            try:
                if not os.read(self.answer_r, 1 << 16):
                    return self._fail(WorkerGone())
            except OSError:
                return self._fail(WorkerGone())
        return self._fail(Garbled(why))

    def request(self, msg: list) -> list:
        self.send(msg)
        return self.receive()

    def send(self, msg: list) -> None:
        if self.dead is not None:
            raise self.dead
        msg = [*msg, [self.token, max(self.left(exact=False), 0.001)]]
        try:
            data = plain.encode(msg, self._local)
        except plain.PlainDataError as e:
            raise TypeError(f"cannot send to the program: {e}") from None
        view = memoryview(struct.pack(">I", len(data)) + data)
        try:
            while view:
                view = view[os.write(self.call_w, view) :]
        except OSError:
            pass  # the worker stopped reading: what it wrote before (a setup error) is still to be read

    def _local(self, obj: object) -> object:
        if isinstance(obj, Remote) and obj._link is self:
            return {"h": obj._rid}
        raise plain.PlainDataError(f"a {type(obj).__name__} object cannot be passed to the program")

    def _remote(self, payload: object) -> Remote:
        if not (isinstance(payload, list) and len(payload) == 3 and type(payload[0]) is int):
            raise plain.PlainDataError("malformed reference")
        rid, type_name, truth = payload
        r = self.remotes.get(rid)
        if r is None:
            r = self.remotes[rid] = Remote(self, rid, str(type_name)[:100], truth is True)
        return r

    def value(self, record: list) -> object:
        """The value an answer stands for, or raise what the program raised."""
        kind = record[0]
        if kind == "ok" and len(record) == 2:
            return record[1]
        if kind == "raised" and len(record) == 3:
            raise rebuild_exception(record[1], record[2])
        if kind == "timeout":
            raise self._fail(WorkerTimeout())
        if kind == "bad" and len(record) == 2:
            raise ProgramError(f"the program's answer is not plain data ({str(record[1])[:200]})")
        raise self._fail(Garbled(f"unexpected answer {kind!r}"))


class Remote:
    """A function or object that lives in the program: using it is a request to the worker.

    Equal only to itself (the same object of the program); truthy as the object was when it was sent.
    """

    __slots__ = ("_link", "_rid", "_truth", "_type")

    def __init__(self, link: Link, rid: int, type_name: str, truth: bool) -> None:
        object.__setattr__(self, "_link", link)
        object.__setattr__(self, "_rid", rid)
        object.__setattr__(self, "_type", type_name)
        object.__setattr__(self, "_truth", truth)

    def __call__(self, *args: object, **kwargs: object) -> object:
        return self._link.value(self._link.request(["call", self._rid, list(args), dict(kwargs)]))

    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        return self._link.value(self._link.request(["get", self._rid, name]))

    def __setattr__(self, name: str, value: object) -> None:
        self._link.value(self._link.request(["set", self._rid, name, value]))

    def __iter__(self) -> object:
        return iter(self._link.value(self._link.request(["iter", self._rid])))

    def __len__(self) -> int:
        return self._link.value(self._link.request(["len", self._rid]))

    def __getitem__(self, key: object) -> object:
        return self._link.value(self._link.request(["item", self._rid, key]))

    def __bool__(self) -> bool:
        return self._truth

    def __eq__(self, other: object) -> bool:
        return other is self

    def __hash__(self) -> int:
        return id(self)

    def __copy__(self) -> Remote:
        return self

    def __deepcopy__(self, memo: dict) -> Remote:
        return self

    def __repr__(self) -> str:
        return f"<program's {self._type} object>"


# ----------------------------------------------------------------------------------------------------------


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
            stop = link.dead or (e if isinstance(e, _Stop) else None)
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
