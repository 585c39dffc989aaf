"""Stage ``annotate``: educational-value labels for a seeded random sample of the corpus.

phi-1 asked GPT-4 to judge ~100k samples of The Stack + StackOverflow for their "educational value for a
student whose goal is to learn basic coding concepts", then trained a classifier on those labels
(``textbooks.data.stages.classify``). This stage produces the labels:

* ``annotator=llm`` (the paper's method): each sampled document is shown to an OpenAI-compatible model
  (``textbooks.llm.client``) with the prompt in ``conf/stage/annotate.yaml``: by default a FineWeb-Edu-style
  additive 0–5 rubric adapted to code, answered with a last line ``Educational score: N``. Answers that
  cannot be parsed, and requests that failed, are counted and listed in ``failures.jsonl``; they are not
  written as labels.
* ``annotator=heuristic``: a **proxy** for the LLM, not the paper's method, for machines without one. It
  adds up interpretable signals of a good lesson in basic coding into 0–5 (``heuristic_score``; every
  signal is documented in ``SIGNALS`` and named in each row's ``rationale``).

Output (``out_dir``): ``part-*.parquet`` with ``id, text, source, score, label, rationale, annotator, model,
prompt_hash`` (``label = score >= threshold``), ``failures.jsonl`` and ``manifest.json``. The sample is
drawn with ``random.Random(seed).sample`` over the input's document order, so the same input and seed give
the same sample; the rows keep input order. Steps: ``count`` the documents of every shard, then
``annotate`` the sampled ones shard by shard (so the LLM's requests are split across tasks; every task
answers from the shared response cache first), then publish.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from textbooks.config import dataclass_from
from textbooks.data.engine.executor import ExecutorConfig
from textbooks.data.engine.executor import run as run_on
from textbooks.data.engine.inputs import Shard, Source, plan_shards, resolve
from textbooks.data.engine.llm_cache import SharedCache
from textbooks.data.engine.parquet import PartWriter
from textbooks.data.engine.reader import Fields, ReadStats, read_shard
from textbooks.data.engine.stage import Stage, Step, Task, execution_only, summed
from textbooks.data.stages.annotate_heuristic import HEURISTIC_MODEL, heuristic_score
from textbooks.data.stages.prompts import ANNOTATE_PROMPT, ANNOTATE_SYSTEM
from textbooks.errors import ConfigError, DataError, TextbooksError
from textbooks.io import atomic_path
from textbooks.llm.client import LLMClient
from textbooks.llm.config import LLMConfig, LLMUnreachableError
from textbooks.llm.requests import fill_template, prompt_hash
from textbooks.llm.server import llm_endpoint

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("score", pa.int8()),
        ("label", pa.bool_()),
        ("rationale", pa.string()),
        ("annotator", pa.string()),
        ("model", pa.string()),
        ("prompt_hash", pa.string()),
    ]
)


@dataclass
class AnnotateConfig:
    """``conf/stage/annotate.yaml``."""

    input: Any  # a stage output, JSONL/Parquet file(s) or source directories (one path or a list)
    out_dir: str
    annotator: str = "llm"  # llm (the paper's method) | heuristic (an offline proxy)
    sample_size: int = 100_000
    seed: int = 0
    threshold: int = 3  # label = score >= threshold
    pattern: str = "**/*.py"  # files read inside source directories
    text_field: str = "text"
    id_field: str = "id"
    max_file_bytes: int | None = 1_000_000
    max_chars: int = 6000  # characters of each document shown to the LLM (its head)
    shard_bytes: int = 8 << 20  # source files per shard (JSONL/Parquet files and stage parts are one each)
    max_bad_fraction: float = execution_only(0.01)  # malformed input records tolerated
    max_failed_fraction: float = execution_only(0.05)  # LLM failures (no answer / no parseable score)
    system_prompt: str = ANNOTATE_SYSTEM
    prompt: str = ANNOTATE_PROMPT  # {text} is replaced by the document (its first max_chars characters)
    # per-request overrides of the llm's sampling
    sampling: dict[str, Any] = field(default_factory=lambda: {"temperature": 0.0, "max_tokens": 256})
    name: str = "annotate"  # the stage (conf/stage/annotate.yaml)

    def __post_init__(self) -> None:
        if self.annotator not in ("llm", "heuristic"):
            raise ConfigError(f"stage.annotator={self.annotator!r}: use llm or heuristic")
        if "{text}" not in self.prompt:
            raise ConfigError("stage.prompt must contain {text} (where the document goes)")
        if self.sample_size < 1:
            raise ConfigError(f"stage.sample_size must be >= 1 (got {self.sample_size})")
        if not 0 <= self.threshold <= 5:
            raise ConfigError(f"stage.threshold must be within 0..5 (got {self.threshold})")

    @property
    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


# -- the LLM's answer ------------------------------------------------------------------------------------

_SCORE_LINE = re.compile(
    r"^[\s>*_#`\-]*educational\s+score\s*[:=]\s*[*_`]*\s*(\d+(?:\.\d+)?)\s*(?:/\s*5|out of 5)?[\s*_`.]*$",
    re.IGNORECASE | re.MULTILINE,
)


def parse_score(answer: str) -> tuple[int, str] | None:
    """``(score, rationale)`` from an answer ending in ``Educational score: N`` (the last such line wins;
    markdown emphasis, ``/5`` and a trailing period are tolerated); ``None`` when there is no such line or
    N is not an integer within 0..5."""
    matches = list(_SCORE_LINE.finditer(answer))
    if not matches:
        return None
    m = matches[-1]
    value = float(m.group(1))
    if value != int(value) or not 0 <= value <= 5:
        return None
    rationale = answer[: m.start()].strip()
    return int(value), rationale[:2000]


# -- the stage -------------------------------------------------------------------------------------------


def chosen(seed: int, total: int, sample_size: int) -> set[int]:
    """The sampled positions in the input's document order."""
    return set(random.Random(seed).sample(range(total), min(sample_size, total)))


