"""The judge's channel to one program's worker: requests, plain-data answers, proxies, CPU accounting.

Standard library only (imported by ``_judge.py`` in the fork server). ``Link`` sends the judge's requests
(call a function, read or set an attribute, look up names) with the CPU budget left in the current phase,
and reads the answers, decoded by ``plain`` into plain values or ``Remote`` references (a function or
object of the program: using it is another request). It counts the worker's CPU time from ``/proc`` and
ends the phase (``Stop``: a timeout, the worker gone or writing garbage) when the budget is spent.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import select
import struct
import time

import plain

MESSAGE_CAP = 256 << 20  # a larger answer is garbage
CPU_GRACE_S = 0.5  # beyond the budget before the judge stops waiting for a call
GARBAGE_GRACE_S = 0.2  # after garbage, how long the judge watches for the worker's exit
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class Stop(BaseException):
    """Ends a program's tests (never caught by test code that catches ``Exception``)."""

    event = "error"


class WorkerTimeout(Stop):
    event = "timeout"


class CpuLimit(Stop):
    event = "cpulimit"


class WorkerGone(Stop):
    event = "gone"


class Garbled(Stop):
    event = "garbled"


class JudgeBudget(Stop):
    event = "timeout"


class ProgramError(Exception):
    """An exception the program raised whose type is not a built-in one."""


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
        self.dead: Stop | None = None
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
    def _fail(self, stop: Stop) -> Stop:
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

    def _garbled(self, why: str) -> Stop:
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
