"""Stage ``textbooks``: synthetic textbook sections written by an LLM (phi-1's "synthetic textbooks").

phi-1 generated < 1B tokens of "textbook quality" Python lessons with GPT-3.5 — natural language
interleaved with code — and got diversity by putting a random topic and a random target audience into
every prompt. This stage does the same against any OpenAI-compatible endpoint (``textbooks.llm.client``):

* request ``i`` draws its topic and audience from the lists in ``conf/stage/textbooks.yaml`` with
  ``random.Random(f"{seed}:{i}")`` (so adding requests never changes the earlier ones, and every request
  is answered from the cache on a rerun), and, when ``seed_input`` is set, sometimes a code snippet drawn
  from that corpus (a function or class, or a window of lines) for the section to build on;
* each request carries its own sampling ``seed`` (derived from the stage seed and ``i``), which makes the
  requests distinct and, on servers that honour it, reproducible;
* answers are checked (``textbooks.data.text.checks``): shorter than ``min_chars``, without a Python code block, with
  a block that does not parse, or whose self-contained code fails in the sandbox (``run_code``): dropped and
  counted by reason; then duplicates, as the ``dedup`` stage defines them (``textbooks.data.text.minhash``): exact
  ones (the same normalised text) and near ones (MinHash Jaccard over word 5-grams >= ``near_dup_threshold``;
  ``null`` turns it off). The first occurrence is kept.

Steps: ``snippets`` (one task: the seeded reservoir over ``seed_input``), ``generate`` (the requests in parts of
``requests_per_part``, split across tasks; every task answers from the shared response cache first),
``select`` (one task: short and duplicate answers dropped in request order; distinct-n and near-duplicate rates of all answers, per
topic and audience, go into the manifest's ``diversity``), then publish.

Output (``out_dir``): ``part-*.parquet`` (one per request part) with ``id, text, source, topic, audience,
snippet, snippet_source, prompt, model, params, prompt_hash, finish_reason, prompt_tokens,
completion_tokens`` and ``manifest.json`` with every count. The config and the plan of every request are in
``textbooks.data.stages.textbooks_plan``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pyarrow as pa

from textbooks.config import dataclass_from
from textbooks.data.engine.executor import ExecutorConfig
from textbooks.data.engine.executor import run as run_on
from textbooks.data.engine.inputs import resolve
from textbooks.data.engine.llm_cache import SharedCache
from textbooks.data.engine.parquet import PartWriter
from textbooks.data.engine.reader import ReadStats
from textbooks.data.engine.stage import Stage, Step, Task, summed
from textbooks.data.stages.textbooks_plan import (
    Plan,
    Snippet,
    TextbooksConfig,
    plan_requests,
    seed_inputs,
    snippet_pool,
)
from textbooks.data.text.checks import SECTION_DROPS, check_section, run_checks
from textbooks.data.text.diversity import diversity
from textbooks.data.text.minhash import Deduplicator, Duplicates, Sketcher
from textbooks.errors import TextbooksError
from textbooks.io import write_json_atomic
from textbooks.llm.client import LLMClient
from textbooks.llm.config import LLMConfig, LLMUnreachableError
from textbooks.llm.requests import ChatResult, prompt_hash
from textbooks.llm.server import llm_endpoint

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


class Synthesize(SharedCache, Stage):
    name = "textbooks"

    def __init__(self, cfg: TextbooksConfig, llm: LLMConfig) -> None:
        self.config = cfg
        self.llm = llm
        self.template = prompt_hash(cfg.system_prompt, cfg.prompt, cfg.snippet_template)
        fix = "point it at a corpus, or set stage.seed_input to null"
        self.inputs = [
            resolve(s, where="textbooks: stage.seed_input", fix=fix).path for s in seed_inputs(cfg)
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
        total = task.my_items(len(plans), per)
        with (
            llm_endpoint(llm) as served,
            LLMClient(served, seed=cfg.seed) as client,
            task.bar("textbooks", "req", total=total) as bar,  # opened once the server is up
        ):

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
                    for plan, res in zip(mine, client.iter_results(requests, bar=bar)):
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


CONFIG = TextbooksConfig  # the schema of conf/stage/textbooks.yaml (registered as stage/textbooks_schema)


def from_config(cfg: Any) -> Synthesize:
    """The stage ``textbooks-data stage=textbooks`` runs: ``stage.n`` textbook sections into ``stage.out_dir``."""
    return Synthesize(
        dataclass_from(TextbooksConfig, cfg.stage, "stage (textbooks)"), LLMConfig.from_dict(cfg.llm)
    )


def synthesize(
    cfg: TextbooksConfig, llm: LLMConfig, executor: ExecutorConfig | None = None, *, progress: bool = True
) -> dict:
    """Run the stage (skipped when its manifest is current); returns the manifest."""
    return run_on(Synthesize(cfg, llm), executor, progress=progress)


def duplicates(cfg: TextbooksConfig) -> Duplicates:
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