class Annotate(SharedCache, Stage):
    name = "annotate"
    stale = ("part-*.parquet", "failures.jsonl")

    def __init__(self, cfg: AnnotateConfig, llm: LLMConfig | None) -> None:
        if cfg.annotator == "llm" and llm is None:
            raise ConfigError("annotator=llm needs an llm config (llm=openai|vllm|llamacpp|ollama)")
        fix = (
            "run the stage that writes it (textbooks-data stage=dedup) or set stage.input to a corpus directory, "
            "JSONL or Parquet"
        )
        self.config = cfg
        self.llm = llm if cfg.annotator == "llm" else None
        self.sources: list[Source] = [resolve(s, where="annotate", fix=fix) for s in cfg.inputs]
        self.inputs = [s.path for s in self.sources]
        self.pattern = cfg.pattern
        self.template = prompt_hash(cfg.system_prompt, cfg.prompt) if self.llm is not None else None

    def key_config(self) -> dict[str, Any]:
        d = super().key_config()
        if self.llm is not None:
            d["llm"] = {"model": self.llm.model, "params": self.llm.params(**self.config.sampling),
                        "prompt_hash": self.template}  # fmt: skip
        else:
            d["heuristic"] = HEURISTIC_MODEL
        return d

    def plan(self) -> dict[str, Any]:
        shards = plan_shards(self.sources, pattern=self.config.pattern, shard_bytes=self.config.shard_bytes)
        return {"shards": [s.to_dict() for s in shards]}

    def steps(self) -> list[Step]:
        return [Step("count", "count"), Step("annotate", "annotate")]

    def _docs(self, shard: Shard, stats: ReadStats) -> Iterator[dict[str, Any]]:
        c = self.config
        return read_shard(
            shard, stats, fields=Fields((c.text_field,), c.id_field), columns=(), max_bytes=c.max_file_bytes
        )

    def count(self, task: Task) -> dict[str, Any]:
        shards = [Shard.from_dict(d) for d in task.plan["shards"]]

        def one(i: int) -> dict[str, Any]:
            stats = ReadStats()
            n = sum(1 for _ in self._docs(shards[i], stats))
            return {"documents": n, "read": stats.to_dict()}

        return task.each_shard(len(shards), one)

    def annotate(self, task: Task) -> dict[str, Any]:
        cfg = self.config
        counts = task.shard_stats("count")
        task.reads("count", cfg.max_bad_fraction, f"annotate input {cfg.inputs}")
        offsets = [0]
        for s in counts:
            offsets.append(offsets[-1] + s["documents"])
        total = offsets[-1]
        if total == 0:
            raise DataError(
                f"annotate: no documents in {cfg.inputs} (pattern {cfg.pattern!r}); check stage.input"
            )
        picked = chosen(cfg.seed, total, cfg.sample_size)
        shards = [Shard.from_dict(d) for d in task.plan["shards"]]
        mine = set(task.my_shards(len(shards)))  # this task's documents to annotate, for its bar's total
        sampled = sum(1 for k in picked if bisect.bisect_right(offsets, k) - 1 in mine)
        client = None
        endpoint = contextlib.ExitStack()
        if self.llm is not None:
            client = LLMClient(endpoint.enter_context(llm_endpoint(self.llm)), seed=cfg.seed)
        # opened once a local server is up, closed before it stops (their log lines go around the bar)
        bar = task.bar(f"annotate ({cfg.annotator})", "doc" if self.llm is None else "req", total=sampled)
        try:

            def one(i: int) -> dict[str, Any]:
                docs = [
                    d for k, d in enumerate(self._docs(shards[i], ReadStats())) if offsets[i] + k in picked
                ]
                failures: list[dict[str, Any]] = []
                with PartWriter(task.publish_path(f"part-{i:05d}.parquet"), SCHEMA) as w:
                    if client is None:
                        for row in _heuristic_rows(docs, cfg.threshold, bar):
                            w.add(row)
                    else:
                        _llm_rows(cfg, client, docs, self.template, w, failures, bar)
                return {"sampled": len(docs), "documents": w.count, "failures": failures}

            result = task.each_shard(len(shards), one)
        finally:
            bar.close()
            if client is not None:
                client.close()
            endpoint.close()
        if client is not None:
            result["llm"] = client.stats.to_dict()
        return result

    def summarize(self, task: Task) -> dict[str, Any]:
        cfg = self.config
        counts = task.shard_stats("count")
        shards = task.shard_stats("annotate")
        read = task.reads("count", cfg.max_bad_fraction, f"annotate input {cfg.inputs}")
        failures = [f for s in shards for f in s["failures"]]
        with atomic_path(task.publish_path("failures.jsonl")) as tmp:
            tmp.write_text("".join(json.dumps(f) + "\n" for f in failures))
        parts = [f"part-{i:05d}.parquet" for i in range(len(shards))]
        scores = _score_counts([task.publish_path(p) for p in parts])
        sampled = sum(s["sampled"] for s in shards)
        if sampled and len(failures) / sampled > cfg.max_failed_fraction:
            raise TextbooksError(
                f"annotate: {len(failures)} of {sampled} documents got no usable score (more than "
                f"max_failed_fraction={cfg.max_failed_fraction}); see their list in "
                f"{task.publish_path('failures.jsonl')}. Answers already received are cached: fix the endpoint "
                "or prompt and rerun (only the rest is asked)"
            )
        out: dict[str, Any] = {
            "input_documents": sum(s["documents"] for s in counts),
            "sampled": sampled,
            "documents": sum(s["documents"] for s in shards),
            "failed": len(failures),
            "failed_by_reason": _by(failures, "reason"),
            "scores": scores,
            "labelled_positive": sum(v for k, v in scores.items() if int(k) >= cfg.threshold),
            "read": read.to_dict(),
            "parts": parts,
        }
        llm = [s["llm"] for s in task.stats_of("annotate") if "llm" in s]
        if llm:
            out["llm"] = summed(llm)
        return out


