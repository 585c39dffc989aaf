"""Stage ``ingest``: read raw code corpora, filter them as The Stack / Codex / StarCoder did, write Parquet.

Inputs (``stage.inputs``, a list, read in order):

* a directory of source files (``pattern`` selects them; ``site-packages`` below a root is skipped),
* a JSONL file or a directory of JSONL files (``text_fields`` name the text, e.g. ``text`` or ``content``),
* a Parquet file or directory, including The Stack's schema (``content``, ``max_stars_repo_path``, ``lang``…),
* ``stdlib`` (the Python standard library) and ``site-packages`` (the running environment's),
* ``{hf: <dataset repo>, allow_patterns: [...], revision: ...}``: Parquet files of a Hugging Face dataset,
  fetched with ``huggingface_hub.snapshot_download`` (only when the hub is reachable), then read like
  local Parquet.

Every document passes the filters in ``FILTERS`` order and is dropped at the first it fails; the manifest
counts drops per reason. Output columns: ``id`` (content hash + hash of the path, stable across machines),
``text``, ``source`` (provenance: file path, ``file:line`` or ``file#row``, ``hf:<repo>/<file>#row``),
``path`` (path inside the input or repository), ``bytes``, ``lang``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import sysconfig
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from textbooks.config import dataclass_from
from textbooks.data.documents import JSONL_SUFFIXES, PARQUET_SUFFIXES, DataError, ReadStats, input_kind
from textbooks.data.manifest import Stage, read_manifest
from textbooks.data.records import StagedOutput, as_list
from textbooks.errors import ConfigError
from textbooks.io import list_source_files, stdlib_dir

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


# -- ingest -------------------------------------------------------------------------------------------------
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
    rows_per_shard: int = 50_000
    max_bad_fraction: float = 0.01  # malformed JSONL/Parquet records tolerated before failing
    hf_cache_dir: str | None = None  # huggingface_hub cache (default: its own)


@dataclass
class Record:
    """One raw document before filtering."""

    text: str | None  # None when it could not be decoded
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


def resolve_input(spec: Any, cache_dir: str | None = None) -> tuple[Path, str]:
    """A local path and a provenance label for one input spec (aliases and HF datasets resolved)."""
    if isinstance(spec, dict):
        if "hf" not in spec:
            raise ConfigError(f"ingest: input {spec} is a mapping without 'hf' (a Hugging Face dataset repo)")
        return download_hf_dataset(
            spec["hf"], spec.get("allow_patterns"), spec.get("revision"), cache_dir
        ), f"hf:{spec['hf']}"
    text = str(spec)
    if text == "stdlib":
        return stdlib_dir(), "stdlib"
    if text == "site-packages":
        return Path(sysconfig.get_paths()["purelib"]), "site-packages"
    return Path(text), text


def download_hf_dataset(
    repo: str, allow_patterns: list[str] | str | None, revision: str | None, cache_dir: str | None
) -> Path:
    """Fetch (or find cached) files of a hub dataset, e.g. ``bigcode/the-stack-dedup`` ``data/python/*``."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - huggingface_hub comes with transformers
        raise DataError(
            "ingest: reading a hub dataset needs huggingface_hub (pip install huggingface_hub)"
        ) from e
    try:
        local = snapshot_download(
            repo_id=repo,
            repo_type="dataset",
            allow_patterns=allow_patterns,
            revision=revision,
            cache_dir=cache_dir,
        )
    except Exception as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        why = "HF_HUB_OFFLINE is set" if offline else "the hub is unreachable, or the dataset is gated"
        raise DataError(
            f"ingest: could not get dataset {repo!r} (files {allow_patterns}) from the Hugging Face hub: {why} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Fix: run on a machine with "
            "network (for gated sets such as bigcode/the-stack-dedup accept the terms and set HF_TOKEN), or "
            "download the Parquet files elsewhere and list their directory in stage.inputs"
        ) from e
    return Path(local)


def _first(rec: dict[str, Any], names: list[str]) -> Any:
    for n in names:
        if rec.get(n) is not None:
            return rec[n]
    return None


def _file_records(root: Path, label: str, cfg: IngestConfig, filters: Filters) -> Iterator[Record]:
    files = [root] if root.is_file() else list_source_files(root, cfg.pattern)
    base = root.parent if root.is_file() else root
    for p in files:
        rel = p.relative_to(base).as_posix()
        lang = filters.lang_of(rel, None)
        size = p.stat().st_size
        text = None
        if (not filters.languages or lang in filters.languages) and size <= cfg.max_bytes:
            try:
                text = p.read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                text = None
        yield Record(text=text, source=str(p), path=rel, lang=lang, size=size)


def _row_record(rec: Any, where: str, cfg: IngestConfig, filters: Filters, stats: ReadStats) -> Record | None:
    if not isinstance(rec, dict):
        stats.skip(where, f"a JSON {type(rec).__name__}, not an object")
        return None
    text = _first(rec, cfg.text_fields)
    if not isinstance(text, str):
        stats.skip(where, f"no string field among {cfg.text_fields}")
        return None
    path = _first(rec, cfg.path_fields)
    path = str(path) if path is not None else ""
    lang = filters.lang_of(path, rec.get(cfg.lang_field)) or (cfg.default_lang or "").lower() or None
    stats.documents += 1
    return Record(
        text=text, source=where, path=path, lang=lang, size=len(text.encode("utf-8", "surrogatepass"))
    )


def _jsonl_records(
    path: Path, label: str, cfg: IngestConfig, filters: Filters, stats: ReadStats
) -> Iterator[Record]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{label}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                stats.skip(where, f"JSONDecodeError: {e}")
                continue
            r = _row_record(rec, where, cfg, filters, stats)
            if r is not None:
                yield r


def _parquet_records(
    path: Path, label: str, cfg: IngestConfig, filters: Filters, stats: ReadStats
) -> Iterator[Record]:
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if not any(n in names for n in cfg.text_fields):
        raise DataError(
            f"ingest: {path} has none of the text columns {cfg.text_fields} (columns: {names}); "
            "set stage.text_fields"
        )
    cols = [n for n in {*cfg.text_fields, *cfg.path_fields, cfg.lang_field} if n in names]
    row = 0
    for batch in pf.iter_batches(columns=sorted(cols), batch_size=1024):
        for rec in batch.to_pylist():
            r = _row_record(rec, f"{label}#{row}", cfg, filters, stats)
            row += 1
            if r is not None:
                yield r


def iter_raw(
    root: Path, label: str, cfg: IngestConfig, filters: Filters, stats: ReadStats
) -> Iterator[Record]:
    """Raw records of one resolved input, in a deterministic order."""
    kind = input_kind(root)
    if kind == "files":
        yield from _file_records(root, label, cfg, filters)
        return
    suffixes = JSONL_SUFFIXES if kind == "jsonl" else PARQUET_SUFFIXES
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.name.endswith(suffixes))
    for f in files:
        name = f.name if root.is_file() else f.relative_to(root).as_posix()
        sub = f"{label}/{name}" if label.startswith("hf:") else str(f)
        reader = _jsonl_records if kind == "jsonl" else _parquet_records
        yield from reader(f, sub, cfg, filters, stats)


def ingest(cfg: IngestConfig, *, progress: bool = True) -> dict[str, Any]:
    """Read, filter and write ``cfg.inputs`` to ``cfg.out_dir``; returns the manifest (skipped if current)."""
    inputs = as_list(cfg.inputs)
    if not inputs:
        raise ConfigError("ingest: stage.inputs is empty; list source directories, JSONL or Parquet files")
    for m in cfg.generated_markers:
        try:
            re.compile(m)
        except re.error as e:
            raise ConfigError(
                f"ingest: generated_markers entry {m!r} is not a regular expression: {e}"
            ) from e
    resolved = [resolve_input(spec, cfg.hf_cache_dir) for spec in inputs]
    for path, label in resolved:
        if not path.exists():
            raise DataError(f"ingest: input {label} ({path}) does not exist; fix stage.inputs")
    stage_cfg = {k: v for k, v in asdict(cfg).items() if k not in ("out_dir", "hf_cache_dir")}
    stage = Stage("ingest", cfg.out_dir, stage_cfg, [str(p) for p, _ in resolved], pattern=cfg.pattern)
    if stage.is_current():
        log.info("ingest: %s is current, skipping", cfg.out_dir)
        return read_manifest(cfg.out_dir)  # type: ignore[return-value]

    filters = Filters(cfg)
    stats = ReadStats()
    dropped: Counter[str] = Counter()
    per_input = []
    kept_bytes = 0
    staged = StagedOutput(cfg.out_dir)
    writer = staged.writer(schema=SCHEMA, rows_per_shard=cfg.rows_per_shard)
    bar = tqdm(desc="ingest", unit="doc", disable=not progress)
    try:
        for path, label in resolved:
            seen = kept = 0
            for r in iter_raw(path, label, cfg, filters, stats):
                seen += 1
                bar.update()
                why = filters.reason(r)
                if why is not None:
                    dropped[why] += 1
                    continue
                assert r.text is not None
                kept += 1
                kept_bytes += r.size
                writer.add(
                    {
                        "id": doc_id(r.text, r.path or r.source),
                        "text": r.text,
                        "source": r.source,
                        "path": r.path,
                        "bytes": r.size,
                        "lang": r.lang,
                    }
                )
            per_input.append({"input": label, "path": str(path), "seen": seen, "kept": kept})
        bar.close()
        stats.check(cfg.max_bad_fraction, f"ingest {[label for _, label in resolved]}")
        writer.close()
    except BaseException:
        staged.discard()
        raise
    outputs = staged.publish(stage)
    kept_total = sum(i["kept"] for i in per_input)
    log.info(
        "ingest: kept %d of %d documents; dropped %s",
        kept_total,
        sum(i["seen"] for i in per_input),
        dict(dropped),
    )
    return stage.finish(
        outputs,
        documents=kept_total,
        seen=sum(i["seen"] for i in per_input),
        bytes=kept_bytes,
        filtered={k: dropped.get(k, 0) for k in FILTERS},
        malformed=stats.bad,
        malformed_examples=stats.examples,
        per_input=per_input,
    )


def run_stage(cfg: Any) -> dict[str, Any]:
    """``textbooks-data stage=ingest``: filter ``stage.inputs`` into ``stage.out_dir``."""
    c = dataclass_from(IngestConfig, cfg.stage, "stage ingest")
    c.inputs = as_list(c.inputs)
    return ingest(c, progress=cfg.get("progress", True))
