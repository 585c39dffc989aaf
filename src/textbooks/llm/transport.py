"""How a request reaches an endpoint: the one seam between the client's rules and an API's wire format.

``LLMClient`` owns everything that does not depend on the API (the cache, concurrency, retries with backoff,
the unreachable-endpoint rule, statistics); a ``Transport`` owns the rest: opening a connection, sending one
``ChatRequest`` and parsing the reply (``Parsed``), and naming what an exception of its HTTP library means
(``Failure``: retryable or not, or fatal for the whole run). ``llm.transport`` picks one from ``TRANSPORTS``;
the OpenAI-compatible API (OpenAI, vLLM, llama.cpp, Ollama) is ``openai`` (``textbooks.llm.openai_api``). A
backend with another protocol is one more module with a class of this shape, registered here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from textbooks.errors import ConfigError

if TYPE_CHECKING:
    from textbooks.llm.config import LLMConfig
    from textbooks.llm.replies import Parsed
    from textbooks.llm.requests import ChatRequest

# llm.transport -> "module:Class" (imported on use, so a transport's HTTP library loads only when it is chosen)
TRANSPORTS = {"openai": "textbooks.llm.openai_api:OpenAITransport"}


@dataclass
class Failure:
    """What one failed attempt means: its kind (counted in ``LLMStats``), a message, whether to retry (and
    after how long, when the server said so), and ``fatal``: a message that stops the whole run."""

    kind: str  # timeout | connection | malformed | rate_limit | server | too_long | rejected
    message: str
    retryable: bool
    retry_after: float | None = None
    fatal: str | None = None


class Transport(Protocol):
    """One endpoint's API, as the client uses it (``async with`` around a batch of posts)."""

    def __init__(self, config: LLMConfig) -> None: ...

    async def open(self) -> None:
        """Set up the connection (pool) the posts share."""

    async def close(self) -> None:
        """Release it."""

    async def post(self, request: ChatRequest) -> tuple[dict[str, Any], Parsed]:
        """Send one request; the reply's JSON and its parsed answer (``MalformedResponse`` if it is odd)."""
        ...

    def classify(self, error: BaseException) -> Failure:
        """What ``error`` raised by ``post`` means; an error it does not know is raised again."""
        ...


def transport_for(config: LLMConfig) -> Transport:
    """The transport ``config.transport`` names, built for ``config``."""
    spec = TRANSPORTS.get(config.transport)
    if spec is None:
        raise ConfigError(
            f"llm.transport={config.transport}: unknown; transports are {', '.join(TRANSPORTS)}"
        )
    module, cls = spec.split(":")
    return getattr(importlib.import_module(module), cls)(config)