def _heuristic_rows(docs: list[dict[str, Any]], threshold: int, bar: Any) -> Iterator[dict[str, Any]]:
    for doc in docs:
        bar.update()
        h = heuristic_score(doc["text"], doc["source"])
        yield {
            "id": doc["id"],
            "text": doc["text"],
            "source": doc["source"],
            "score": h.score,
            "label": h.score >= threshold,
            "rationale": h.rationale,
            "annotator": "heuristic",
            "model": HEURISTIC_MODEL,
            "prompt_hash": None,
        }


CONFIG = AnnotateConfig  # the schema of conf/stage/annotate.yaml (registered as stage/annotate_schema)


def from_config(cfg: Any) -> Annotate:
    """The stage ``textbooks-data stage=annotate`` runs: label a sample of ``stage.input``."""
    acfg = dataclass_from(AnnotateConfig, cfg.stage, "stage (annotate)")
    return Annotate(acfg, LLMConfig.from_dict(cfg.llm) if acfg.annotator == "llm" else None)


def annotate(
    cfg: AnnotateConfig,
    llm: LLMConfig | None = None,
    executor: ExecutorConfig | None = None,
    *,
    progress: bool = True,
) -> dict:
    """Run the stage (skipped when its manifest is current); returns the manifest."""
    return run_on(Annotate(cfg, llm), executor, progress=progress)


def _llm_rows(
    cfg: AnnotateConfig,
    client: LLMClient,
    docs: list[dict[str, Any]],
    template: str | None,
    writer: PartWriter,
    failures: list[dict[str, Any]],
    bar: Any,
) -> None:
    requests = [
        client.request(
            fill_template(cfg.prompt, text=_clip(d["text"], cfg.max_chars)),
            system=cfg.system_prompt or None,
            **cfg.sampling,
        )
        for d in docs
    ]
    try:
        for doc, res in zip(docs, client.iter_results(requests, bar=bar)):
            if not res.ok:
                failures.append(
                    {"id": doc["id"], "source": doc["source"], "reason": res.error_kind, "error": res.error}
                )
                continue
            parsed = parse_score(res.text or "")
            if parsed is None:
                failures.append(
                    {
                        "id": doc["id"],
                        "source": doc["source"],
                        "reason": "unparseable",
                        "answer": (res.text or "")[-300:],
                    }
                )
                continue
            score, rationale = parsed
            writer.add(
                {
                    "id": doc["id"],
                    "text": doc["text"],
                    "source": doc["source"],
                    "score": score,
                    "label": score >= cfg.threshold,
                    "rationale": rationale,
                    "annotator": "llm",
                    "model": res.response_model or res.request.model,
                    "prompt_hash": template,
                }
            )
    except LLMUnreachableError as e:
        raise LLMUnreachableError(
            f"{e} Offline, label with the heuristic proxy: stage.annotator=heuristic"
        ) from None


def _clip(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[:max_chars] + "\n# ... (truncated)"


def _by(rows: list[dict[str, Any]], key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[str(r.get(key))] = out.get(str(r.get(key)), 0) + 1
    return out


def _score_counts(files: list[Path]) -> dict[str, int]:
    import pyarrow.parquet as pq

    counts: dict[str, int] = {}
    for f in files:
        for s in pq.read_table(f, columns=["score"]).column("score").to_pylist():
            counts[str(s)] = counts.get(str(s), 0) + 1
    return dict(sorted(counts.items()))
