"""The README's "Adding an LLM backend" recipe, done: tests/example_transport.py speaks llama.cpp's own API
(not OpenAI's) to a real llama-server; registered in ``TRANSPORTS``, the client's cache, retries and
unreachable-endpoint rule work through it unchanged."""

from __future__ import annotations

import socket

import pytest

from textbooks.errors import ConfigError
from textbooks.llm import transport
from textbooks.llm.client import LLMClient
from textbooks.llm.config import Backoff, LLMConfig, LLMUnreachableError, LocalServerConfig
from textbooks.llm.server import local_server

TINY = "smollm2-135m-instruct-q4_1"  # the server's mechanics: the fastest model to start and answer

MODEL = "example-native"


@pytest.fixture
def native(monkeypatch):
    monkeypatch.setitem(transport.TRANSPORTS, "llamacpp_native", "example_transport:LlamaCppNative")


def config(url: str, cache, **kw) -> LLMConfig:
    kw.setdefault("backoff", Backoff(base=0.05, max=0.2))
    return LLMConfig(
        base_url=url,
        model=MODEL,
        transport="llamacpp_native",
        cache=str(cache),
        progress=False,
        max_tokens=8,
        **kw,
    )


@pytest.mark.slow
def test_a_transport_of_another_api_answers_through_the_client(native, tmp_path) -> None:
    with local_server(
        LocalServerConfig(model=TINY, parallel=2, ctx_size=2048, log_dir=str(tmp_path)), alias=MODEL
    ) as s:
        client = LLMClient(config(s.base_url, tmp_path / "c.sqlite"))
        requests = [client.completion_request("def add(a, b):\n    return"), client.request("Name a color.")]
        first = client.run(requests)
        assert all(r.ok and r.text for r in first), [r.error for r in first]
        assert client.stats.succeeded == 2 and client.stats.completion_tokens > 0
        again = LLMClient(config(s.base_url, tmp_path / "c.sqlite"))
        assert [r.text for r in again.run(requests)] == [r.text for r in first]
        assert again.stats.cache_hits == 2 and again.stats.http_requests == 0  # the cache is the client's


def test_an_unreachable_endpoint_is_one_error_through_any_transport(native, tmp_path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = LLMClient(config(f"http://127.0.0.1:{port}/v1", tmp_path / "c.sqlite", max_attempts=2))
    with pytest.raises(LLMUnreachableError, match="cannot reach"):
        client.run([client.completion_request(f"x{i}") for i in range(3)])


def test_an_unknown_transport_is_refused_by_name(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"llm.transport=carrier_pigeon: unknown; transports are openai"):
        LLMClient(
            LLMConfig(base_url="http://127.0.0.1:1/v1", transport="carrier_pigeon", cache=str(tmp_path / "c"))
        )
