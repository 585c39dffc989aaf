"""``llm=local``: a real llama.cpp server with a real model, started, used and stopped (the server's mechanics
with the tiny SmolLM2-135M-Instruct, which starts and answers fastest).

These tests need what ``make install`` installs (llama-server in .venv/bin and the local models); without them
they fail with the error that names the install command, as a user would see it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from textbooks.llm.client import LLMClient
from textbooks.llm.config import Backoff, LLMConfig, LocalServerConfig
from textbooks.llm.server import LocalServerError, llm_endpoint, local_server, model_path

TINY = "smollm2-135m-instruct-q4_1"  # the server's mechanics: the fastest model to start and answer

MODEL = "SmolLM2-135M-Instruct-Q4_1"
SRC = Path(__file__).resolve().parents[1] / "src"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead for our purposes
        return f.read().split(") ", 1)[1][0] != "Z"


def accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_dead(pid: int, seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server for the module: 2 slots of 1024 tokens."""
    log_dir = tmp_path_factory.mktemp("llama-server")
    with local_server(
        LocalServerConfig(model=TINY, parallel=2, ctx_size=2048, log_dir=str(log_dir)), alias=MODEL
    ) as s:
        yield s


def client_for(url: str, cache: Path, **kw) -> LLMClient:
    kw.setdefault("max_tokens", 12)
    kw.setdefault("backoff", Backoff(base=0.05, max=0.2))
    kw.setdefault("model", MODEL)
    return LLMClient(LLMConfig(base_url=url, cache=str(cache), progress=False, **kw))


# -- the client against the real server -----------------------------------------------------------------


@pytest.mark.slow
def test_answers_are_parsed_cached_and_a_rerun_asks_nothing(served, tmp_path):
    prompts = [f"Write a Python function named f{i} that returns {i}." for i in range(5)]
    cache = tmp_path / "c.sqlite"
    client = client_for(served.base_url, cache, concurrency=4)  # more requests in flight than slots
    before = served.metrics()
    requests = [client.request(p) for p in prompts] + [
        client.request("Name a color.", system="You answer with one word.")
    ]
    results = client.run(requests)
    after = served.metrics()
    assert all(r.ok and r.text.strip() for r in results), [r.error for r in results]
    assert all(r.finish_reason in ("stop", "length") for r in results)
    assert all(r.response_model == MODEL for r in results)
    assert all(r.prompt_tokens > 10 and 1 <= r.completion_tokens <= 12 for r in results)
    assert client.stats.succeeded == 6 and client.stats.http_requests == 6
    generated = after["llamacpp:tokens_predicted_total"] - before["llamacpp:tokens_predicted_total"]
    assert generated == sum(r.completion_tokens for r in results)  # the server's own count

    rerun = client_for(served.base_url, cache, concurrency=4)
    again = rerun.run([rerun.request(r.request.messages[-1]["content"]) for r in results[:5]])
    assert [r.text for r in again] == [r.text for r in results[:5]] and all(r.cached for r in again)
    assert rerun.stats.http_requests == 0
    assert served.metrics()["llamacpp:tokens_predicted_total"] == after["llamacpp:tokens_predicted_total"]
    assert served.metrics()["llamacpp:prompt_tokens_total"] == after["llamacpp:prompt_tokens_total"]


def test_an_answer_cut_at_max_tokens_is_visible_as_length(served, tmp_path):
    client = client_for(served.base_url, tmp_path / "c.sqlite", max_tokens=3)
    [res] = client.run([client.request("Count from one to twenty in words.")])
    assert res.ok and res.finish_reason == "length" and res.truncated and res.completion_tokens == 3
    assert client.stats.truncated == 1


def test_the_seed_is_honoured(served, tmp_path):
    texts = []
    for run in range(2):
        client = client_for(served.base_url, tmp_path / f"c{run}.sqlite", max_tokens=16, temperature=1.0)
        [res] = client.run([client.request("Tell me a very short story.", seed=1234)])
        assert res.ok
        texts.append(res.text)
    assert texts[0] == texts[1]


