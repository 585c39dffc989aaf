"""The OpenAI-compatible API as a ``Transport``: chat completions and completions through the ``openai``
package, which OpenAI, vLLM (``vllm serve``), llama.cpp (``llama-server``) and Ollama all speak.

The package's own retries are off (``max_retries=0``): every attempt is the client's, so it is counted and
backed off by one rule. Replies are read raw and parsed strictly (``textbooks.llm.replies``), so an odd body is
a ``malformed`` failure to retry, never an exception deep in the package.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from textbooks.llm.config import LLMConfig
from textbooks.llm.replies import (
    MalformedResponse,
    Parsed,
    parse_completion,
    parse_retry_after,
    parse_text_completion,
)
from textbooks.llm.requests import ChatRequest
from textbooks.llm.transport import Failure

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
# how OpenAI (context_length_exceeded), vLLM (maximum context length) and llama.cpp
# (exceed_context_size_error) say that a request does not fit the model's context
_CONTEXT_ERROR = re.compile(r"context.length|context.size|maximum context|too long", re.IGNORECASE)


class OpenAITransport:
    """``openai.AsyncOpenAI`` against ``config.base_url``."""

    def __init__(self, config: LLMConfig) -> None:
        for name in ("httpx", "httpx2", "openai"):  # one INFO line per request would bury the progress bar
            if logging.getLogger(name).level == logging.NOTSET:
                logging.getLogger(name).setLevel(logging.WARNING)
        self.config = config
        self._client: Any = None

    async def open(self) -> None:
        import openai

        self._client = openai.AsyncOpenAI(
            base_url=self.config.base_url,
            api_key=self.config.api_key() or "not-needed",  # local servers take any key
            timeout=self.config.timeout,
            max_retries=0,  # retries are the client's
        )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def post(self, request: ChatRequest) -> tuple[dict[str, Any], Parsed]:
        if self._client is None:
            raise RuntimeError("OpenAITransport.post() before open()")
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

    def classify(self, e: BaseException) -> Failure:
        import openai

        url = self.config.base_url
        if isinstance(e, (asyncio.TimeoutError, openai.APITimeoutError)):
            return Failure("timeout", f"no reply within llm.timeout={self.config.timeout}s", True)
        if isinstance(e, openai.APIConnectionError):
            cause = e.__cause__ or e
            if _is_decoding_error(cause):  # a reply arrived, but its body cannot be decoded
                return Failure("malformed", f"body cannot be decoded ({cause})", True)
            return Failure("connection", f"{type(cause).__name__}: {cause}", True)
        if isinstance(e, MalformedResponse):
            return Failure("malformed", str(e), True)
        if isinstance(e, openai.APIStatusError):
            status = e.status_code
            msg = f"HTTP {status}: {e.message}"
            retry_after = parse_retry_after(e.response.headers)
            if status in (401, 403):
                env = self.config.api_key_env
                return Failure(
                    "rejected",
                    msg,
                    False,
                    fatal=f"the LLM endpoint {url} rejected the API key ({msg}); put a valid key in the "
                    f"environment variable {env} (llm.api_key_env) or point llm.base_url at your server",
                )
            if status == 404:
                return Failure(
                    "rejected",
                    msg,
                    False,
                    fatal=f"the LLM endpoint {url} answered 404 for model {self.config.model!r} ({msg}); check "
                    "llm.model (a model the server serves) and llm.base_url (it usually ends in /v1)",
                )
            if status == 429:
                return Failure("rate_limit", msg, True, retry_after)
            if status in (408, 409) or status >= 500:
                return Failure("server", msg, True, retry_after)
            if status in (400, 413) and _CONTEXT_ERROR.search(f"{e.message} {e.body}"):
                return Failure(  # retrying cannot help; the rest of the run goes on
                    "too_long",
                    f"{msg} (the prompt and max_tokens do not fit the model's context: shorten the prompt, "
                    "lower max_tokens, or give the server a larger context, e.g. llm.local.ctx_size)",
                    False,
                )
            return Failure("rejected", msg, False)
        raise e


def _is_decoding_error(e: BaseException) -> bool:
    """An HTTP client's ``DecodingError`` (httpx's, or httpx2's, which ``openai`` uses): the body
    arrived but its content encoding is broken."""
    return any(c.__name__ == "DecodingError" and c.__module__.startswith("httpx") for c in type(e).__mro__)
