"""The untrusted side of a program: runs the code under test and answers calls with plain data.

Standard library only. Runs in a child of the fork server (forked, or a fresh interpreter started as
``python _worker.py --worker``), after the server has dropped it into its own session, IPC namespace,
rlimits and uid. It holds nothing that decides a verdict: no tests, no expected outputs, no reference
solution, no pass marker and no channel to the server's results. It reads its payload (the code, and in
``calls`` mode the inputs) from a memfd, executes the code, then

* ``judge`` mode: serves the judge's requests (call a function or a method, read or set an attribute,
  look up top-level names), each answered with a plain-data value (``plain``), a reference the judge may
  pass back, or the exception it raised;
* ``calls`` mode: calls ``entry_point`` on each input in turn and writes each output (or the exception it
  raised) as a record for the server, stopping at the first exception.

Messages are ``[u32 length][JSON array]``. A CPU budget sent with each request (``judge`` mode) or the
setup budget is enforced here too, by ``ITIMER_PROF`` (a program can disarm it; the judge's and the
server's own limits stand regardless).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import signal
import struct
import sys
import time
import types

if __name__ == "__main__":  # started as a fresh interpreter: find plain.py beside this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import plain

    del sys.path[0]
else:
    import plain

PAYLOAD_FD, CALL_FD, ANSWER_FD = 3, 4, 5  # where the server puts the channels in the child
MESSAGE_CAP = 1 << 30
MESSAGE_CHARS = 2000


class _CpuBudgetExceeded(BaseException):
    """Raised in the program when a call (or the setup) used up its CPU-time budget (SIGPROF)."""


def _on_sigprof(signum: int, frame: object) -> None:
    raise _CpuBudgetExceeded()


def _arm(seconds: float | None) -> None:
    if seconds is not None:
        signal.setitimer(signal.ITIMER_PROF, max(float(seconds), 0.001))


def _disarm() -> None:
    signal.setitimer(signal.ITIMER_PROF, 0)


def write_msg(fd: int, data: bytes) -> None:
    view = memoryview(struct.pack(">I", len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def describe(e: BaseException) -> list[str]:
    """[type name, message] of an exception, whatever its ``__str__`` does."""
    try:
        message = str(e)[:MESSAGE_CHARS]
    except BaseException:
        message = "<unprintable>"
    return [type(e).__name__[:200], message]


def read_payload(fd: int) -> tuple[dict, bytes]:
    """(header, the rest) of the payload memfd, which is then closed."""
    chunks = []
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    os.close(fd)
    data = b"".join(chunks)
    (n,) = struct.unpack(">I", data[:4])
    return json.loads(data[4 : 4 + n]), data[4 + n :]


class Worker:
    def __init__(self, header: dict, rest: bytes, answer_fd: int, call_fd: int | None) -> None:
        self.header, self.rest = header, rest
        self.answer_fd, self.call_fd = answer_fd, call_fd
        self.objects: dict[int, object] = {}  # reference id -> object (kept alive while referenced)
        self.ids: dict[int, int] = {}  # id(object) -> reference id
        self.phase: object = None  # the judge's current phase (a test), and when this process entered it
        self.phase_start = 0.0

    # -- plain data with references ----------------------------------------------------------------------
    def ref(self, obj: object) -> dict:
        key = id(obj)
        rid = self.ids.get(key)
        if rid is None:
            rid = self.ids[key] = len(self.objects) + 1
            self.objects[rid] = obj
        try:
            truth = bool(obj)
        except BaseException:
            truth = True
        return {"h": [rid, type(obj).__name__[:100], truth]}

    def resolve(self, payload: object) -> object:
        if not isinstance(payload, int) or payload not in self.objects:
            raise plain.PlainDataError("unknown reference")
        return self.objects[payload]

    def answer(self, record: list) -> None:
        for stream in (sys.stdout, sys.stderr):  # what the program printed lands before the answer
            with contextlib.suppress(BaseException):
                stream.flush()
        try:
            data = plain.dumps(record)
        except plain.PlainDataError as e:
            data = plain.dumps(["bad", str(e)])
        write_msg(self.answer_fd, data)

    def value(self, obj: object, refs: bool) -> list:
        try:
            if not refs and (big := plain.digest(obj)) is not None:
                return ["ok", big]
            return ["ok", plain.to_json(obj, self.ref if refs else None)]
        except plain.PlainDataError as e:
            return ["bad", str(e)]
        except MemoryError:
            return ["bad", "the output does not fit in memory to be sent"]

    # -- running -----------------------------------------------------------------------------------------
    def setup(self, namespace: dict, prepare: object = None) -> bool:
        """Execute the code (then ``prepare(namespace)``); answer ``ready`` or the setup's failure. True when
        the program may go on."""
        budget = self.header.get("setup_cpu_s")
        try:
            try:
                code = compile(self.header["setup"], "solution.py", "exec")
                _arm(budget)
                exec(code, namespace)
                _disarm()
            except _CpuBudgetExceeded:
                _disarm()
                self.answer(["timeout"])
                return False
            except BaseException as e:
                _disarm()
                signal.signal(signal.SIGPROF, signal.SIG_IGN)
                self.answer(["setup_error", *describe(e)])
                return False
        except _CpuBudgetExceeded:  # the budget ran out just as another exception was being handled
            _disarm()
            self.answer(["timeout"])
            return False
        if prepare is not None:
            try:
                prepare(namespace)
            except BaseException as e:  # e.g. no such function (EvalPlus: a KeyError)
                self.answer(["raised", *describe(e)])
                return False
        self.answer(["ready"])
        return True

    def serve(self, namespace: dict) -> None:
        """Judge mode: answer requests until the judge closes the channel."""
        hook = plain.make_hook(self.resolve)
        buf = bytearray()
        while True:
            while len(buf) < 4 or len(buf) < 4 + struct.unpack_from(">I", buf)[0]:
                if len(buf) >= 4 and struct.unpack_from(">I", buf)[0] > MESSAGE_CAP:
                    return
                chunk = os.read(self.call_fd, 1 << 16)
                if not chunk:
                    return
                buf += chunk
            n = struct.unpack_from(">I", buf)[0]
            body = bytes(buf[4 : 4 + n])
            del buf[: 4 + n]
            try:
                record = self.handle(plain.decode(body, hook), namespace)
            except _CpuBudgetExceeded:
                _disarm()
                record = ["timeout"]
            except plain.PlainDataError as e:
                record = ["bad", str(e)]
            except BaseException as e:  # a program's object misbehaving while being looked at
                record = ["raised", *describe(e)]
            self.answer(record)

    def budget(self, spec: object) -> float | None:
        """CPU seconds left for this request: the judge's budget for the phase ``[token, seconds]`` minus
        what this process used since the phase's first request."""
        if not (isinstance(spec, list) and len(spec) == 2 and isinstance(spec[1], (int, float))):
            return None
        now = time.process_time()
        if spec[0] != self.phase:
            self.phase, self.phase_start = spec[0], now
        return float(spec[1]) - (now - self.phase_start)

    def handle(self, req: list, namespace: dict) -> list:
        op = req[0]
        if op == "names":
            out = []
            for name in req[1]:
                if isinstance(name, str) and name in namespace:
                    v = namespace[name]
                    entry = ["m", str(v.__name__)] if isinstance(v, types.ModuleType) else self.value(v, True)
                    out.append([name, entry])
            return ["names", out]
        target = namespace.get(req[1]) if isinstance(req[1], str) else self.resolve(req[1])
        budget = self.budget(req[-1])
        try:
            _arm(budget)
            try:
                if op == "call":
                    out = target(*req[2], **req[3])
                elif op == "iter":
                    out = list(target)
                elif op == "len":
                    out = len(target)
                elif op == "item":
                    out = target[req[2]]
                elif op == "get":
                    out = getattr(target, req[2])
                elif op == "set":
                    setattr(target, req[2], req[3])
                    out = None
                else:
                    raise ValueError(f"unknown request {op!r}")
            finally:
                _disarm()
        except _CpuBudgetExceeded:
            return ["timeout"]
        except BaseException as e:
            return ["raised", *describe(e)]
        return self.value(out, True)

    def prepare_calls(self, namespace: dict) -> None:
        """Before ``ready``: the inputs decoded, the function found, the padding for ``recursion_room``
        measured (none of it is any call's time)."""
        self.inputs = plain.decode(self.rest)
        self.fn = namespace[self.header["entry_point"]]
        room = self.header.get("recursion_room")
        self.pad = max(0, _through(0, _room, ()) - int(room)) if room else 0

    def calls(self) -> None:
        """Calls mode: ``entry_point(*args)`` for each input, one record each; stop at an exception.

        A record's time covers the call and the serialising of its output (a reference's outputs are
        timed the same way, so a large output does not eat into a sample's limit)."""
        return_args = bool(self.header.get("return_args"))
        fn, pad = self.fn, self.pad
        clock = time.perf_counter
        for args in self.inputs:
            try:
                t0 = clock()
                out = _through(pad, fn, args)
            except BaseException as e:
                self.answer(["raised", *describe(e)])
                return
            rec = self.value(out, False)
            rec.append(clock() - t0)
            if return_args:
                rec.append(self.value(args, False)[1] if rec[0] == "ok" else None)
            self.answer(rec)
            if rec[0] != "ok":
                return