def test_a_prompt_longer_than_a_slot_fails_alone(served, tmp_path):
    client = client_for(served.base_url, tmp_path / "c.sqlite")
    results = client.run([client.request("Say hi."), client.request("word " * 1500)])
    assert results[0].ok
    assert not results[1].ok and results[1].error_kind == "too_long" and results[1].attempts == 1
    assert "context" in results[1].error


# -- life cycle ---------------------------------------------------------------------------------------


def test_the_server_is_stopped_on_exceptions_and_ctrl_c(tmp_path):
    cfg = LocalServerConfig(model=TINY, parallel=1, ctx_size=512, log_dir=str(tmp_path))
    for exc in (KeyboardInterrupt, ValueError):
        with pytest.raises(exc), local_server(cfg) as server:
            pid, port = server.proc.pid, server.port
            assert alive(pid) and accepts(port) and server.health() == "ok"
            raise exc()
        assert wait_dead(pid) and not accepts(port)
    assert "--port" in server.describe() and str(server.log_path) in server.describe()


def test_a_killed_run_leaves_no_server_behind(tmp_path):
    script = textwrap.dedent(
        f"""
        import time
        from textbooks.llm.config import LocalServerConfig
        from textbooks.llm.server import local_server
        with local_server(LocalServerConfig(model={TINY!r}, parallel=1, ctx_size=512, log_dir={str(tmp_path)!r})) as s:
            print(s.proc.pid, flush=True)
            time.sleep(600)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        server_pid = int(proc.stdout.readline())
        assert alive(server_pid)
        proc.send_signal(signal.SIGKILL)  # no finally runs: the server must go by itself
        proc.wait(10)
        assert wait_dead(server_pid)
    finally:
        proc.kill()


@pytest.mark.slow
def test_the_command_line_server_stops_on_ctrl_c(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    cmd = [
        sys.executable,
        "-m",
        "textbooks.llm.server",
        "--model",
        TINY,
        "--parallel",
        "1",
        "--log-dir",
        str(tmp_path),
    ]
    # Ctrl-C as at a terminal: a suite started in the background (`make test &`) ignores SIGINT, and a child
    # inherits that, so the child starts with the default disposition (Python then raises KeyboardInterrupt)
    reset = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, preexec_fn=reset)
    try:
        info = json.loads(proc.stdout.readline())
        assert info["model"] == TINY and alive(info["pid"])  # served under the model's name
        client = client_for(info["base_url"], tmp_path / "c.sqlite", max_tokens=2, model=TINY)
        assert client.run([client.request("Hi")])[0].ok
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert wait_dead(info["pid"])
    finally:
        proc.kill()


def test_llm_local_starts_a_server_for_the_block_only(repo_root, tmp_path, served):
    from textbooks.data.app import compose

    local = compose(["stage=textbooks", "llm=local_tiny", f"paths.cache={tmp_path}"]).llm
    given = compose(["stage=textbooks", "llm=local", f"llm.base_url={served.base_url}"]).llm
    vllm = compose(["stage=textbooks", "llm=vllm"]).llm
    assert local.base_url is None and local.concurrency == local.local.parallel == 4
    with llm_endpoint(local) as cfg:
        assert cfg.base_url.startswith("http://127.0.0.1:") and cfg.base_url != served.base_url
        assert cfg.model == TINY and cfg.cache == f"{tmp_path}/llm/responses.sqlite"
        client = LLMClient(cfg)
        assert client.run([client.request("Hi", max_tokens=2)])[0].ok
        [log] = (tmp_path / "llm").glob("llama-server-*.log")
        port = int(log.stem.rsplit("-", 1)[1])
        assert accepts(port)
    assert not accepts(port)
    with llm_endpoint(given) as cfg:  # a running server: nothing is started
        assert cfg.base_url == served.base_url
    with llm_endpoint(vllm) as cfg:
        assert cfg.base_url.endswith(":8000/v1") and cfg.local is None
    with llm_endpoint(None) as cfg:
        assert cfg is None


def test_without_the_hook_llm_local_is_one_clear_error(repo_root):
    from textbooks.data.app import compose
    from textbooks.errors import ConfigError

    local = compose(["stage=textbooks", "llm=local"]).llm
    with pytest.raises(ConfigError, match="llm_endpoint"):
        LLMClient(LLMConfig.from_dict(local))


# -- bad input ----------------------------------------------------------------------------------------


def test_a_crash_mid_stage_is_one_error_naming_the_command(tmp_path):
    llm = {
        "base_url": None,
        "model": MODEL,
        "cache": str(tmp_path / "c.sqlite"),
        "max_tokens": 4,
        "concurrency": 1,
        "max_attempts": 2,
        "unreachable_after": 2,
        "backoff": {"base": 0.05, "max": 0.1},
        "progress": False,
        "local": {"model": TINY, "parallel": 1, "ctx_size": 512, "log_dir": str(tmp_path)},
    }
    with pytest.raises(LocalServerError) as err, llm_endpoint(llm) as cfg:
        client = LLMClient(cfg)
        assert all(r.ok for r in client.run([client.request(f"Say {w}.") for w in ("yes", "no")]))
        [log] = tmp_path.glob("llama-server-*.log")
        [pid] = server_pids(log)
        os.kill(pid, signal.SIGKILL)
        client.run([client.request(f"Say {i}.") for i in range(50)])
    message = str(err.value)
    assert "exited with code -9" in message and "llama-server" in message and "--model" in message
    assert str(log) in message and "rerun" in message
    with LLMClient(LLMConfig.from_dict({**llm, "base_url": "http://127.0.0.1:9/v1"})) as c:
        assert len(c.cache) == 2  # the answers received before the crash are kept


def server_pids(log: Path) -> list[int]:
    """The running llama-server processes that listen on the port named in ``log``'s file name."""
    flag = f"--port\0{log.stem.rsplit('-', 1)[1]}\0"
    pids = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{p}/cmdline") as f:
                if "llama-server" in (cmd := f.read()) and flag in cmd and alive(int(p)):
                    pids.append(int(p))
        except OSError:
            continue
    return pids


def test_a_missing_model_names_the_install_command(tmp_path):
    with pytest.raises(LocalServerError) as err:
        model_path(LocalServerConfig(models_dir=str(tmp_path)))
    message = str(err.value)
    assert "qwen2.5-coder-0.5b-instruct-q4_k_m is not installed" in message and str(tmp_path) in message
    assert "make install" in message and "python -m textbooks.llm.models install" in message
    assert model_path(LocalServerConfig()).stat().st_size > 400_000_000  # the default one is installed
    with pytest.raises(LocalServerError, match="no such GGUF file"):
        model_path(LocalServerConfig(model=TINY, model_path="/nonexistent/model.gguf"))


def test_a_missing_server_names_the_make_target(tmp_path):
    cfg = LocalServerConfig(model=TINY, server="llama-server-not-installed", log_dir=str(tmp_path))
    with pytest.raises(LocalServerError, match="make llama-server"), local_server(cfg):
        pass


def test_a_server_that_dies_at_start_names_its_command_and_log(tmp_path):
    cfg = LocalServerConfig(model=TINY, log_dir=str(tmp_path), extra_args=["--no-such-flag"])
    error = r"exited with code \d+ before it answered"
    with pytest.raises(LocalServerError, match=error) as err, local_server(cfg):
        pass
    assert "--no-such-flag" in str(err.value) and "llama-server-" in str(err.value)


def test_a_server_that_does_not_answer_in_time_is_stopped(tmp_path):
    cfg = LocalServerConfig(model=TINY, log_dir=str(tmp_path), startup_timeout=0.001)
    error = r"did not answer .* within llm\.local\.startup_timeout"
    with pytest.raises(LocalServerError, match=error), local_server(cfg):
        pass
    [log] = tmp_path.glob("llama-server-*.log")
    assert server_pids(log) == []  # nothing is left running
