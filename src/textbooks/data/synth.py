"""Stage ``textbooks``: synthetic textbook sections written by an LLM (phi-1's "synthetic textbooks").

phi-1 generated < 1B tokens of "textbook quality" Python lessons with GPT-3.5 — natural language
interleaved with code — and got diversity by putting a random topic and a random target audience into
every prompt. This stage does the same against any OpenAI-compatible endpoint (``textbooks.data.llm``):

* request ``i`` draws its topic and audience from the lists in ``conf/stage/textbooks.yaml`` with
  ``random.Random(f"{seed}:{i}")`` (so adding requests never changes the earlier ones, and every request
  is answered from the cache on a rerun), and, when ``seed_input`` is set, sometimes a code snippet drawn
  from that corpus (a function or class, or a window of lines) for the section to build on;
* each request carries its own sampling ``seed`` (derived from the stage seed and ``i``), which makes the
  requests distinct and, on servers that honour it, reproducible;
* answers shorter than ``min_chars`` are dropped, and so are duplicates: exact ones (same text after
  lower-casing and collapsing whitespace) and near ones (MinHash LSH over word 5-grams, Jaccard >=
  ``near_dup_threshold``; ``null`` turns it off). The first occurrence is kept.

Output (``out_dir``): ``part-*.parquet`` with ``id, text, source, topic, audience, snippet,
snippet_source, prompt, model, params, prompt_hash, finish_reason, prompt_tokens, completion_tokens``
and ``manifest.json`` with every count.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from textbooks.config import dataclass_from
from textbooks.data.documents import DataError, ReadStats, iter_documents
from textbooks.data.llm import (
    ChatResult,
    LLMClient,
    LLMConfig,
    LLMUnreachableError,
    fill_template,
    prompt_hash,
)
from textbooks.data.manifest import Stage, read_manifest
from textbooks.data.parquet import ShardWriter, part_files
from textbooks.errors import ConfigError, TextbooksError

log = logging.getLogger(__name__)

SOURCE = "synthetic-textbook"
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("topic", pa.string()),
        ("audience", pa.string()),
        ("snippet", pa.string()),
        ("snippet_source", pa.string()),
        ("prompt", pa.string()),
        ("model", pa.string()),
        ("params", pa.string()),
        ("prompt_hash", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
    ]
)


@dataclass
class SynthConfig:
    """``conf/stage/textbooks.yaml``."""

    out_dir: str
    topics: list[str]
    audiences: list[str]
    n: int = 1000  # sections to request
    seed: int = 0
    system_prompt: str = ""
    prompt: str = (
        "Write a textbook section on {topic} for {audience}.{snippet}"  # {topic} {audience} {snippet}
    )
    snippet_template: str = "\n\n```python\n{code}\n```"  # what {snippet} becomes ({code}, {source})
    seed_input: str | list[str] | None = None  # optional corpus the snippets come from
    snippet_fraction: float = 0.5  # share of requests that get a snippet (when seed_input is set)
    snippet_pool: int = 2000  # documents of seed_input drawn (seeded reservoir) to take snippets from
    snippet_lines: int = 30  # longest snippet, in lines
    pattern: str = "**/*.py"
    text_field: str = "text"
    id_field: str = "id"
    max_file_bytes: int | None = 1_000_000
    max_bad_fraction: float = 0.01
    min_chars: int = 500  # shorter answers are dropped
    near_dup_threshold: float | None = 0.8  # MinHash Jaccard for near-duplicates; null = exact only
    max_failed_fraction: float = 0.1  # requests without an answer tolerated
    rows_per_shard: int = 10_000
    sampling: dict[str, Any] = field(default_factory=dict)  # overrides of the llm's sampling

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


def snippet_pool(cfg: SynthConfig, stats: ReadStats) -> list[Snippet]:
    """Snippets from a seeded reservoir sample of ``cfg.snippet_pool`` documents of ``cfg.seed_input``."""
    if not cfg.seed_input:
        return []
    inputs = [cfg.seed_input] if isinstance(cfg.seed_input, str) else list(cfg.seed_input)
    for p in inputs:
        if not Path(p).exists():
            raise DataError(f"stage.seed_input {p} does not exist: point it at a corpus, or set it to null")
    rng = random.Random(f"snippets:{cfg.seed}")
    reservoir: list[Any] = []
    docs = iter_documents(
        inputs,
        pattern=cfg.pattern,
        text_field=cfg.text_field,
        id_field=cfg.id_field,
        max_bytes=cfg.max_file_bytes,
        stats=stats,
    )
    for i, doc in enumerate(docs):
        if len(reservoir) < cfg.snippet_pool:
            reservoir.append(doc)
        elif (j := rng.randrange(i + 1)) < cfg.snippet_pool:
            reservoir[j] = doc
    stats.check(cfg.max_bad_fraction, f"textbooks seed_input {inputs}")
    pool = [
        Snippet(code, doc.source) for doc in reservoir for code in _snippets_of(doc.text, cfg.snippet_lines)
    ]
    if not pool:
        raise DataError(
            f"stage.seed_input {inputs}: no documents to take snippets from (pattern {cfg.pattern!r})"
        )
    return pool


def plan_requests(cfg: SynthConfig, pool: list[Snippet]) -> list[Plan]:
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


def normalise(text: str) -> str:
    """Lower case, whitespace collapsed: what exact-duplicate detection compares."""
    return re.sub(r"\s+", " ", text.lower()).strip()


class Deduplicator:
    """Exact (normalised hash) and near (MinHash LSH over word 5-grams) duplicate detection, in order."""

    def __init__(self, threshold: float | None, num_perm: int = 128, seed: int = 1) -> None:
        self.seen: set[str] = set()
        self.threshold = threshold
        self.num_perm = num_perm
        self.seed = seed
        self.lsh = None
        if threshold is not None:
            from datasketch import MinHashLSH

            self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)

    def check(self, key: str, text: str) -> str | None:
        """``"exact"`` or ``"near"`` when ``text`` duplicates an earlier one, else ``None`` (and remember it)."""
        norm = normalise(text)
        digest = hashlib.sha1(norm.encode()).hexdigest()
        if digest in self.seen:
            return "exact"
        self.seen.add(digest)  # (a repeat of a dropped near-duplicate is then an exact one)
        if self.lsh is not None:
            from datasketch import MinHash

            words = re.findall(r"\w+", norm)
            shingles = {" ".join(words[i : i + 5]) for i in range(max(1, len(words) - 4))}
            mh = MinHash(num_perm=self.num_perm, seed=self.seed)
            mh.update_batch([s.encode() for s in shingles])
            if self.lsh.query(mh):
                return "near"
            self.lsh.insert(key, mh)
        return None


def run_stage(cfg: Any) -> dict:
    """``textbooks-data stage=textbooks``: generate ``stage.n`` textbook sections into ``stage.out_dir``."""
    scfg = dataclass_from(SynthConfig, cfg.stage, "stage (textbooks)")
    return synthesize(scfg, LLMConfig.from_dict(cfg.llm), progress=bool(cfg.get("progress", True)))


def synthesize(cfg: SynthConfig, llm: LLMConfig, *, progress: bool = True) -> dict:
    """Run the stage (skipped when its manifest is current); returns the manifest."""
    template = prompt_hash(cfg.system_prompt, cfg.prompt, cfg.snippet_template)
    stage_cfg = asdict(cfg)
    stage_cfg.pop("out_dir")
    stage_cfg["llm"] = {"model": llm.model, "params": llm.params(**cfg.sampling), "prompt_hash": template}
    inputs: list[str] = (
        []
        if not cfg.seed_input
        else [cfg.seed_input]
        if isinstance(cfg.seed_input, str)
        else list(cfg.seed_input)
    )
    stage = Stage("textbooks", cfg.out_dir, stage_cfg, inputs)
    if stage.is_current():
        log.info("textbooks: %s is current, skipping", cfg.out_dir)
        return read_manifest(cfg.out_dir)  # type: ignore[return-value]
    stage.prepare()
    out = Path(cfg.out_dir)
    for old in part_files(out):
        old.unlink()
    stats = ReadStats()
    pool = snippet_pool(cfg, stats)
    plans = plan_requests(cfg, pool)
    llm.progress = llm.progress and progress
    counts = {
        "requested": len(plans),
        "answered": 0,
        "failed": 0,
        "short": 0,
        "exact_dups": 0,
        "near_dups": 0,
    }
    counts["truncated"] = 0  # kept, but the model stopped at max_tokens
    failed_by_kind: dict[str, int] = {}
    dedup = Deduplicator(cfg.near_dup_threshold, seed=cfg.seed + 1)
    writer = ShardWriter(out, cfg.rows_per_shard, schema=SCHEMA)
    with LLMClient(llm, seed=cfg.seed) as client:
        requests = [
            client.request(p.prompt, system=cfg.system_prompt or None, **{**cfg.sampling, "seed": p.seed})
            for p in plans
        ]
        try:
            for plan, res in zip(plans, client.iter_results(requests, desc="textbooks")):
                verdict = _verdict(res, cfg, dedup, plan)
                if verdict == "failed":
                    failed_by_kind[str(res.error_kind)] = failed_by_kind.get(str(res.error_kind), 0) + 1
                counts[verdict] = counts.get(verdict, 0) + 1
                if verdict != "kept":
                    continue
                counts["truncated"] += res.finish_reason == "length"
                writer.add(_row(plan, res, template))
        except LLMUnreachableError as e:
            raise LLMUnreachableError(
                f"{e} (stage textbooks needs an LLM; there is no offline proxy)"
            ) from None
        llm_stats = client.stats.to_dict()
    files = writer.close()
    counts["answered"] = counts["requested"] - counts["failed"]
    if counts["failed"] / counts["requested"] > cfg.max_failed_fraction:
        raise TextbooksError(
            f"textbooks: {counts['failed']} of {counts['requested']} requests failed ({failed_by_kind}), more "
            f"than max_failed_fraction={cfg.max_failed_fraction}. Answers already received are cached in "
            f"{llm.cache}: fix the endpoint and rerun (only the rest is asked)"
        )
    return stage.finish(
        files,
        documents=writer.count,
        **{k: v for k, v in counts.items() if k != "kept"},
        failed_by_kind=failed_by_kind,
        topics=_tally(p.topic for p in plans),
        audiences=_tally(p.audience for p in plans),
        with_snippet=sum(p.snippet is not None for p in plans),
        snippet_pool=len(pool),
        read=stats.to_dict(),
        llm=llm_stats,
    )


def _verdict(res: ChatResult, cfg: SynthConfig, dedup: Deduplicator, plan: Plan) -> str:
    if not res.ok:
        return "failed"
    text = (res.text or "").strip()
    if len(text) < cfg.min_chars:
        return "short"
    dup = dedup.check(str(plan.index), text)
    return {"exact": "exact_dups", "near": "near_dups", None: "kept"}[dup]


def _row(plan: Plan, res: ChatResult, template: str) -> dict[str, Any]:
    return {
        "id": f"textbook-{plan.index:08d}",
        "text": (res.text or "").strip(),
        "source": SOURCE,
        "topic": plan.topic,
        "audience": plan.audience,
        "snippet": plan.snippet.code if plan.snippet else None,
        "snippet_source": plan.snippet.source if plan.snippet else None,
        "prompt": plan.prompt,
        "model": res.response_model or res.request.model,
        "params": json.dumps(res.request.params, sort_keys=True),
        "prompt_hash": template,
        "finish_reason": res.finish_reason,
        "prompt_tokens": res.prompt_tokens,
        "completion_tokens": res.completion_tokens,
    }


def _tally(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))
