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
* answers are checked (``textbooks.data.checks``): shorter than ``min_chars``, without a Python code block, with
  a block that does not parse, or whose self-contained code fails in the sandbox (``run_code``): dropped and
  counted by reason; then duplicates, as the ``dedup`` stage defines them (``textbooks.data.minhash``): exact
  ones (the same normalised text) and near ones (MinHash Jaccard over word 5-grams >= ``near_dup_threshold``;
  ``null`` turns it off). The first occurrence is kept.

Steps: ``snippets`` (one task: the seeded reservoir over ``seed_input``), ``generate`` (the requests in parts of
``requests_per_part``, split across tasks; every task answers from the shared response cache first),
``select`` (one task: short and duplicate answers dropped in request order; distinct-n and near-duplicate rates of all answers, per
topic and audience, go into the manifest's ``diversity``), then publish.

Output (``out_dir``): ``part-*.parquet`` (one per request part) with ``id, text, source, topic, audience,
snippet, snippet_source, prompt, model, params, prompt_hash, finish_reason, prompt_tokens,
completion_tokens`` and ``manifest.json`` with every count.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import random
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from textbooks.config import dataclass_from
from textbooks.data.checks import CHECK_CPU_S, SECTION_DROPS, check_section, run_checks
from textbooks.data.diversity import diversity
from textbooks.data.executor import ExecutorConfig
from textbooks.data.executor import run as run_on
from textbooks.data.inputs import plan_shards, resolve
from textbooks.data.llm import LLMClient
from textbooks.data.llm_cache import SharedCache
from textbooks.data.llm_config import LLMConfig, LLMUnreachableError
from textbooks.data.llm_requests import ChatResult, fill_template, prompt_hash
from textbooks.data.llm_server import llm_endpoint
from textbooks.data.minhash import Deduplicator, Duplicates, Sketcher
from textbooks.data.parquet import PartWriter
from textbooks.data.prompts import AUDIENCES, SNIPPET_TEMPLATE, TEXTBOOK_PROMPT, TEXTBOOK_SYSTEM, TOPICS
from textbooks.data.reader import Fields, ReadStats, read_shard
from textbooks.data.stage import Stage, Step, Task, execution_only, summed
from textbooks.errors import ConfigError, DataError, TextbooksError
from textbooks.io import write_json_atomic

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
    # overrides of the llm's sampling (diversity wants temperature ~1)
    sampling: dict[str, Any] = field(default_factory=lambda: {"temperature": 1.0, "max_tokens": 2048})
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


def _seed_inputs(cfg: SynthConfig) -> list[str]:
    if not cfg.seed_input:
        return []
    return [cfg.seed_input] if isinstance(cfg.seed_input, str) else list(cfg.seed_input)


def snippet_pool(cfg: SynthConfig, stats: ReadStats) -> list[Snippet]:
    """Snippets from a seeded reservoir sample of ``cfg.snippet_pool`` documents of ``cfg.seed_input``."""
    inputs = _seed_inputs(cfg)
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


class Synthesize(SharedCache, Stage):
    name = "textbooks"

    def __init__(self, cfg: SynthConfig, llm: LLMConfig) -> None:
        self.config = cfg
        self.llm = llm
        self.template = prompt_hash(cfg.system_prompt, cfg.prompt, cfg.snippet_template)
        fix = "point it at a corpus, or set stage.seed_input to null"
        self.inputs = [
            resolve(s, where="textbooks: stage.seed_input", fix=fix).path for s in _seed_inputs(cfg)
        ]
        self.pattern = cfg.pattern

    def key_config(self) -> dict[str, Any]:
        return super().key_config() | {
            "llm": {
                "model": self.llm.model,
                "params": self.llm.params(**self.config.sampling),
                "prompt_hash": self.template,
            }
        }

    def plan(self) -> dict[str, Any]:
        per = max(1, self.config.requests_per_part)
        return {"parts": -(-self.config.n // per), "per_part": per}

    def steps(self) -> list[Step]:
        return [
            Step("snippets", "snippets", sharded=False),
            Step("generate", "generate"),
            Step("select", "select", sharded=False),
        ]

    def snippets(self, task: Task) -> dict[str, Any]:
        stats = ReadStats()
        pool = snippet_pool(self.config, stats)
        write_json_atomic(task.data_dir() / "pool.json", [[s.code, s.source] for s in pool])
        return {"pool": len(pool), "read": stats.to_dict()}

    def _plans(self, task: Task) -> list[Plan]:
        pool = [Snippet(c, s) for c, s in json.loads((task.data_dir("snippets") / "pool.json").read_text())]
        return plan_requests(self.config, pool)

    def generate(self, task: Task) -> dict[str, Any]:
        cfg, llm = self.config, self.llm
        plans = self._plans(task)
        per = task.plan["per_part"]
        llm.progress = llm.progress and task.progress
        with llm_endpoint(llm) as served, LLMClient(served, seed=cfg.seed) as client:

            def one(part: int) -> dict[str, Any]:
                mine = plans[part * per : (part + 1) * per]
                requests = [
                    client.request(
                        p.prompt, system=cfg.system_prompt or None, **{**cfg.sampling, "seed": p.seed}
                    )
                    for p in mine
                ]
                rows = []
                try:
                    for plan, res in zip(mine, client.iter_results(requests, desc="textbooks")):
                        row = _row(plan, res, self.template) | {"error_kind": res.error_kind, "ok": res.ok}
                        rows.append(row)
                except LLMUnreachableError as e:
                    raise LLMUnreachableError(
                        f"{e} (stage textbooks needs an LLM; there is no offline proxy)"
                    ) from None
                self._check(rows)
                write_json_atomic(task.data_dir() / f"{part:05d}.json", rows)
                return {"requests": len(mine)}

            out = task.each_shard(task.plan["parts"], one)
            return out | {"llm": client.stats.to_dict()}

    def _check(self, rows: list[dict[str, Any]]) -> None:
        """Each answer's code: ``check`` = a drop reason (short, no_code, syntax, fails), ``ran`` (its
        self-contained code ran in the sandbox) or ``unrun`` (code that parses but needs context to run)."""
        checks = {i: check_section(r["text"], self.config.min_chars) for i, r in enumerate(rows) if r["ok"]}
        runnable = [i for i, c in checks.items() if c.verdict == "run"] if self.config.run_code else []
        verdicts = dict(
            zip(runnable, run_checks([checks[i].program for i in runnable], cpu_s=self.config.check_cpu_s))
        )
        for i, c in checks.items():
            verdict = {"run": "ran" if i in verdicts else "unrun", "kept": "unrun"}.get(c.verdict, c.verdict)
            rows[i]["check"] = "fails" if verdicts.get(i, "passed") != "passed" else verdict
            rows[i]["code_blocks"] = c.blocks

    def select(self, task: Task) -> dict[str, Any]:
        cfg = self.config
        dedup, sketch = Deduplicator(duplicates(cfg)), Sketcher(duplicates(cfg))
        counts = {"requested": 0, "failed": 0, "short": 0, "no_code": 0, "syntax": 0, "fails": 0,
                  "exact_dups": 0, "near_dups": 0, "truncated": 0, "ran": 0, "unrun": 0}  # fmt: skip
        failed_by_kind: dict[str, int] = {}
        kept = 0
        answered: list[dict[str, Any]] = []
        for part in range(task.plan["parts"]):
            rows = json.loads((task.data_dir("generate") / f"{part:05d}.json").read_text())
            answered += [{k: r[k] for k in ("text", "topic", "audience")} for r in rows if r["ok"]]
            with PartWriter(task.publish_path(f"part-{part:05d}.parquet"), SCHEMA) as w:
                for row in rows:
                    counts["requested"] += 1
                    ok, kind = row.pop("ok"), row.pop("error_kind")
                    check = row.pop("check", None)
                    row.pop("code_blocks", None)
                    verdict = (
                        "failed"
                        if not ok
                        else check
                        if check in SECTION_DROPS
                        else _verdict(row, dedup, sketch)
                    )
                    if verdict == "failed":
                        failed_by_kind[str(kind)] = failed_by_kind.get(str(kind), 0) + 1
                    if verdict != "kept":
                        counts[verdict] += 1
                        continue
                    counts["truncated"] += row["finish_reason"] == "length"  # kept, but stopped at max_tokens
                    counts[check] += 1  # ran in the sandbox, or kept unrun (its code needs earlier context)
                    w.add(row)
                kept += w.count
        div = diversity(answered, ["topic", "audience"], threshold=cfg.near_dup_threshold or 0.7)
        return counts | {"documents": kept, "failed_by_kind": failed_by_kind, "diversity": div}

    def summarize(self, task: Task) -> dict[str, Any]:
        cfg = self.config
        s = task.stats_of("select")[0]
        counts = {k: s[k] for k in ("requested", "failed", "short", "no_code", "syntax", "fails", "exact_dups",
                                    "near_dups", "truncated", "ran", "unrun")}  # fmt: skip
        counts["answered"] = counts["requested"] - counts["failed"]
        if counts["failed"] / max(counts["requested"], 1) > cfg.max_failed_fraction:
            raise TextbooksError(
                f"textbooks: {counts['failed']} of {counts['requested']} requests failed ({s['failed_by_kind']}), "
                f"more than max_failed_fraction={cfg.max_failed_fraction}. Answers already received are cached in "
                f"{self.llm.cache}: fix the endpoint and rerun (only the rest is asked)"
            )
        snip = task.stats_of("snippets")[0]
        plans = self._plans(task)
        return {
            "documents": s["documents"],
            **counts,
            "failed_by_kind": s["failed_by_kind"],
            "diversity": s["diversity"],  # of every answer, before short and duplicate ones were dropped
            "topics": _tally(p.topic for p in plans),
            "audiences": _tally(p.audience for p in plans),
            "with_snippet": sum(p.snippet is not None for p in plans),
            "snippet_pool": snip["pool"],
            "read": snip["read"],
            "llm": summed([t["llm"] for t in task.stats_of("generate")]),
            "parts": [f"part-{p:05d}.parquet" for p in range(task.plan["parts"])],
        }


def from_config(cfg: Any) -> Synthesize:
    """The stage ``textbooks-data stage=textbooks`` runs: ``stage.n`` textbook sections into ``stage.out_dir``."""
    return Synthesize(
        dataclass_from(SynthConfig, cfg.stage, "stage (textbooks)"), LLMConfig.from_dict(cfg.llm)
    )


def synthesize(
    cfg: SynthConfig, llm: LLMConfig, executor: ExecutorConfig | None = None, *, progress: bool = True
) -> dict:
    """Run the stage (skipped when its manifest is current); returns the manifest."""
    return run_on(Synthesize(cfg, llm), executor, progress=progress)


def duplicates(cfg: SynthConfig) -> Duplicates:
    """What a duplicate section is: the dedup stage's definition, at ``near_dup_threshold`` (null: exact only)."""
    t = cfg.near_dup_threshold
    return Duplicates(near=False) if t is None else Duplicates(threshold=t)


def _verdict(row: dict[str, Any], dedup: Deduplicator, sketch: Sketcher) -> str:
    """``kept``, or which earlier kept section it duplicates (exactly or nearly)."""
    reason = dedup.add(sketch([row["text"]])[0]).reason
    return {"exact": "exact_dups", "near": "near_dups", None: "kept"}[reason]


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
