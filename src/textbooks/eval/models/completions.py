"""What a generation asks for and gives back, for every model alike: ``TextModel`` (the one interface of
``decoding.TextbooksLM``, ``load.HFLM`` and ``served.ServedLM``), ``GenerationConfig``, one ``Completion`` per
sample, the per-sample RNG seed (``row_seed``: a sample does not depend on the batch it ran in) and the run's
``GenerationStats``."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from textbooks.errors import ConfigError

FINISH_REASONS = ("stop", "eos", "length")


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode. ``n`` samples per prompt; ``stop`` sequences end a completion (and are cut off)."""

    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    n: int = 1
    seed: int = 0
    batch_size: int = 8  # rows decoded together
    stop: tuple[str, ...] = ()
    stop_at_eos: bool = True
    use_cache: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))
        checks = [
            (self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
            (self.temperature >= 0, "temperature must be >= 0 (0 = greedy)"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.n >= 1, "n (samples per prompt) must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (all(isinstance(s, str) and s for s in self.stop), "stop sequences must be non-empty strings"),
        ]
        for ok, why in checks:
            if not ok:
                raise ConfigError(f"generation: {why} (got {self})")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "stop": list(self.stop)}


@dataclass(frozen=True)
class Completion:
    """One sample: the text after the prompt, cut at the first stop sequence."""

    index: int  # which prompt
    sample: int  # which of its n samples
    text: str
    finish_reason: str  # one of FINISH_REASONS
    n_tokens: int  # tokens generated (up to and including the one completing a stop sequence)
    prompt_tokens: int  # prompt tokens the model saw
    prompt_dropped: int  # prompt tokens cut from the left to fit the context
    token_ids: tuple[int, ...] = field(default=(), repr=False)  # the generated tokens, eos excluded


def row_seed(seed: int, key: str, sample: int) -> int:
    """The RNG seed of one sample: a hash of (run seed, prompt key, sample index)."""
    digest = hashlib.sha256(f"{seed}\0{key}\0{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass
class GenerationStats:
    """Counts and timings of a generation run (``add`` each completion)."""

    completions: int = 0
    new_tokens: int = 0
    finish_reasons: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINISH_REASONS, 0))
    samples_with_truncated_prompt: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, c: Completion) -> None:
        self.completions += 1
        self.new_tokens += c.n_tokens
        self.finish_reasons[c.finish_reason] += 1
        self.samples_with_truncated_prompt += c.prompt_dropped > 0

    def as_dict(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.started
        return {
            "completions": self.completions,
            "new_tokens": self.new_tokens,
            "finish_reasons": dict(self.finish_reasons),
            "samples_with_truncated_prompt": self.samples_with_truncated_prompt,
            "wall_s": round(wall, 3),
            "tokens_per_s": round(self.new_tokens / wall, 1) if wall > 0 else None,
        }


@runtime_checkable
class TextModel(Protocol):
    """A model a generation run samples from: an own checkpoint or a Hugging Face model (``decoding.LM``,
    decoded here) or a model behind an endpoint (``served.ServedLM``); ``generation_run`` takes any of them."""

    def describe(self) -> dict[str, Any]:
        """What the model is, recorded with its samples (kind, name, and what else identifies it)."""
        ...

    def iter_generate(
        self, prompts: Sequence[Any], config: GenerationConfig, keys: Sequence[str] | None = None
    ) -> Iterator[Completion]:
        """Every ``Completion`` (``config.n`` per prompt); ``keys`` name the prompts for the per-sample seeds."""
        ...
