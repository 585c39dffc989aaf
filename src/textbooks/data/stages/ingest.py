"""Stage ``ingest``: read raw code corpora, filter them as The Stack / Codex / StarCoder did, write Parquet.

Inputs (``stage.inputs``, a list, read in order; see ``textbooks.data.engine.reader``):

* a directory of source files (``pattern`` selects them; ``site-packages`` below a root is skipped),
* a JSONL file or a directory of JSONL files (``text_fields`` name the text, e.g. ``text`` or ``content``),
* a Parquet file or directory, including The Stack's schema (``content``, ``max_stars_repo_path``, ``lang``…),
* ``stdlib`` (the Python standard library) and ``site-packages`` (the running environment's),
* ``{hf: <dataset repo>, allow_patterns: [...], revision: ...}``: Parquet files of a Hugging Face dataset,
  fetched with ``huggingface_hub.snapshot_download`` (only when the hub is reachable), then read like
  local Parquet.

The inputs are cut into shards (a JSONL/Parquet file each, runs of ~``shard_bytes`` of source files); each
task filters its shards and writes one part per shard, so the output does not depend on the number of tasks.
Every document passes the filters in ``FILTERS`` order and is dropped at the first it fails; the manifest
counts drops per reason. Output columns: ``id`` (content hash + hash of the path, stable across machines),
``text``, ``source`` (provenance: file path, ``file:line`` or ``file#row``, ``hf:<repo>/<file>#row``),
``path`` (path inside the input or repository), ``bytes``, ``lang``.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from textbooks.config import dataclass_from
from textbooks.data.engine.executor import ExecutorConfig
from textbooks.data.engine.executor import run as run_on
from textbooks.data.engine.inputs import Shard, Source, plan_shards, resolve
from textbooks.data.engine.parquet import PartWriter
from textbooks.data.engine.reader import Fields, ReadStats, read_shard
from textbooks.data.engine.stage import Stage, Step, Task, execution_only, summed
from textbooks.errors import ConfigError

log = logging.getLogger(__name__)


# Filter reasons, in the order they are applied.
FILTERS = (
    "language",  # extension / lang column not among `languages`
    "too_large",  # more than max_bytes
    "decode_error",  # not UTF-8
    "too_small",  # fewer than min_bytes
    "max_line_length",  # a line longer than max_line_length characters
    "avg_line_length",  # mean line length above max_avg_line_length
    "alphanum_fraction",  # fewer alphanumeric characters than min_alphanum_fraction
    "auto_generated",  # a generated-code marker in the first lines
)

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("path", pa.string()),
        ("bytes", pa.int64()),
        ("lang", pa.string()),
    ]
)

_NOT_ALNUM = re.compile(r"[\W_]+")


@dataclass
class IngestConfig:
    # paths, "stdlib", "site-packages", or {hf: repo, allow_patterns: [...], revision: ...}
    inputs: list[Any]
    out_dir: str
    languages: list[str] = field(default_factory=lambda: ["python"])
    # language -> file extensions (lower case, with the dot)
    extensions: dict[str, list[str]] = field(default_factory=lambda: {"python": [".py", ".pyw"]})
    default_lang: str | None = "python"  # for records with neither a lang column nor a known extension
    pattern: str = "**/*"  # files considered inside source directories
    text_fields: list[str] = field(default_factory=lambda: ["content", "text"])  # first present wins
    path_fields: list[str] = field(default_factory=lambda: ["max_stars_repo_path", "path"])
    lang_field: str = "lang"
    min_bytes: int = 1
    max_bytes: int = 1_000_000
    max_line_length: int = 1000
    max_avg_line_length: float = 100.0
    min_alphanum_fraction: float = 0.25
    generated_markers: list[str] = field(
        default_factory=lambda: [r"auto-?generated", r"automatically generated", r"do not edit"]
    )
    generated_header_lines: int = 5
    shard_bytes: int = 8 << 20  # source files per shard (a JSONL/Parquet file is a shard of its own)
    rows_per_group: int = execution_only(10_000)  # Parquet row group size of the output parts
    max_bad_fraction: float = execution_only(0.01)  # malformed records / unreadable files tolerated
    hf_cache_dir: str | None = execution_only(None)  # huggingface_hub cache (default: its own)
    name: str = "ingest"  # the stage (conf/stage/ingest.yaml)


@dataclass
class Record:
    """One raw document before filtering."""

    text: str | None  # None when it was not read (wrong language, too large) or could not be decoded
    source: str
    path: str
    lang: str | None
    size: int


class Filters:
    """The corpus filters of ``IngestConfig``; ``reason(record)`` is the first filter it fails, or None."""

    def __init__(self, cfg: IngestConfig) -> None:
        self.cfg = cfg
        self.languages = {lang.lower() for lang in cfg.languages}
        self.ext_lang = {e.lower(): lang.lower() for lang, exts in cfg.extensions.items() for e in exts}
        self.markers = [re.compile(m, re.IGNORECASE) for m in cfg.generated_markers]

    def lang_of(self, path: str, lang: str | None) -> str | None:
        if lang:
            return lang.lower()
        name = path.lower()
        for ext, language in self.ext_lang.items():
            if name.endswith(ext):
                return language
        return None

    def reads(self, path: str, size: int) -> bool:
        """Whether a source file is read at all: one in a wanted language, at most ``max_bytes``."""
        return (
            not self.languages or self.lang_of(path, None) in self.languages
        ) and size <= self.cfg.max_bytes

    def reason(self, r: Record) -> str | None:
        c = self.cfg
        if self.languages and (r.lang or "") not in self.languages:
            return "language"
        if r.size > c.max_bytes:
            return "too_large"
        if r.text is None:
            return "decode_error"
        if r.size < c.min_bytes:
            return "too_small"
        lines = r.text.splitlines() or [""]
        if max(map(len, lines)) > c.max_line_length:
            return "max_line_length"
        if len(r.text) / len(lines) > c.max_avg_line_length:
            return "avg_line_length"
        if r.text and len(_NOT_ALNUM.sub("", r.text)) / len(r.text) < c.min_alphanum_fraction:
            return "alphanum_fraction"
        head = "\n".join(lines[: c.generated_header_lines])
        if any(m.search(head) for m in self.markers):
            return "auto_generated"
        return None


def doc_id(text: str, key: str) -> str:
    """A stable id: 16 hex of the content hash + 8 hex of the hash of ``key`` (its path or row)."""
    content = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{content}-{hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


class Ingest(Stage):
    """Filter each shard of the inputs into ``part-<shard>.parquet``."""

    name = "ingest"

    def __init__(self, cfg: IngestConfig) -> None:
        inputs = list(cfg.inputs) if isinstance(cfg.inputs, (list, tuple)) else [cfg.inputs]
        if not inputs:
            raise ConfigError(
                "ingest: stage.inputs is empty; list source directories, JSONL or Parquet files"
            )
        for m in cfg.generated_markers:
            try:
                re.compile(m)
            except re.error as e:
                raise ConfigError(
                    f"ingest: generated_markers entry {m!r} is not a regular expression: {e}"
                ) from e
        self.config = cfg
        self.sources: list[Source] = [
            resolve(s, where="ingest", cache_dir=cfg.hf_cache_dir, fix="fix stage.inputs") for s in inputs
        ]
        self.inputs = [s.path for s in self.sources]
        self.pattern = cfg.pattern

    def plan(self) -> dict[str, Any]:
        cfg = self.config
        shards = plan_shards(
            self.sources, pattern=cfg.pattern, shard_bytes=cfg.shard_bytes, select=Filters(cfg).reads
        )
        return {"shards": [s.to_dict() for s in shards], "labels": [s.label for s in self.sources]}

    def steps(self) -> list[Step]:
        return [Step("filter", "filter")]

    def filter(self, task: Task) -> dict[str, Any]:
        cfg = self.config
        filters = Filters(cfg)
        fields = Fields(tuple(cfg.text_fields), "id", tuple(cfg.path_fields), cfg.lang_field)
        shards = [Shard.from_dict(d) for d in task.plan["shards"]]
        bar = task.bar("ingest")

        def one(i: int) -> dict[str, Any]:
            shard, stats, dropped = shards[i], ReadStats(), Counter()
            seen = kept = kept_bytes = 0
            with PartWriter(task.publish_path(f"part-{i:05d}.parquet"), SCHEMA, cfg.rows_per_group) as w:
                for rec in read_shard(shard, stats, fields=fields, select=filters.reads, raw=True):
                    r = _record(rec, shard, cfg, filters)
                    seen += 1
                    bar.update()
                    why = filters.reason(r)
                    if why is not None:
                        dropped[why] += 1
                        continue
                    assert r.text is not None
                    kept += 1
                    kept_bytes += r.size
                    w.add(
                        {
                            "id": doc_id(r.text, r.path or r.source),
                            "text": r.text,
                            "source": r.source,
                            "path": r.path,
                            "bytes": r.size,
                            "lang": r.lang,
                        }
                    )
            return {
                "input": shard.input,
                "seen": seen,
                "kept": kept,
                "bytes": kept_bytes,
                "filtered": dict(dropped),
                "read": stats.to_dict(),
            }

        try:
            return task.each_shard(len(shards), one)
        finally:
            bar.close()

    def summarize(self, task: Task) -> dict[str, Any]:
        shards = task.shard_stats("filter")
        labels = task.plan["labels"]
        read = task.reads("filter", self.config.max_bad_fraction, f"ingest {labels}")
        total = summed(shards, ("seen", "kept", "bytes", "filtered"))
        per_input = [
            {
                "input": label,
                "path": path,
                "seen": 0,
                "kept": 0,
                **summed([s for s in shards if s["input"] == i], ("seen", "kept")),
            }
            for i, (label, path) in enumerate(zip(labels, self.inputs))
        ]
        log.info(
            "ingest: kept %d of %d documents; dropped %s",
            total.get("kept", 0),
            total.get("seen", 0),
            total.get("filtered", {}),
        )
        return {
            "documents": total.get("kept", 0),
            "seen": total.get("seen", 0),
            "bytes": total.get("bytes", 0),
            "filtered": {k: total.get("filtered", {}).get(k, 0) for k in FILTERS},
            "malformed": read.bad + read.bad_files,
            "malformed_examples": read.bad_file_examples + read.examples,
            "read": read.to_dict(),
            "per_input": per_input,
            "parts": [f"part-{i:05d}.parquet" for i in range(len(task.plan["shards"]))],
        }


def _record(rec: dict[str, Any], shard: Shard, cfg: IngestConfig, filters: Filters) -> Record:
    """A raw reader record as a ``Record``: language from the lang field, the extension or the default."""
    text = rec["text"]
    if shard.kind == "files":
        lang = filters.lang_of(rec["path"], None)
        return Record(
            None if rec.get("decode_error") else text, rec["source"], rec["path"], lang, rec["bytes"]
        )
    lang = filters.lang_of(rec["path"], rec.get(cfg.lang_field)) or (cfg.default_lang or "").lower() or None
    return Record(text, rec["source"], rec["path"], lang, len(text.encode("utf-8", "surrogatepass")))


def ingest(
    cfg: IngestConfig, executor: ExecutorConfig | None = None, *, progress: bool = True
) -> dict[str, Any]:
    """Read, filter and write ``cfg.inputs`` to ``cfg.out_dir``; returns the manifest (skipped if current)."""
    return run_on(Ingest(cfg), executor, progress=progress)


CONFIG = IngestConfig  # the schema of conf/stage/ingest.yaml (registered as stage/ingest_schema)


def from_config(cfg: Any) -> Ingest:
    """The stage ``textbooks-data stage=ingest`` runs: filter ``stage.inputs`` into ``stage.out_dir``."""
    return Ingest(dataclass_from(IngestConfig, cfg.stage, "stage ingest"))
