"""Supervising one program in the fork server: its limits, its output, its verdict, what it leaves behind.

Standard library only (imported by ``_server.py``). ``Supervision._supervise`` waits for the worker (and,
in ``judge`` mode, for the judge's verdict on the server's private socket) within the wall-clock limit,
and in ``calls`` mode within the limit of each call and each group of calls (``Calls``), streaming every
complete output record to the harness as it arrives; a ``{"stop": true}`` request from the harness ends
the program. Captured stdout/stderr are kept up to the program's cap and the rest is drained and counted.
Afterwards whatever the program left behind is killed: its session, its uid, and orphans re-parented to
the server (a child subreaper).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import struct
import time

import _isolation as iso
from _frames import read_control, send_frame

RECORD_CAP = 64 << 20  # one output record of a ``calls`` program
KILL_GRACE_S = 0.2  # for a worker to exit by itself once its judge is done, before it is killed
VERDICT_GRACE_S = 1.0  # for the judge to answer once the worker is gone


class Supervision:
    """The ``Server``'s program supervision (a mixin): it uses the server's judge (``judge_pid``,
    ``judge_sock``, ``kill_judge``), the current program's ``count`` and ``token``, its buffers (``out``,
    ``capture``, ``scratch``) and the programs' ``uid``."""

    def _supervise(self, pid: int, t0: float, meta: dict, out_r: int, err_r: int, ans_r: int | None) -> dict:
        """Wait for the program (and in judge mode its verdict) within its limits; collect what it left."""
        judged = ans_r is None
        cap = int(meta["limits"]["output_bytes"])
        caps = {out_r: "stdout", err_r: "stderr"}
        totals = {"stdout": 0, "stderr": 0}
        watched = [out_r, err_r] + ([] if judged else [ans_r])
        for fd in watched:
            os.set_blocking(fd, False)
        poller = select.poll()
        for fd in watched:
            poller.register(fd, select.POLLIN)
        poller.register(0, select.POLLIN)
        pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
        if pidfd is not None:
            poller.register(pidfd, select.POLLIN)
        jfd = self.judge_sock.fileno() if judged and self.judge_sock is not None else None
        if jfd is not None:
            poller.register(jfd, select.POLLIN)
        deadline = t0 + float(meta["limits"]["wall_s"])
        calls = Calls(meta.get("groups") or [], t0)
        verdict: dict | None = None
        verdict_at = 0.0
        end: str | None = None  # why a calls-mode program ended, or "wall"
        timed_out = harness_gone = judge_died = garbled = False
        status = rusage = None
        killed_at: float | None = None

        def kill_judge() -> None:
            nonlocal jfd, judge_died
            if jfd is not None:
                poller.unregister(jfd)
                jfd = None
            self.kill_judge()
            judge_died = True

        try:
            while True:
                if status is None and pidfd is None:
                    wpid, st, ru = os.wait4(pid, os.WNOHANG)
                    if wpid:
                        status, rusage = st, ru
                done = status is not None
                if done and (not judged or verdict is not None or judge_died):
                    break
                now = time.monotonic()
                # what ends the program next, and when
                if killed_at is None:
                    limit = deadline if judged else min(deadline, calls.deadline())
                    if judged and verdict is not None:  # the judge let go of it: it exits by itself
                        limit = min(limit, verdict_at + KILL_GRACE_S)
                    if judged and judge_died:
                        limit = now
                    if now >= limit:
                        if verdict is None and not judge_died and now >= deadline:
                            timed_out, end = True, "wall"
                        elif not judged and end is None:
                            end = "wall" if now >= deadline else calls.why()
                            timed_out = end == "wall"
                        kill_group(pid)
                        killed_at = now
                        continue
                    wait_s = limit - now
                else:
                    wait_s = 0.05
                    if judged and verdict is None and jfd is not None and now >= killed_at + VERDICT_GRACE_S:
                        kill_judge()  # the judge is stuck in the tests themselves
                        continue
                    if now > killed_at + 5:
                        break  # it cannot be reaped (should not happen); the sweep below kills the uid
                timeout_ms = int(wait_s * 1000) + 1 if pidfd is not None else min(int(wait_s * 1000) + 1, 5)
                for fd, ev in poller.poll(timeout_ms):
                    if fd == pidfd:
                        if status is None:
                            _, status, rusage = os.wait4(pid, 0)
                        poller.unregister(pidfd)
                    elif fd == 0:
                        msg = read_control() if ev & select.POLLIN else None
                        if msg is None:
                            harness_gone = True
                        elif msg.get("stop") and not judged and end is None and killed_at is None:
                            end = "stopped"
                            kill_group(pid)
                            killed_at = time.monotonic()
                    elif fd == jfd:
                        v = self._read_verdict()
                        if v is None:
                            kill_judge()
                        elif v.get("id") == self.count and v.get("token") == self.token:
                            verdict, verdict_at = v, time.monotonic()
                    elif fd == ans_r:
                        got, blocked, gone, bad = self._pump_records(ans_r)
                        calls.arrived(got, time.monotonic(), blocked)
                        if gone:
                            poller.unregister(ans_r)
                        if bad and not garbled:
                            garbled = True
                            if end is None and killed_at is None:
                                end = "garbled"
                                kill_group(pid)
                                killed_at = time.monotonic()
                    elif not self._pump_capture(fd, caps[fd], cap, totals):
                        poller.unregister(fd)
                if harness_gone:
                    break
        finally:
            if pidfd is not None:
                os.close(pidfd)
        if status is None:
            kill_group(pid)
            _, status, rusage = os.wait4(pid, 0)
        orphans = self._sweep(pid, force=timed_out or killed_at is not None)
        for fd, name in caps.items():
            while self._pump_capture(fd, name, cap, totals):
                pass
        if not judged:
            while True:
                got, _, gone, _ = self._pump_records(ans_r)
                calls.arrived(got, time.monotonic(), 0.0)
                if gone or not got:
                    break
            if end is None:
                end = "done" if calls.records == calls.total + 1 else "exited"
        if harness_gone:
            raise SystemExit(0)
        result = {
            "mode": meta["mode"],
            "verdict": verdict,
            "judge_died": judge_died,
            "timed_out": timed_out,
            "end": end,
            "records": calls.records,
            "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "killed": killed_at is not None,
            "wall_s": time.monotonic() - t0,
            "cpu_s": rusage.ru_utime + rusage.ru_stime if rusage is not None else None,
            "max_rss_kb": rusage.ru_maxrss if rusage is not None else None,
            "stdout_bytes": totals["stdout"],
            "stderr_bytes": totals["stderr"],
            "orphans_killed": orphans,
        }
        for name, kind in (("stdout", b"S"), ("stderr", b"E")):
            buf = self.capture[name]
            send_frame(kind, buf.view(0, min(buf.n, cap)))
        return result

    def _read_verdict(self) -> dict | None:
        try:
            data = self.judge_sock.recv(1 << 20)
        except OSError:
            return None
        if not data:
            return None
        try:
            v = json.loads(data)
        except ValueError:
            return None
        return v if isinstance(v, dict) else None

    def _pump_capture(self, fd: int, name: str, cap: int, totals: dict) -> bool:
        """Read what is available; keep at most ``cap`` bytes. False at EOF or when nothing is left."""
        buf = self.capture[name]
        try:
            if buf.n < min(cap, buf.size):
                k = os.readv(fd, [buf.view(buf.n, min(cap, buf.size))])
                buf.n += k
            else:
                k = os.readv(fd, [self.scratch.view(0, self.scratch.size)])
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EBADF):
                return False
            raise
        totals[name] += k
        return k > 0

    def _pump_records(self, fd: int) -> tuple[int, float, bool, bool]:
        """Read output records and forward the complete ones to the harness in one frame.

        Returns (records forwarded, seconds spent blocked on the harness, EOF reached, garbage seen)."""
        buf = self.out
        gone = bad = False
        while buf.n < buf.size:
            try:
                k = buf.fill(fd)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EBADF):
                    break
                raise
            if k == 0:
                gone = True
                break
        pos, count = 0, 0
        while buf.n - pos >= 4:
            (n,) = struct.unpack_from(">I", buf.mm, pos)
            if n > RECORD_CAP:
                bad = True
                break
            if buf.n - pos - 4 < n:
                break
            pos += 4 + n
            count += 1
        blocked = 0.0
        if count:
            t = time.monotonic()
            send_frame(b"O", buf.view(0, pos))
            blocked = time.monotonic() - t
            buf.drop_front(pos)
        elif buf.n >= buf.size:
            bad = True
        return count, blocked, gone, bad

    def _sweep(self, pid: int, force: bool) -> int:
        """Kill whatever the program left behind: its session, its uid, and orphans re-parented to us."""
        killed = 0
        for _ in range(100):
            kids = [k for k in children() if k != self.judge_pid]
            if not kids and not force:
                break
            force = False
            kill_group(pid)
            if self.uid is not None:
                iso.kill_uid(self.uid)
            for k in kids:
                kill_group(k)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(k, signal.SIGKILL)
            for k in kids:
                try:
                    os.waitpid(k, 0)
                    killed += 1
                except ChildProcessError:
                    pass
        return killed


