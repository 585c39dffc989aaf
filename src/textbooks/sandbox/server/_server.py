"""Fork server for the sandbox: a clean interpreter that runs each program in a fresh child process.

Run as a script (``python -S -s -P _server.py``: standard library only, no site-packages); the harness
(``textbooks.sandbox.pool``) talks to it over stdin/stdout. It isolates itself once (``_isolation``),
forks its judge once (``_judge``), then for each request forks one worker (``_worker``) and supervises it
(``_supervise``). Its pipes and buffers are ``_frames``; ``_prewarm`` readies it for fast forks.

Requests are ``[u32 n][meta JSON][worker payload][judge payload]``; the payloads (the program's code, its
inputs, its tests) are spliced from the request pipe into memfds inside the kernel and handed to the one
child that needs them, so they never enter this process's memory, which every later program is forked
from. Likewise every byte a program produces (outputs, stdout, stderr) passes through ``PrivateBuffer``
mappings marked wipe-on-fork and is zeroed after each program. Answers are frames ``[u32 n][kind][data]``:
``H`` hello (JSON), ``O`` a batch of output records (``calls`` mode, streamed as they arrive), ``S``/``E``
the captured stdout/stderr, ``R`` the result (JSON). While a ``calls`` program runs, a ``{"stop": true}``
request ends it (the harness found a wrong output).

Two modes:

* ``judge``: the worker runs the program and answers the judge; the judge runs the tests and sends its
  verdict on a private socket. The server enforces the wall-clock limit, kills what is left (session,
  uid, orphans: the server is a child subreaper) and reports the verdict with the worker's exit status;
* ``calls``: the worker calls the entry point on each input; the server streams each output record to
  the harness (which compares) and enforces a wall-clock limit per call and per group of calls.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import resource
import shutil
import signal
import socket
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
import _isolation as iso  # noqa: E402
import _judge  # noqa: E402
import _worker  # noqa: E402
from _frames import PrivateBuffer, read_exact, send_json, splice_into  # noqa: E402
from _prewarm import prewarm  # noqa: E402
from _supervise import RECORD_CAP, Supervision  # noqa: E402

sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) != HERE]
# What a program's process must not find in sys.modules (the server's code, imported before it forked).
SERVER_MODULES = ("_isolation", "_judge", "_link", "_frames", "_prewarm", "_supervise", "_server", "__main__")


class Server(Supervision):
    def __init__(self, config: dict) -> None:
        self.notes: list[str] = []
        self.isolate = bool(config.get("isolate", True))
        self.python = config.get("python") or sys.executable
        root = iso.is_root()
        self.network = False
        if self.isolate:
            why = iso.unshare(iso.CLONE_NEWNET)
            self.network = why is None
            if why:
                self.notes.append(f"network: {why}")
        self.uid = self.judge_uid = None
        if self.isolate and root:
            uid = iso.UID_BASE + 2 * os.getpid()
            if iso.probe_uid(uid) and iso.probe_uid(uid + 1):
                self.uid, self.judge_uid = uid, uid + 1
            else:
                self.notes.append(
                    f"uid: cannot switch to uids {uid}, {uid + 1}; programs keep the server's uid"
                )
        self.ipc = self.isolate and root and iso.LIBC is not None
        if self.isolate and not self.ipc:
            self.notes.append("ipc: needs root for an IPC namespace per program")
        self.filesystem = self.processes_hidden = False
        self.keep: set[str] = set()
        if self.isolate:
            self._isolate_filesystem(config)
        if self.filesystem:
            self.root = "/tmp"
            self.wipe = ["/tmp"] + (["/dev/shm"] if os.path.isdir("/dev/shm") else [])
            self.runner = os.path.join(iso.SANDBOX_MOUNT, "_worker.py")
        else:
            import tempfile

            self.root = tempfile.mkdtemp(prefix="textbooks-sandbox-")
            self.wipe = []
            self.runner = os.path.join(HERE, "_worker.py")
            if self.uid is not None:
                os.chown(self.root, 0, 0)
                os.chmod(self.root, 0o711)
        self.subreaper = iso.prctl(iso.PR_SET_CHILD_SUBREAPER, 1)
        self.user_tasks = None if root else iso.user_tasks(os.getuid())
        self.devnull = os.open(os.devnull, os.O_RDWR)
        self.count = 0
        self.out = PrivateBuffer(RECORD_CAP + (1 << 20))
        self.capture = {"stdout": PrivateBuffer(16 << 20), "stderr": PrivateBuffer(16 << 20)}
        self.scratch = PrivateBuffer(1 << 16)
        self.judge_pid: int | None = None
        self.token = ""
        self.judge_sock: socket.socket | None = None

    def _isolate_filesystem(self, config: dict) -> None:
        why = iso.unshare(iso.CLONE_NEWNS)
        if why:
            self.notes.append(f"filesystem: {why}")
            return
        try:
            iso.mount(None, "/", None, iso.MS_REC | iso.MS_PRIVATE, None)
        except OSError as e:
            self.notes.append(f"filesystem: cannot make mounts private ({e}); left untouched")
            return
        new_root = iso.NewRoot(
            self.python, HERE, list(config.get("hide", [])), int(config.get("tmpfs_mb", 512)), self.judge_uid
        )
        try:
            new_root.build()
        except OSError as e:
            self.notes.append(f"filesystem: {e}")
            return
        self.notes += new_root.notes
        self.filesystem, self.processes_hidden = True, new_root.processes_hidden
        self.keep = new_root.protected

    def hello(self) -> dict:
        return {
            "pid": os.getpid(),
            "python": sys.version.split()[0],
            "network_isolated": self.network,
            "filesystem_isolated": self.filesystem,
            "uid": self.uid,
            "judge_uid": self.judge_uid,
            "ipc": self.ipc,
            "processes_hidden": self.processes_hidden,
            "subreaper": self.subreaper,
            "nproc_base": self.user_tasks,
            "notes": self.notes,
        }

    # -- the judge -----------------------------------------------------------------------------------------
    def judge_alive(self) -> bool:
        if self.judge_pid is None:
            return False
        try:
            pid, _ = os.waitpid(self.judge_pid, os.WNOHANG)
        except ChildProcessError:
            pid = self.judge_pid
        if pid:
            self._forget_judge()
            return False
        return True

    def _forget_judge(self) -> None:
        if self.judge_sock is not None:
            self.judge_sock.close()
        self.judge_pid, self.judge_sock = None, None

    def kill_judge(self) -> None:
        if self.judge_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.judge_pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.judge_pid, 0)
            if self.judge_uid is not None:
                iso.kill_uid(self.judge_uid)
        self._forget_judge()

    def start_judge(self, limits: dict) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            try:
                parent.close()
                keep = child.fileno()
                os.setsid()
                iso.prctl(iso.PR_SET_PDEATHSIG, signal.SIGKILL)
                for fd in range(3, 1024):
                    if fd != keep:
                        with contextlib.suppress(OSError):
                            os.close(fd)
                for which, v in (
                    (resource.RLIMIT_AS, limits["memory_bytes"]),
                    (resource.RLIMIT_FSIZE, limits["file_size_bytes"]),
                    (resource.RLIMIT_CORE, 0),
                ):
                    resource.setrlimit(which, (v, v))
                if self.ipc:
                    iso.unshare_ipc()
                if self.judge_uid is not None:
                    iso.drop_to(self.judge_uid)
                iso.prctl(iso.PR_SET_DUMPABLE, 0)
                iso.prctl(iso.PR_SET_NO_NEW_PRIVS, 1)
                os.chdir("/")
                _judge.main(child)
            finally:
                os._exit(70)
        child.close()
        self.judge_pid, self.judge_sock = pid, parent

    # -- one program ---------------------------------------------------------------------------------------
    def run(self, meta: dict, worker_fd: int, judge_fd: int | None) -> dict:
        self.count += 1
        limits = meta["limits"]
        judged = meta["mode"] == "judge"
        workdir = os.path.join(self.root, f"run{self.count}")
        os.mkdir(workdir, 0o700)
        if self.uid is not None:
            os.chown(workdir, self.uid, self.judge_uid)
            os.chmod(workdir, 0o770)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        ans_r, ans_w = os.pipe()
        call_r, call_w = os.pipe() if judged else (None, None)
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            self._worker_child(meta, workdir, worker_fd, call_r, ans_w, out_w, err_w)
        for fd in (worker_fd, call_r, ans_w):
            if fd is not None:
                os.close(fd)
        try:
            if judged:
                # the judge echoes the token: a verdict is this program's (and only the judge holds the socket)
                self.token = os.urandom(16).hex()
                job = {"id": self.count, "token": self.token, "worker_pid": pid, "workdir": workdir}
                job = json.dumps(job).encode()
                for _ in range(2):  # a judge that died since the last program is replaced
                    if not self.judge_alive():
                        self.start_judge(limits)
                    try:
                        socket.send_fds(self.judge_sock, [job], [call_w, ans_r, judge_fd, out_w, err_w])
                        break
                    except OSError:
                        self.kill_judge()
                for fd in (call_w, ans_r, judge_fd):
                    os.close(fd)
                os.close(out_w)
                os.close(err_w)
                return self._supervise(pid, t0, meta, out_r, err_r, None)
            os.close(out_w)
            os.close(err_w)
            return self._supervise(pid, t0, meta, out_r, err_r, ans_r)
        finally:
            for fd in (out_r, err_r) + (() if judged else (ans_r,)):
                with contextlib.suppress(OSError):
                    os.close(fd)
            shutil.rmtree(workdir, ignore_errors=True)
            for d in self.wipe:
                iso.empty_dir(d, self.keep)
            self.out.clear()
            for b in self.capture.values():
                b.clear()

    def _worker_child(
        self,
        meta: dict,
        workdir: str,
        payload_fd: int,
        call_r: int | None,
        ans_w: int,
        out_w: int,
        err_w: int,
    ) -> None:
        try:
            os.setsid()
            iso.prctl(iso.PR_SET_PDEATHSIG, signal.SIGKILL)
            # move the channels to their places (3, 4, 5) without clobbering one another
            chans = (payload_fd, call_r if call_r is not None else self.devnull, ans_w)
            fds = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in chans]
            os.dup2(self.devnull, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            for target, fd in zip((_worker.PAYLOAD_FD, _worker.CALL_FD, _worker.ANSWER_FD), fds):
                os.dup2(fd, target)
            os.closerange(6, 65536)
            for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM):
                signal.signal(sig, signal.SIG_DFL)
            lim = meta["limits"]
            cpu = int(meta["cpu_s"]) + 2
            rl = [
                (resource.RLIMIT_CPU, cpu, cpu + 1),
                (resource.RLIMIT_AS, lim["memory_bytes"], lim["memory_bytes"]),
                (resource.RLIMIT_FSIZE, lim["file_size_bytes"], lim["file_size_bytes"]),
                (resource.RLIMIT_NOFILE, 1024, 1024),
                (resource.RLIMIT_CORE, 0, 0),
            ]
            # RLIMIT_NPROC counts every process of the uid (and is not enforced for root): under a dedicated
            # uid it is the program's own allowance; under the user's uid, what the user ran at start-up
            # plus the allowance.
            if self.uid is not None:
                rl.append((resource.RLIMIT_NPROC, lim["nproc"], lim["nproc"]))
            elif self.user_tasks is not None:
                n = self.user_tasks + lim["nproc"]
                rl.append((resource.RLIMIT_NPROC, n, n))
            for which, soft, hard in rl:
                resource.setrlimit(which, (soft, hard))
            if self.ipc and not iso.unshare_ipc():
                raise OSError("cannot enter a new IPC namespace")
            os.chdir(workdir)
            os.environ.clear()
            os.environ.update(meta["env"])
            os.environ["HOME"] = os.environ["TMPDIR"] = workdir
            if self.uid is not None:
                iso.drop_to(self.uid)
            iso.prctl(iso.PR_SET_NO_NEW_PRIVS, 1)
            if meta.get("fresh"):
                flags = ["-S", "-s", "-P"] if sys.version_info >= (3, 11) else ["-S", "-s"]
                os.execve(self.python, [self.python, *flags, self.runner, "--worker"], dict(os.environ))
            sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
            sys.stdout = sys.__stdout__ = io.TextIOWrapper(
                io.BufferedWriter(io.FileIO(1, "w", closefd=False)),
                encoding="utf-8",
                errors="backslashreplace",
            )
            sys.stderr = sys.__stderr__ = io.TextIOWrapper(
                io.BufferedWriter(io.FileIO(2, "w", closefd=False)),
                encoding="utf-8",
                errors="backslashreplace",
                line_buffering=True,
            )
            for name in SERVER_MODULES:
                sys.modules.pop(name, None)
        except BaseException as e:
            with contextlib.suppress(BaseException):
                os.write(2, f"sandbox: the program's process could not start: {e!r}\n".encode())
            os._exit(70)
        try:
            _worker.run()
        finally:
            os._exit(71)  # never return into the server's loop


def main() -> None:
    head = read_exact(0, 4)
    if head is None:
        return
    config = json.loads(read_exact(0, struct.unpack(">I", head)[0]) or b"{}")
    server = Server(config)
    prewarm(config.get("preload", ()))
    send_json(b"H", server.hello())
    spare = PrivateBuffer(1 << 20)
    while True:
        head = read_exact(0, 4)
        if head is None:
            break
        body = read_exact(0, struct.unpack(">I", head)[0])
        if body is None:
            break
        meta = json.loads(body)
        if meta.get("stop"):
            continue  # a stop that arrived after its program ended
        fds = []
        for key in ("worker_bytes", "judge_bytes"):
            if key in meta:
                fd = os.memfd_create(key, os.MFD_CLOEXEC) if hasattr(os, "memfd_create") else _temp_fd()
                splice_into(fd, int(meta[key]), spare)
                fds.append(fd)
            else:
                fds.append(None)
        result = server.run(meta, fds[0], fds[1])
        send_json(b"R", result)
    server.kill_judge()


def _temp_fd() -> int:
    import tempfile

    fd, path = tempfile.mkstemp()
    os.unlink(path)
    return fd


if __name__ == "__main__":
    main()
