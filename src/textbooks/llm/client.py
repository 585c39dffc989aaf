"""An async client for LLM endpoints, with a SQLite response cache.

Chat completions (``client.request``: instruct models) and, for base models, the completions API
(``client.completion_request``: the prompt is continued as is) go through the same cache, retries and
error rules.

The same code talks to OpenAI, vLLM (``vllm serve``), llama.cpp (``llama-server``) and Ollama: only
``base_url``, ``model`` and the API key's environment variable differ (``conf/llm/*.yaml``). The wire format is
a ``Transport`` (``textbooks.llm.transport``; the OpenAI-compatible API by default); everything below is the
client's, whatever the transport.

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
  ``failures`` table; other requests carry on. Transports do not retry on their own, so every attempt
  is visible here.
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
import concurrent.futures
import logging
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from textbooks.errors import ConfigError
from textbooks.llm.cache import ResponseCache
from textbooks.llm.config import LLMConfig, LLMError, LLMUnreachableError
from textbooks.llm.requests import ChatRequest, ChatResult, LLMStats
from textbooks.llm.transport import Failure, Transport, transport_for

log = logging.getLogger(__name__)


class LLMClient:
    """Concurrent, retrying, caching chat completions against ``config.base_url``."""

    def __init__(self, config: LLMConfig, *, cache: ResponseCache | None = None, seed: int = 0) -> None:
        config.validate()
        if config.base_url is None:
            raise ConfigError(
                "llm.base_url is null: the local server of llm=local is started around a stage by "
                "textbooks.llm.server.llm_endpoint(cfg.llm) (textbooks-data does it); from your own "
                "code, use `with llm_endpoint(cfg) as cfg:`, or set llm.base_url=http://HOST:PORT/v1"
            )
        self.config = config
        self._transport: Transport = transport_for(config)  # the API it speaks (an unknown one stops here)
        self.cache = cache if cache is not None else ResponseCache(config.cache, sharded=config.cache_shards)
        self.stats = LLMStats()
        self._rng = random.Random(seed)  # jitter only
        self._open = False
        self._depth = 0  # nesting of `async with client`
        self._semaphore: asyncio.Semaphore | None = None
        self._planned = 0  # misses sent to the endpoint so far (for the "every request failed" rule)
        self._last_connection_error = ""
        self._connection_streak = 0  # requests given up for connection failures since the last success

    # -- requests ----------------------------------------------------------------------------------------
    def request(
        self,
        prompt: str,
        *,
        system: str | None = None,
        history: list[tuple[str, str]] | None = None,
        **params: Any,
    ) -> ChatRequest:
        """A request for ``prompt`` with the config's model and sampling, ``params`` overriding them
        (``None`` removes one); ``history``: earlier (user, assistant) turns of the conversation, e.g. an
        example request and its answer (a few-shot example a small model follows without copying it)."""
        turns = [
            {"role": role, "content": text}
            for user, assistant in history or []
            for role, text in (("user", user), ("assistant", assistant))
        ]
        messages = (
            ([{"role": "system", "content": system}] if system else [])
            + turns
            + [{"role": "user", "content": prompt}]
        )
        return ChatRequest(messages, self.config.model, self.config.params(**params))

    def completion_request(self, prompt: str, **params: Any) -> ChatRequest:
        """A completions-API request (base models): ``prompt`` continued as is, with the config's model
        and sampling, ``params`` overriding them (e.g. ``stop=[...]``; ``None`` removes one)."""
        return ChatRequest([], self.config.model, self.config.params(**params), prompt=prompt)

    # -- async API ---------------------------------------------------------------------------------------
    async def __aenter__(self) -> LLMClient:
        if self._depth == 0:
            await self._transport.open()
            self._open = True
            self._semaphore = asyncio.Semaphore(self.config.concurrency)
        self._depth += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0 and self._open:
            self._open = False
            await self._transport.close()

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
                        bar.set_postfix(self._postfix(), refresh=False)  # shown by the update
                        bar.update(len(idx))

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
    def iter_results(
        self, requests: Iterable[ChatRequest], *, desc: str = "llm", bar: Any = None
    ) -> Iterator[ChatResult]:
        """Answers in input order, ``chunk_size`` requests at a time (so a caller can write as they come),
        with a progress bar: ``bar`` (a tqdm-like one the caller owns, e.g. its stage step's ``Task.bar``)
        or one of its own."""
        requests = requests if isinstance(requests, Sequence) else list(requests)
        started = time.perf_counter()
        own = bar is None
        if own:
            bar = tqdm(total=len(requests), desc=desc, unit="req", disable=not self.config.progress)
        try:
            size = self.config.chunk_size
            for lo in range(0, len(requests), size):
                chunk = requests[lo : lo + size]
                yield from _run_coroutine(self.complete_all(chunk, bar))
        finally:
            if own:
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

    async def _fetch(self, request: ChatRequest) -> ChatResult:
        if not self._open:
            raise RuntimeError("LLMClient.complete() needs `async with client:` (or use run())")
        assert self._semaphore is not None
        failure = Failure("none", "", False)
        attempt = 0
        for attempt in range(1, self.config.max_attempts + 1):
            async with self._semaphore:
                self.stats.http_requests += 1
                try:
                    data, parsed = await asyncio.wait_for(self._transport.post(request), self.config.timeout)
                except Exception as e:  # classified below; anything unknown is re-raised there
                    failure = self._transport.classify(e)
                else:
                    self.cache.put(request.key, request.model, request.to_dict(), data, parsed)
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
        self.cache.record_failure(request.key, request.to_dict(), failure.kind, failure.message, attempt)
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
