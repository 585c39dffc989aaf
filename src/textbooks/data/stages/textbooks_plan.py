"""What the synthetic-textbook stage (``textbooks.data.stages.textbooks``) asks for: its config, and the plan of every
request: topic, audience, sampling seed and, when ``seed_input`` is set, sometimes a code snippet.

Request ``i`` draws from ``random.Random(f"{seed}:{i}")``, so adding requests never changes the earlier ones
(and a rerun is answered from the cache); snippets come from a seeded reservoir sample of ``seed_input``.
"""

from __future__ import annotations

import ast
import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from textbooks.data.engine.inputs import plan_shards, resolve
from textbooks.data.engine.reader import Fields, ReadStats, read_shard
from textbooks.data.engine.stage import execution_only
from textbooks.data.stages.prompts import (
    AUDIENCES,
    SNIPPET_TEMPLATE,
    TEXTBOOK_PROMPT,
    TEXTBOOK_SYSTEM,
    TOPICS,
)
from textbooks.data.text.checks import CHECK_CPU_S
from textbooks.errors import ConfigError, DataError
from textbooks.llm.requests import fill_template


@dataclass
class TextbooksConfig:
    """``conf/stage/textbooks.yaml``."""

    out_dir: str
    topics: list[str] = field(default_factory=lambda: list(TOPICS))
    audiences: list[str] = field(default_factory=lambda: list(AUDIENCES))
    n: int = 1000  # sections to request (the paper: < 1B tokens from GPT-3.5)
    seed: int = 0
    system_prompt: str = TEXTBOOK_SYSTEM
    prompt: str = TEXTBOOK_PROMPT  # {topic} and {audience} are filled in per request, {snippet} may be empty
    snippet_template: str = SNIPPET_TEMPLATE  # what {snippet} becomes ({code}, {source})
    seed_input: Any = None  # optional corpus the snippets come from
    snippet_fraction: float = 0.5  # share of requests that get a snippet (when seed_input is set)
    snippet_pool: int = 2000  # documents of seed_input drawn (seeded reservoir) to take snippets from
    snippet_lines: int = 30  # longest snippet, in lines
    pattern: str = "**/*.py"
    text_field: str = "text"
    id_field: str = "id"
    max_file_bytes: int | None = 1_000_000
    max_bad_fraction: float = execution_only(0.01)
    min_chars: int = 500  # shorter answers are dropped
    near_dup_threshold: float | None = 0.8  # MinHash Jaccard for near-duplicates; null = exact only
    max_failed_fraction: float = execution_only(0.1)  # requests without an answer tolerated
    requests_per_part: int = 1000  # requests per output part (the unit tasks share out)
    run_code: bool = True  # run each section's self-contained code in the sandbox; drop the sections it fails
    check_cpu_s: float = CHECK_CPU_S  # CPU seconds that code may take (longer: it fails)
    # overrides of the llm's sampling: measured with Qwen2.5-Coder-0.5B (12 requests each), temperature 0.5 and 0.8
    # both kept 9 of 12 sections at the same distinct-4 (0.80, 0.79), 0.8 cut more at max_tokens (6 against 4)
    sampling: dict[str, Any] = field(default_factory=lambda: {"temperature": 0.5, "max_tokens": 700})
    name: str = "textbooks"  # the stage (conf/stage/textbooks.yaml)

    def __post_init__(self) -> None:
        if not self.topics or not self.audiences:
            raise ConfigError("stage.topics and stage.audiences must be non-empty lists")
        if "{topic}" not in self.prompt or "{audience}" not in self.prompt:
            raise ConfigError("stage.prompt must contain {topic} and {audience} (and may contain {snippet})")
        if self.seed_input and "{snippet}" not in self.prompt:
            raise ConfigError("stage.seed_input is set but stage.prompt has no {snippet} to put the code in")
        if self.n < 1:
            raise ConfigError(f"stage.n must be >= 1 (got {self.n})")
        if self.near_dup_threshold is not None and not 0 < self.near_dup_threshold <= 1:
            raise ConfigError(
                f"stage.near_dup_threshold must be in (0, 1] or null (got {self.near_dup_threshold})"
            )


@dataclass(frozen=True)
class Snippet:
    code: str
    source: str


@dataclass(frozen=True)
class Plan:
    """What request ``index`` asks for."""

    index: int
    topic: str
    audience: str
    seed: int  # the request's sampling seed
    snippet: Snippet | None
    prompt: str


def request_seed(seed: int, index: int) -> int:
    """A 31-bit sampling seed per request, stable across runs."""
    return int(hashlib.sha256(f"textbooks:{seed}:{index}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def _snippets_of(text: str, max_lines: int) -> list[str]:
    """Top-level functions and classes of at most ``max_lines`` lines; else the first ``max_lines`` lines."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        tree = None
    lines = text.splitlines()
    found = []
    if tree is not None:
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                end = node.end_lineno or node.lineno
                if 3 <= end - start + 1 <= max_lines:
                    found.append("\n".join(lines[start - 1 : end]))
    if not found and lines:
        window = "\n".join(lines[:max_lines]).strip()
        if window:
            found.append(window)
    return found


def seed_inputs(cfg: TextbooksConfig) -> list[str]:
    if not cfg.seed_input:
        return []
    return [cfg.seed_input] if isinstance(cfg.seed_input, str) else list(cfg.seed_input)


def snippet_pool(cfg: TextbooksConfig, stats: ReadStats) -> list[Snippet]:
    """Snippets from a seeded reservoir sample of ``cfg.snippet_pool`` documents of ``cfg.seed_input``."""
    inputs = seed_inputs(cfg)
    if not inputs:
        return []
    fix = "point it at a corpus, or set stage.seed_input to null"
    sources = [resolve(s, where="textbooks: stage.seed_input", fix=fix) for s in inputs]
    rng = random.Random(f"snippets:{cfg.seed}")
    reservoir: list[dict[str, Any]] = []
    fields = Fields((cfg.text_field,), cfg.id_field)
    i = 0
    for shard in plan_shards(sources, pattern=cfg.pattern):
        for doc in read_shard(shard, stats, fields=fields, columns=(), max_bytes=cfg.max_file_bytes):
            if len(reservoir) < cfg.snippet_pool:
                reservoir.append(doc)
            elif (j := rng.randrange(i + 1)) < cfg.snippet_pool:
                reservoir[j] = doc
            i += 1
    stats.check(cfg.max_bad_fraction, f"textbooks seed_input {inputs}")
    pool = [
        Snippet(code, doc["source"])
        for doc in reservoir
        for code in _snippets_of(doc["text"], cfg.snippet_lines)
    ]
    if not pool:
        raise DataError(
            f"stage.seed_input {inputs}: no documents to take snippets from (pattern {cfg.pattern!r})"
        )
    return pool


def plan_requests(cfg: TextbooksConfig, pool: list[Snippet]) -> list[Plan]:
    """Topic, audience, sampling seed and snippet of every request (deterministic per index)."""
    plans = []
    for i in range(cfg.n):
        rng = random.Random(f"{cfg.seed}:{i}")
        topic, audience = rng.choice(cfg.topics), rng.choice(cfg.audiences)
        snippet = rng.choice(pool) if pool and rng.random() < cfg.snippet_fraction else None
        snippet_text = (
            fill_template(cfg.snippet_template, code=snippet.code, source=snippet.source) if snippet else ""
        )
        prompt = fill_template(cfg.prompt, topic=topic, audience=audience, snippet=snippet_text)
        plans.append(Plan(i, topic, audience, request_seed(cfg.seed, i), snippet, prompt))
    return plans