class Calls:
    """Deadlines of a calls-mode program: one per call (from the previous answer) and one per group."""

    def __init__(self, groups: list, t0: float) -> None:
        self.groups = groups
        self.bounds, start = [], 0
        for g in groups:
            self.bounds.append((start, start + int(g["size"])))
            start += int(g["size"])
        self.total = start
        self.records = 0  # the setup's answer, then one per call
        self.group = 0
        self.call_deadline: float | None = None
        self.group_deadline: float | None = t0 + float(groups[0]["wall_s"]) if groups else None
        self.blocked = 0.0  # seconds the server waited on the harness: not the program's time

    def arrived(self, n: int, now: float, blocked: float) -> None:
        self.blocked += blocked
        for _ in range(n):
            self.records += 1
            k = self.records - 1  # the call that comes next
            if k >= self.total:
                self.call_deadline = self.group_deadline = None
                continue
            while self.group < len(self.bounds) - 1 and k >= self.bounds[self.group][1]:
                self.group += 1
            lo = self.bounds[self.group][0]
            g = self.groups[self.group]
            if k == lo and self.group > 0:
                self.group_deadline = now + float(g["wall_s"]) - self.blocked
            limits = g.get("time_limits")
            self.call_deadline = now + float(limits[k - lo]) - self.blocked if limits else None

    def deadline(self) -> float:
        ds = [d + self.blocked for d in (self.call_deadline, self.group_deadline) if d is not None]
        return min(ds) if ds else float("inf")

    def why(self) -> str:
        c = self.call_deadline
        if c is not None and (self.group_deadline is None or c <= self.group_deadline):
            return "call_limit"
        return "group_cap"


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def children() -> list[int]:
    """Live children of this (single-threaded) process."""
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        pass
    kids = []
    for name in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == me:
                        kids.append(int(name))
            except (OSError, ValueError, IndexError):
                continue
    return kids
