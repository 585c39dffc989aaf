"""The README's "Adding an LLM backend" example, complete: llama.cpp's own API (``POST /completion``, and
``/apply-template`` for chat messages) as a ``Transport``, a protocol that is not OpenAI's.

As ``src/textbooks/llm/llamacpp_api.py``, registered in ``textbooks.llm.transport.TRANSPORTS``, it would be
``llm.transport=llamacpp_native``; tests/test_llm_transport.py runs it against a real llama-server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from textbooks.llm.config import LLMConfig
from textbooks.llm.replies import MalformedResponse, Parsed
from textbooks.llm.requests import ChatRequest
from textbooks.llm.transport import Failure

# our sampling parameter -> llama.cpp's name for it
NAMES = {
    "max_tokens": "n_predict",
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "stop": "stop",
}


class LlamaCppNative:
    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        self.root = str(config.base_url).removesuffix("/").removesuffix("/v1")
        self.http: httpx.AsyncClient | None = None

    async def open(self) -> None:
        self.http = httpx.AsyncClient(base_url=self.root, timeout=self.config.timeout)

    async def close(self) -> None:
        if self.http is not None:
            await self.http.aclose()

    async def post(self, request: ChatRequest) -> tuple[dict[str, Any], Parsed]:
        assert self.http is not None
        prompt = request.prompt
        if prompt is None:  # chat: the model's own template makes the prompt
            r = await self.http.post("/apply-template", json={"messages": request.messages})
            r.raise_for_status()
            prompt = r.json()["prompt"]
        body = {NAMES[k]: v for k, v in request.params.items() if k in NAMES}
        r = await self.http.post("/completion", json={"prompt": prompt, **body})
        r.raise_for_status()
        data = json.loads(r.content)
        if not isinstance(data, dict) or not isinstance(data.get("content"), str):
            raise MalformedResponse(f"not a llama.cpp completion: {r.text[:200]}")
        finish = "length" if data.get("stop_type") == "limit" else "stop"
        return data, Parsed(
            data["content"],
            finish,
            data.get("model"),
            data.get("tokens_evaluated", 0),
            data.get("tokens_predicted", 0),
        )

    def classify(self, e: BaseException) -> Failure:
        if isinstance(e, (asyncio.TimeoutError, httpx.TimeoutException)):
            return Failure("timeout", f"no reply within llm.timeout={self.config.timeout}s", True)
        if isinstance(e, httpx.TransportError):
            return Failure("connection", f"{type(e).__name__}: {e}", True)
        if isinstance(e, (MalformedResponse, json.JSONDecodeError)):
            return Failure("malformed", str(e), True)
        if isinstance(e, httpx.HTTPStatusError):
            status = e.response.status_code
            return Failure("server" if status >= 500 else "rejected", f"HTTP {status}", status >= 500)
        raise e
