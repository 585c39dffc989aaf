"""The OpenAI-compatible client against a real HTTP server on 127.0.0.1 that injects faults."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from openai_server import CHAT_ONLY_ODD, ODD_REPLIES, OpenAIServer, closed_port

from textbooks.errors import ConfigError
from textbooks.llm.client import LLMClient, run_requests
from textbooks.llm.config import Backoff, LLMConfig, LLMError, LLMUnreachableError
from textbooks.llm.replies import (
    MalformedResponse,
    parse_completion,
    parse_retry_after,
    parse_text_completion,
)
from textbooks.llm.requests import ChatRequest

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


def make_config(url: str, cache: Path, **kw) -> LLMConfig:
    kw.setdefault("backoff", Backoff(base=0.01, max=0.05))
    return LLMConfig(base_url=url, model="fake-model", cache=str(cache), progress=False, **kw)


def cached_keys(cache: Path) -> set[str]:
    with sqlite3.connect(cache) as conn:
        return {r[0] for r in conn.execute("SELECT key FROM responses")}


@pytest.fixture
def server():
    with OpenAIServer() as s:
        yield s


def test_every_fault_is_retried_until_it_succeeds(server, tmp_path):
    first_attempt_faults = {
        "p0": "429",
        "p1": "429:0.05",
        "p2": "500",
        "p3": "502",
        "p4": "503",
        "p5": "drop",
        "p6": "malformed",
        "p7": "nochoices",
        "p8": "slow:3",
    }
    server.fault_fn = lambda prompt, attempt: first_attempt_faults.get(prompt) if attempt == 1 else None
    client = LLMClient(make_config(server.url, tmp_path / "c.sqlite", timeout=0.5, concurrency=4))
    prompts = [f"p{i}" for i in range(12)]
    results = client.run([client.request(p) for p in prompts])
    assert [r.text for r in results] == [f"echo: {p}" for p in prompts]
    assert [r.attempts for r in results] == [2] * 9 + [1] * 3
    assert client.stats.errors == {
        "rate_limit": 2,
        "server": 3,
        "connection": 1,
        "malformed": 2,
        "timeout": 1,
    }
    assert client.stats.retries == 9 and client.stats.failed == 0 and client.stats.succeeded == 12
    for outcome in ("429", "500", "502", "503", "drop", "malformed", "nochoices"):
        assert server.outcomes[outcome] >= 1, outcome
    assert results[0].prompt_tokens == 1 and results[0].completion_tokens == 2  # usage is kept


def test_retry_after_is_obeyed_and_backoff_grows(server, tmp_path):
    server.fault_fn = lambda prompt, attempt: (
        {"wait": "429:0.6", "backoff": "503"}.get(prompt) if attempt <= 2 else None
    )
    cfg = make_config(server.url, tmp_path / "c.sqlite", backoff=Backoff(base=0.1, max=5.0, jitter=0.0))
    client = LLMClient(cfg)
    results = client.run([client.request("wait"), client.request("backoff")])
    assert all(r.ok and r.attempts == 3 for r in results)
    t = [e.time for e in server.events("wait")]
    assert t[1] - t[0] >= 0.55 and t[2] - t[1] >= 0.55  # Retry-After: 0.6, not the 0.1 s backoff
    t = [e.time for e in server.events("backoff")]
    assert 0.08 <= t[1] - t[0] < 0.5 and 0.18 <= t[2] - t[1] < 0.6  # 0.1 s, then 0.2 s


def test_parse_retry_after():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "0.25"}) == 0.25
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= parse_retry_after({"retry-after": date}) <= 31
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_bounded_attempts_report_a_failure_and_the_run_goes_on(server, tmp_path):
    server.fault_fn = lambda prompt, attempt: {"bad": "503", "garbled": "malformed"}.get(prompt)
    cache = tmp_path / "c.sqlite"
    client = LLMClient(make_config(server.url, cache, max_attempts=3))
    results = client.run([client.request(p) for p in ("a", "bad", "b", "garbled", "c")])
    assert [r.ok for r in results] == [True, False, True, False, True]
    bad, garbled = results[1], results[3]
    assert (bad.error_kind, bad.attempts) == ("server", 3) and "503" in bad.error
    assert (garbled.error_kind, garbled.attempts) == ("malformed", 3)
    assert server.attempts["bad"] == 3 and server.attempts["garbled"] == 3
    assert client.stats.failures == {"server": 1, "malformed": 1}
    with sqlite3.connect(cache) as conn:
        assert sorted(r[0] for r in conn.execute("SELECT kind FROM failures")) == ["malformed", "server"]
    # failures are not cached: a rerun asks only for them again
    server.reset_counts()
    client2 = LLMClient(make_config(server.url, cache, max_attempts=1))
    again = client2.run([client2.request(p) for p in ("a", "bad", "b", "garbled", "c")])
    assert server.received == 2 and client2.stats.cache_hits == 3
    assert [r.ok for r in again] == [True, False, True, False, True]


def test_a_second_run_makes_no_requests(server, tmp_path):
    cache = tmp_path / "c.sqlite"
    prompts = [f"question {i}" for i in range(25)]
    first, stats = run_requests(make_config(server.url, cache), [_req(p) for p in prompts])
    assert server.received == 25 and stats.succeeded == 25 and all(r.ok for r in first)
    second, stats2 = run_requests(make_config(server.url, cache), [_req(p) for p in prompts])
    assert server.received == 25  # nothing new was asked
    assert stats2.cache_hits == 25 and stats2.http_requests == 0
    assert [r.text for r in second] == [r.text for r in first] and all(r.cached for r in second)


def _req(prompt: str, **params) -> ChatRequest:
    return ChatRequest([{"role": "user", "content": prompt}], "fake-model", {"temperature": 0.0, **params})


def test_cache_key_is_the_full_request_content():
    base = _req("x", seed=1)
    assert base.key == _req("x", seed=1).key
    assert base.key == ChatRequest(base.messages, "fake-model", {"seed": 1, "temperature": 0.0}).key
    others = [
        _req("y", seed=1),
        _req("x", seed=2),
        _req("x", seed=1, max_tokens=5),
        ChatRequest(base.messages, "other-model", base.params),
        ChatRequest([{"role": "system", "content": "s"}, *base.messages], "fake-model", base.params),
    ]
    assert len({base.key, *(o.key for o in others)}) == 6


def test_duplicates_in_a_batch_are_sent_once(server, tmp_path):
    client = LLMClient(make_config(server.url, tmp_path / "c.sqlite"))
    results = client.run([client.request(p) for p in ("a", "b", "a", "a")])
    assert [r.text for r in results] == ["echo: a", "echo: b", "echo: a", "echo: a"]
    assert server.received == 2


def test_concurrency_is_capped(tmp_path):
    with OpenAIServer(delay=0.1) as server:
        client = LLMClient(make_config(server.url, tmp_path / "c.sqlite", concurrency=3))
        client.run([client.request(f"q{i}") for i in range(12)])
    assert server.max_in_flight == 3


def test_cancelled_run_keeps_what_it_received(tmp_path):
    cache = tmp_path / "c.sqlite"
    prompts = [f"item {i}" for i in range(40)]
    with OpenAIServer(delay=0.03) as server:
        client = LLMClient(make_config(server.url, cache, concurrency=2))

        async def interrupted() -> int:
            task = asyncio.create_task(client.complete_all([client.request(p) for p in prompts]))
            while server.answered < 10:
                await asyncio.sleep(0.01)
            answered = server.answered
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return answered

        answered = asyncio.run(interrupted())
        kept = cached_keys(cache)
        assert answered - 2 <= len(kept) < 40  # at most the 2 answers in flight were not yet read
        server.reset_counts()
        client2 = LLMClient(make_config(server.url, cache, concurrency=2))
        results = client2.run([client2.request(p) for p in prompts])
    assert all(r.ok for r in results)
    assert server.received == 40 - len(kept) and client2.stats.cache_hits == len(kept)


CLIENT_SCRIPT = textwrap.dedent(
    """
    import sys
    from textbooks.llm.config import Backoff, LLMConfig
    from textbooks.llm.client import LLMClient
    url, cache = sys.argv[1], sys.argv[2]
    cfg = LLMConfig(base_url=url, model="fake-model", cache=cache, concurrency=2, progress=False,
                    backoff=Backoff(base=0.01))
    client = LLMClient(cfg)
    results = client.run([client.request(f"line {i}") for i in range(60)])
    print(sum(r.ok for r in results))
    """
)


@pytest.mark.slow
def test_killed_process_loses_nothing_it_received(tmp_path):
    """SIGKILL a client process midway: every answer it had received is in the cache; the rerun asks
    only for the rest."""
    cache = tmp_path / "c.sqlite"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    with OpenAIServer(delay=0.04) as server:
        proc = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, server.url, str(cache)], env=env)
        try:
            deadline = time.monotonic() + 60
            while server.answered < 15 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.01)
            answered_before_kill = server.answered
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == -signal.SIGKILL, "the client finished before it could be killed"
        kept = cached_keys(cache)
        # at most the two answers in flight at the kill can be missing
        assert answered_before_kill - 2 <= len(kept) < 60
        server.reset_counts()
        done = subprocess.run(
            [sys.executable, "-c", CLIENT_SCRIPT, server.url, str(cache)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "60"
        assert server.received == 60 - len(kept)
    assert len(cached_keys(cache)) == 60


def test_unreachable_endpoint_gives_one_clear_error(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    client = LLMClient(make_config(url, tmp_path / "c.sqlite", max_attempts=2, unreachable_after=4))
    started = time.monotonic()
    with pytest.raises(LLMUnreachableError) as err:
        client.run([client.request(f"x{i}") for i in range(200)])
    message = str(err.value)
    assert url in message and "llm.base_url" in message and "vllm serve" in message
    # it stopped early instead of trying all 200: at most the `unreachable_after` failed requests and
    # the `concurrency - 1` others in flight when the last of them failed, each with all its attempts
    cfg = client.config
    assert (
        client.stats.http_requests <= (cfg.unreachable_after + cfg.concurrency - 1) * cfg.max_attempts < 200
    )
    assert time.monotonic() - started < 10


def test_every_request_failing_to_connect_fails_even_below_the_threshold(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    client = LLMClient(make_config(url, tmp_path / "c.sqlite", max_attempts=2, unreachable_after=100))
    with pytest.raises(LLMUnreachableError, match="3 requests failed to connect"):
        client.run([client.request(f"x{i}") for i in range(3)])


def test_rejected_api_key_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("TEXTBOOKS_TEST_KEY", raising=False)
    with OpenAIServer(api_key="s3cret") as server:
        cfg = make_config(server.url, tmp_path / "c.sqlite", api_key_env="TEXTBOOKS_TEST_KEY", concurrency=2)
        client = LLMClient(cfg)
        with pytest.raises(LLMError, match="TEXTBOOKS_TEST_KEY") as err:
            client.run([client.request(f"x{i}") for i in range(50)])
        assert server.url in str(err.value)
        assert server.received <= 2  # stopped at once, no retries
        monkeypatch.setenv("TEXTBOOKS_TEST_KEY", "s3cret")
        assert LLMClient(cfg).run([client.request("x0")])[0].text == "echo: x0"


def test_wrong_url_or_model_is_a_clear_error(server, tmp_path):
    url = server.url.replace("/v1", "/api")  # the fake server answers 404 off /v1/chat/completions
    client = LLMClient(make_config(url, tmp_path / "c.sqlite"))
    with pytest.raises(LLMError, match=r"404.*llm\.model.*llm\.base_url"):
        client.run([client.request("x")])
    assert server.received == 0  # (404s for unknown paths are not counted as chat requests)


def test_run_works_inside_a_running_event_loop(server, tmp_path):
    client = LLMClient(make_config(server.url, tmp_path / "c.sqlite"))

    async def notebook_cell() -> list[str]:
        return [r.text for r in client.run([client.request("in a loop")])]

    assert asyncio.run(notebook_cell()) == ["echo: in a loop"]


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown keys \[.modle.\]"):
        LLMConfig.from_dict({"modle": "x"})
    with pytest.raises(ConfigError, match=r"llm\.backoff"):
        LLMConfig.from_dict({"backoff": {"bse": 1}})
    with pytest.raises(ConfigError, match="base_url"):
        LLMConfig.from_dict({"base_url": "localhost:8000"})
    with pytest.raises(ConfigError, match="concurrency"):
        LLMConfig.from_dict({"concurrency": 0})


def test_hydra_presets_compose(repo_root, tmp_path):
    from textbooks.data.app import compose

    cfg = compose(["stage=annotate", f"paths.cache={tmp_path}"])
    openai_cfg = LLMConfig.from_dict(cfg.llm)
    vllm = LLMConfig.from_dict(compose(["stage=textbooks", "llm=vllm"]).llm)
    ollama = LLMConfig.from_dict(compose(["stage=exercises", "llm=ollama"]).llm)
    assert openai_cfg.base_url == "https://api.openai.com/v1" and openai_cfg.api_key_env == "OPENAI_API_KEY"
    assert openai_cfg.cache == f"{tmp_path}/llm/responses.sqlite"
    assert vllm.base_url.endswith(":8000/v1") and vllm.backoff.base == openai_cfg.backoff.base
    assert ollama.base_url.endswith(":11434/v1")
    assert json.loads(json.dumps(openai_cfg.params())) == {"temperature": 0.0, "max_tokens": 1024}


ODD_FAULTS = [f"odd:{name}" for name in ODD_REPLIES] + ["malformed", "nochoices", "bad_gzip"]


def test_every_unparseable_reply_is_retried_as_malformed(server, tmp_path):
    """Whatever field of a 200 reply is odd, the client retries it as a malformed reply and then
    takes the good answer; nothing raises out of the client."""
    first = {f"q{i}": fault for i, fault in enumerate(ODD_FAULTS)}
    server.fault_fn = lambda prompt, attempt: first.get(prompt) if attempt == 1 else None
    client = LLMClient(make_config(server.url, tmp_path / "c.sqlite", concurrency=4))
    results = client.run([client.request(p) for p in first])
    assert [r.text for r in results] == [f"echo: {p}" for p in first]
    assert all(r.attempts == 2 for r in results)
    assert client.stats.errors == {"malformed": len(ODD_FAULTS)}
    assert sum(server.outcomes[f] for f in ODD_FAULTS) == len(ODD_FAULTS)


def test_a_reply_that_stays_unparseable_is_a_counted_failure(server, tmp_path):
    """The issue's case: ``"usage": {"prompt_tokens": "many"}`` on every attempt. Each such request is
    given up after max_attempts as ``malformed``, recorded in the cache's failures table, and the
    rest of the run goes on."""
    odd = {f"bad{i}": fault for i, fault in enumerate(ODD_FAULTS)}
    server.fault_fn = lambda prompt, attempt: odd.get(prompt)
    cache = tmp_path / "c.sqlite"
    client = LLMClient(make_config(server.url, cache, max_attempts=2, concurrency=4))
    prompts = ["good0", *odd, "good1"]
    results = client.run([client.request(p) for p in prompts])
    assert results[0].ok and results[-1].ok
    bad = results[1:-1]
    assert all(not r.ok and r.error_kind == "malformed" and r.attempts == 2 for r in bad)
    assert "usage.prompt_tokens" in bad[0].error and "'many'" in bad[0].error
    assert client.stats.failures == {"malformed": len(ODD_FAULTS)} and client.stats.succeeded == 2
    assert all(server.attempts[p] == 2 for p in odd)
    with sqlite3.connect(cache) as conn:
        assert conn.execute("SELECT COUNT(*) FROM failures WHERE kind = 'malformed'").fetchone()[0] == len(
            ODD_FAULTS
        )
    assert cached_keys(cache) == {results[0].request.key, results[-1].request.key}


@pytest.mark.parametrize("body", [b"", b"[]", b"null", b'"x"', b"{}", b"[" * 50_000, b"\xff"])
def test_parse_completion_raises_only_malformed(body):
    with pytest.raises(MalformedResponse):
        parse_completion(body)


def test_integral_float_token_counts_are_accepted():
    body = json.dumps(
        {"choices": [{"message": {"content": "hi"}, "finish_reason": None}], "usage": {"prompt_tokens": 3.0}}
    )
    _, parsed = parse_completion(body)
    assert (parsed.text, parsed.prompt_tokens, parsed.completion_tokens, parsed.finish_reason) == (
        "hi",
        3,
        0,
        None,
    )


def test_an_endpoint_that_stops_answering_stops_the_run(server, tmp_path):
    """A server that answered and then went away (a crash) is one LLMUnreachableError after
    ``unreachable_after`` requests in a row failed to connect, not thousands of slow failures."""
    answered = {"a0", "a1", "a2"}
    server.fault_fn = lambda prompt, attempt: None if prompt in answered else "drop"
    cfg = make_config(server.url, tmp_path / "c.sqlite", max_attempts=2, unreachable_after=4, concurrency=1)
    client = LLMClient(cfg)
    with pytest.raises(LLMUnreachableError, match="stopped answering: the last 4 requests") as err:
        client.run([client.request(p) for p in ["a0", "a1", "a2", *(f"x{i}" for i in range(100))]])
    assert server.url in str(err.value) and "c.sqlite" in str(err.value)
    assert client.stats.succeeded == 3 and server.received == 3 + 4 * 2
    assert len(cached_keys(tmp_path / "c.sqlite")) == 3


def test_a_prompt_too_long_for_the_context_fails_alone_with_its_reason(server, tmp_path):
    server.fault_fn = lambda prompt, attempt: "400" if prompt == "long" else None
    client = LLMClient(make_config(server.url, tmp_path / "c.sqlite"))
    results = client.run([client.request(p) for p in ("a", "long", "b")])
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error_kind == "too_long" and results[1].attempts == 1  # not retried
    assert "exceeds the available context size" in results[1].error and "ctx_size" in results[1].error


def test_truncated_answers_are_visible(tmp_path):
    def cut(messages, body):
        return "partial" if "cut" in messages[-1]["content"] else "whole"

    def reason(messages, body):
        return "length" if messages[-1]["content"] == "cut" else "stop"

    with OpenAIServer(cut, finish_reason=reason) as server:
        client = LLMClient(make_config(server.url, tmp_path / "c.sqlite"))
        results = client.run([client.request("cut"), client.request("full")])
        assert [r.truncated for r in results] == [True, False] and client.stats.truncated == 1
        again = LLMClient(make_config(server.url, tmp_path / "c.sqlite"))
        cached = again.run([again.request("cut"), again.request("full")])
    assert [r.finish_reason for r in cached] == ["length", "stop"] and again.stats.truncated == 1


def test_completions_api_requests_are_answered_cached_and_keyed_apart(server, tmp_path):
    cache = tmp_path / "c.sqlite"
    client = LLMClient(make_config(server.url, cache))
    plain = client.completion_request("def add(a, b):\n", stop=["\ndef"])
    chat = client.request("def add(a, b):\n")
    results = client.run([plain, chat])
    assert [r.text for r in results] == ["echo: def add(a, b):\n"] * 2
    assert plain.key != chat.key and plain.api == "completions" and chat.api == "chat"
    assert server.received == 2
    again = LLMClient(make_config(server.url, cache))
    assert again.run([again.completion_request("def add(a, b):\n", stop=["\ndef"])])[0].cached
    assert server.received == 2


def test_every_unparseable_text_completion_is_malformed(server, tmp_path):
    faults = [f"odd:{n}" for n in ODD_REPLIES if n not in CHAT_ONLY_ODD] + ["malformed", "nochoices"]
    first = {f"q{i}": fault for i, fault in enumerate(faults)}
    server.fault_fn = lambda prompt, attempt: first.get(prompt) if attempt == 1 else None
    client = LLMClient(make_config(server.url, tmp_path / "c.sqlite", concurrency=4))
    results = client.run([client.completion_request(p) for p in first])
    assert [r.text for r in results] == [f"echo: {p}" for p in first]
    assert client.stats.errors == {"malformed": len(faults)}


def test_a_chat_reply_to_a_completions_request_is_malformed():
    chat_body = json.dumps({"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}]})
    with pytest.raises(MalformedResponse, match="text is not a string"):
        parse_text_completion(chat_body)


def test_sharded_cache_tasks_on_several_machines_share_answers_after_the_merge(tmp_path):
    """Each process writes a shard of its own (one writer per file, no WAL), reads the main file and the
    shards that existed when it opened; merging folds the shards in and removes them."""
    import subprocess
    import sys

    from textbooks.llm.cache import ResponseCache, merge_shards, shard_dir
    from textbooks.llm.replies import Parsed

    main = tmp_path / "responses.sqlite"
    code = (
        "import sys; from textbooks.llm.cache import ResponseCache; from textbooks.llm.replies import Parsed; "
        f"c = ResponseCache({str(main)!r}, sharded=True); k = sys.argv[1]; "
        "seen = sorted(c.get_many(['a', 'b', 'c'])); "
        "c.put(k, 'm', {'k': k}, {'id': k}, Parsed('answer ' + k, 'stop', 'm', 1, 2)); c.close(); print(','.join(seen))"
    )
    seen = [
        subprocess.run(
            [sys.executable, "-c", code, k], capture_output=True, text=True, check=True
        ).stdout.strip()
        for k in "ab"
    ]
    assert seen == ["", "a"]  # the second process read the first one's shard
    assert len(list(shard_dir(main).glob("*.sqlite"))) == 2 and not main.exists()
    assert merge_shards(main) == 2 and not list(shard_dir(main).glob("*.sqlite"))
    local = ResponseCache(main)
    assert (
        sorted(local.get_many(["a", "b", "c"])) == ["a", "b"] and local.get_many(["b"])["b"][1] == "answer b"
    )
    local.close()
    later = ResponseCache(main, sharded=True)  # a task of a later stage reads the merged file
    later.put("c", "m", {}, {}, Parsed("answer c", "stop", "m", 1, 1))
    assert sorted(later.get_many(["a", "b", "c"])) == ["a", "b", "c"]
    later.close()


def _open_cache_at(path: str, start: float) -> None:
    from textbooks.llm.cache import ResponseCache

    time.sleep(max(0.0, start - time.time()))  # every process opens the new file at the same moment
    ResponseCache(path)


def test_processes_that_open_a_new_cache_at_once_all_succeed(tmp_path):
    """The local executor starts a stage's tasks within milliseconds of each other; each opens the one cache
    file of the machine, which the first of them creates and switches to WAL."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    for attempt in range(20):
        path, start = str(tmp_path / f"cache-{attempt}.sqlite"), time.time() + 0.3
        procs = [ctx.Process(target=_open_cache_at, args=(path, start)) for _ in range(16)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * 16, f"attempt {attempt}: {[p.exitcode for p in procs]}"
