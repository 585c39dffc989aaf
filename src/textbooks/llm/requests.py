"""What is asked of an LLM and what came back: requests keyed by their content, results, and the counts of a
client's life (cache hits, HTTP attempts, retries, failures by kind, tokens).

A request's key hashes everything that determines the answer (model, messages or prompt, sampling parameters,
seed) and nothing else: not the URL, so the same model served elsewhere shares the cache.
"""

from __future__ import annotations

import collections
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ChatRequest:
    """One completion to ask for; ``key`` is the cache key (hash of everything that is sent).

    A chat-completions request (``messages``; instruct models), or with ``prompt`` set a completions-API
    request (``POST /completions``: the text is continued as is; base models), whose ``messages`` are
    empty."""

    messages: list[dict[str, str]]
    model: str
    params: dict[str, Any] = field(default_factory=dict)
    prompt: str | None = None  # set: a completions-API request
    key: str = field(init=False)

    def __post_init__(self) -> None:
        self.key = request_key(self.model, self.messages, self.params, self.prompt)

    @property
    def api(self) -> str:
        return "chat" if self.prompt is None else "completions"

    def to_dict(self) -> dict[str, Any]:
        d = {"model": self.model, "messages": self.messages, "params": self.params}
        return d if self.prompt is None else {**d, "prompt": self.prompt}


def request_key(
    model: str, messages: Sequence[Mapping[str, str]], params: Mapping[str, Any], prompt: str | None = None
) -> str:
    content: dict[str, Any] = {"model": model, "messages": list(messages), "params": dict(params)}
    if prompt is not None:  # (chat keys stay what they were before completions existed)
        content["prompt"] = prompt
    blob = json.dumps(content, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def fill_template(template: str, **values: str) -> str:
    """Replace each ``{name}`` in ``template`` by its value; other braces (code in a prompt) stay as they are."""
    for name, value in values.items():
        template = template.replace("{" + name + "}", value)
    return template


def prompt_hash(*parts: str) -> str:
    """A short hash of prompt templates, recorded next to the answers they produced."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


@dataclass
class ChatResult:
    """The answer to a ``ChatRequest``: ``text`` when it succeeded, ``error`` when it was given up."""

    request: ChatRequest
    text: str | None
    cached: bool = False
    attempts: int = 0
    error: str | None = None
    error_kind: str | None = (
        None  # timeout | connection | rate_limit | server | malformed | rejected | too_long
    )
    finish_reason: str | None = None  # the server's: "stop", or "length" for an answer cut at max_tokens
    response_model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.text is not None

    @property
    def truncated(self) -> bool:
        """The answer was cut at ``max_tokens`` (``finish_reason == "length"``): usable text, but partial."""
        return self.finish_reason == "length"


@dataclass
class LLMStats:
    """Counts over a client's life: cache hits and misses, HTTP attempts, retries, failures, tokens."""

    requests: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    http_requests: int = 0  # attempts sent over the network
    succeeded: int = 0  # misses answered by the endpoint (now cached)
    failed: int = 0  # misses given up after max_attempts (or not retryable)
    retries: int = 0
    truncated: int = 0  # answers (new or cached) cut at max_tokens (finish_reason "length")
    errors: collections.Counter = field(default_factory=collections.Counter)  # per attempt, by kind
    failures: collections.Counter = field(default_factory=collections.Counter)  # per request, by kind
    prompt_tokens: int = 0  # of new responses
    completion_tokens: int = 0
    cached_completion_tokens: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["errors"] = dict(self.errors)
        d["failures"] = dict(self.failures)
        d["seconds"] = round(self.seconds, 3)
        return d
