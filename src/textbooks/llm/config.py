"""Where an OpenAI-compatible endpoint is and how hard to push it: ``conf/llm/*.yaml`` as dataclasses, and
the errors that stop a stage when the endpoint cannot be used as configured."""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from textbooks.config import dataclass_from, to_plain
from textbooks.errors import ConfigError, TextbooksError
from textbooks.llm.models import MODELS_DIR

SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "seed")


class LLMError(TextbooksError):
    """The endpoint cannot be used as configured; the message names the URL and the fix."""


class LLMUnreachableError(LLMError):
    """Every request failed to connect to the endpoint."""


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
    for the length of a stage (``textbooks.llm.server``)."""

    server: str = "llama-server"  # executable: a path, or a name looked up in the venv's bin/, then PATH
    # the GGUF served: one of textbooks.llm.models.MODELS, joined into ``models_dir`` by `make install`
    model: str = "qwen2.5-coder-0.5b-instruct-q4_k_m"
    models_dir: str = MODELS_DIR
    model_path: str | None = None  # any GGUF file instead of ``model``
    parallel: int = 4  # server slots: requests decoded together (continuous batching)
    ctx_size: int = 8192  # tokens of KV cache in all, shared by the slots
    # CPU threads for decoding and prompts (None: the server's default, all cores; ``--threads-batch`` follows
    # it, and with 2 or more slots busy every step is a batch). 1 by default: with 2 threads on a busy 2-core
    # machine llama.cpp's threads wait on each other (5.5 tokens/s against 20-25 with 1 thread; re-measured
    # 2026-12-07 at load 7: 1.7 and 3.9 tokens/s with 1 and 4 requests in flight, against 6.0 and 9.2 with
    # 1 thread); on a quiet one 2 are 1.3-1.85x faster (benchmarks/llm_local.py), and two one-thread servers
    # (a stage's two tasks, each starting its own) as fast as that without the collapse (conf/llm/local.yaml)
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

    # None with ``local`` set: each task starts the local server (``textbooks.llm.server.llm_endpoint``)
    base_url: str | None = "https://api.openai.com/v1"
    model: str = "gpt-3.5-turbo"
    transport: str = "openai"  # the API spoken (textbooks.llm.transport.TRANSPORTS)
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
    # tasks on several machines: each writes a cache shard of its own (set by the stage runner for
    # executor=slurm|ray; the stage's last step folds the shards in)
    cache_shards: bool = False
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
        params = {k: getattr(self, k) for k in SAMPLING_KEYS}
        params.update(self.extra_body)
        params.update(overrides)
        return {k: v for k, v in params.items() if v is not None}

    def api_key(self) -> str:
        return os.environ.get(self.api_key_env, "") if self.api_key_env else ""


def register_schema() -> None:
    """``LLMConfig`` as the schema of the ``llm`` config group (``llm/llm_schema``), for every app composing it."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="llm", name="llm_schema", node=LLMConfig)