def _through(frames: int, fn: object, args: object) -> object:
    """``fn(*args)`` called ``frames`` Python frames deeper than here (the recursion limit counts them:
    a harness that calls from deeper leaves the program less room)."""
    if frames <= 0:
        return fn(*args)
    return _through(frames - 1, fn, args)


def _room() -> int:
    """How many more nested calls fit below the caller before RecursionError."""

    def down(n: int) -> int:
        try:
            return down(n + 1)
        except RecursionError:
            return n

    return down(0)


def _evalplus_guard() -> None:
    """What EvalPlus's ``reliability_guard`` and ``swallow_io`` take away from a program, taken away the
    same way (their outcome, a failed call, is part of EvalPlus's verdicts)."""
    import io
    import shutil
    import subprocess

    class _WriteOnly(io.StringIO):
        def read(self, *a: object, **k: object) -> str:
            raise OSError

        readline = readlines = read

        def readable(self, *a: object, **k: object) -> bool:
            return False

    builtins.exit = None
    builtins.quit = None
    for name in [
        "kill",
        "system",
        "putenv",
        "remove",
        "removedirs",
        "rmdir",
        "fchdir",
        "setuid",
        "fork",
        "forkpty",
        "killpg",
        "rename",
        "renames",
        "truncate",
        "replace",
        "unlink",
        "fchmod",
        "fchown",
        "chmod",
        "chown",
        "chroot",
        "lchflags",
        "lchmod",
        "lchown",
        "getcwd",
        "chdir",
    ]:
        setattr(os, name, None)
    builtins.open = None
    shutil.rmtree = shutil.move = shutil.chown = None
    subprocess.Popen = None
    builtins.help = None
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None
    sys.stdin = _WriteOnly()


def run(payload_fd: int = PAYLOAD_FD, call_fd: int = CALL_FD, answer_fd: int = ANSWER_FD) -> None:
    """Entry point in the child; never returns."""
    code = 0
    try:
        header, rest = read_payload(payload_fd)
        signal.signal(signal.SIGPROF, _on_sigprof)
        worker = Worker(header, rest, answer_fd, call_fd if header["mode"] == "judge" else None)
        if header["mode"] == "judge":
            main = types.ModuleType("__main__")
            main.__dict__["__file__"] = os.path.join(os.getcwd(), "solution.py")
            main.__dict__["__builtins__"] = builtins
            sys.modules["__main__"] = main
            sys.argv = ["solution.py"]
            del header, rest, payload_fd
            if worker.setup(main.__dict__):
                worker.serve(main.__dict__)
        else:
            namespace: dict = {}  # as EvalPlus's exec(code, {}): no __name__ == "__main__" block runs
            if header.get("evalplus_guard"):
                _evalplus_guard()
            del header, rest, payload_fd
            if worker.setup(namespace, worker.prepare_calls):
                worker.calls()
    except BaseException:
        code = 70
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    os._exit(code)


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    run()
