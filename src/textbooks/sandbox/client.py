"""The harness's end of one fork server (``_server.py``): start it, frame requests and answers, kill it.

The server is a clean interpreter (``python -S -s -P``: standard library only) started in its own session,
at ``/``, with ``SANDBOX_ENV`` as its whole environment. Requests and answers are framed as ``_server.py``
describes; a server that fails or hangs is killed with everything left under its dedicated uids.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textbooks.errors import TextbooksError

SERVER_SCRIPT = Path(__file__).with_name("server") / "_server.py"
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
PIPE_BYTES = 1 << 20  # the server's answer pipe, so that a busy harness rarely holds a program up


class SandboxError(TextbooksError):
    """The sandbox itself could not start or broke down (not a program failing)."""


class ServerProcess:
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
