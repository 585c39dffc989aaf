"""Reading a shard: records out, malformed input counted and named, never silently mended.

``read_shard`` yields the records of one ``Shard`` (``textbooks.data.engine.inputs``): dicts with at least ``id``,
``text``, ``source``; a stage output keeps all its columns. A record that is not JSON, lacks a string text, or
holds invalid UTF-8 is counted in ``ReadStats`` with its file and line; a file that cannot be read at all (a
truncated or foreign Parquet file, a truncated gzip) is counted as an unreadable file, named, and skipped. The
stage decides, on the counts summed over all its tasks, whether that exceeds its ``max_bad_fraction``.
"""

from __future__ import annotations

import gzip
import itertools
import json
import logging
import os
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from textbooks.data.engine.inputs import Shard, plan_shards, resolve
from textbooks.errors import DataError

log = logging.getLogger(__name__)
T = TypeVar("T")

EXAMPLES = 10  # malformed records / unreadable files named per task


@dataclass
class ReadStats:
    """What a reader saw: good records, malformed ones, unreadable files, and the first few of each by name.

    Tasks count separately; ``merge`` sums them for the stage, which then calls ``check``."""

    documents: int = 0
    bad: int = 0
    examples: list[str] = field(default_factory=list)
    bad_files: int = 0
    bad_file_examples: list[str] = field(default_factory=list)

    def skip(self, where: str, why: str) -> None:
        self.bad += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(f"{where}: {why}")
        log.warning("skipping %s: %s", where, why)

    def unreadable(self, path: str | os.PathLike, why: str) -> None:
        self.bad_files += 1
        if len(self.bad_file_examples) < EXAMPLES:
            self.bad_file_examples.append(f"{path}: {why}")
        log.warning("unreadable input %s: %s", path, why)

    def check(self, max_bad_fraction: float, what: str) -> None:
        """Raise one ``DataError`` when malformed records and unreadable files exceed the fraction."""
        bad = self.bad + self.bad_files
        total = self.documents + bad
        if total and bad / total > max_bad_fraction:
            files = f" and {self.bad_files} unreadable files" if self.bad_files else ""
            first = "; ".join((self.bad_file_examples + self.examples)[:3])
            raise DataError(
                f"{what}: {self.bad} of {total} records are malformed{files} (more than max_bad_fraction="
                f"{max_bad_fraction}); first ones: {first}. Fix or remove them, or raise stage.max_bad_fraction"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "documents": self.documents,
            "bad": self.bad,
            "bad_examples": self.examples,
            "bad_files": self.bad_files,
            "bad_file_examples": self.bad_file_examples,
        }

    @classmethod
    def merge(cls, parts: Sequence[dict[str, Any]]) -> ReadStats:
        """The sum of tasks' ``to_dict``\\ s (examples kept in task order, up to ``EXAMPLES``)."""
        s = cls()
        for p in parts:
            s.documents += p.get("documents", 0)
            s.bad += p.get("bad", 0)
            s.bad_files += p.get("bad_files", 0)
            s.examples.extend(p.get("bad_examples", []))
            s.bad_file_examples.extend(p.get("bad_file_examples", []))
        s.examples = s.examples[:EXAMPLES]
        s.bad_file_examples = s.bad_file_examples[:EXAMPLES]
        return s


# -- records ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fields:
    """Which JSONL/Parquet fields hold a raw record's text, id, path and language (first present wins)."""

    text: tuple[str, ...] = ("text",)
    id: str = "id"
    path: tuple[str, ...] = ()
    lang: str | None = None


def _first(rec: dict[str, Any], names: Sequence[str]) -> Any:
    for n in names:
        if rec.get(n) is not None:
            return rec[n]
    return None


def _raw_record(rec: Any, where: str, fields: Fields, stats: ReadStats) -> dict[str, Any] | None:
    if not isinstance(rec, dict):
        stats.skip(where, f"a JSON {type(rec).__name__}, not an object")
        return None
    text = _first(rec, fields.text)
    if not isinstance(text, str):
        stats.skip(where, f"no string field among {list(fields.text)}")
        return None
    path = _first(rec, fields.path) if fields.path else None
    out = {
        "id": str(rec[fields.id]) if rec.get(fields.id) is not None else where.rsplit("/", 1)[-1],
        "text": text,
        "source": where,
        "path": "" if path is None else str(path),
    }
    if fields.lang is not None:
        lang = rec.get(fields.lang)
        out["lang"] = None if lang is None else str(lang)
    stats.documents += 1
    return out


def _jsonl(path: Path, label: str, fields: Fields, stats: ReadStats) -> Iterator[dict[str, Any]]:
    lineno = 0
    try:
        with gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                where = f"{label}:{lineno}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    stats.skip(where, f"invalid UTF-8 at byte {e.start} of the line")
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    stats.skip(where, f"JSONDecodeError: {e}")
                    continue
                r = _raw_record(rec, where, fields, stats)
                if r is not None:
                    yield r
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        stats.unreadable(path, f"truncated or corrupt gzip after line {lineno} ({type(e).__name__}: {e})")


def _parquet_file(path: Path, where: str) -> pq.ParquetFile | str:
    """The open file, or why it cannot be read."""
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        return f"not a readable Parquet file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def _parquet(
    path: Path, label: str, fields: Fields, stats: ReadStats, columns: Sequence[str] | None
) -> Iterator[dict[str, Any]]:
    pf = _parquet_file(path, label)
    if isinstance(pf, str):
        stats.unreadable(path, pf)
        return
    names = pf.schema_arrow.names
    if not any(n in names for n in fields.text):
        raise DataError(
            f"{path}: none of the text columns {list(fields.text)} (columns: {names}); set the stage's "
            "text field(s) to the text column"
        )
    wanted = {"id", "source", "path", *fields.text, fields.id, *fields.path, fields.lang or ""}
    keep = names if columns is None else [n for n in names if n in wanted or n in columns]
    row = 0
    try:
        for batch in pf.iter_batches(columns=keep, batch_size=1024):
            for rec in batch.to_pylist():
                where = f"{label}#{row}"
                row += 1
                text = _first(rec, fields.text)
                if not isinstance(text, str):
                    stats.skip(where, f"no string column among {list(fields.text)}")
                    continue
                for name in fields.text:
                    rec.pop(name, None)
                rec["text"] = text
                rec["id"] = (
                    str(rec[fields.id]) if rec.get(fields.id) is not None else f"{path.name}#{row - 1}"
                )
                rec["source"] = where if rec.get("source") is None else str(rec["source"])
                if fields.path:
                    path_value = _first(rec, fields.path)
                    rec["path"] = "" if path_value is None else str(path_value)
                if fields.lang is not None:
                    lang = rec.get(fields.lang)
                    rec["lang"] = None if lang is None else str(lang)
                stats.documents += 1
                yield rec
    except (pa.ArrowInvalid, OSError) as e:
        stats.unreadable(path, f"unreadable after row {row} ({type(e).__name__}: {e})")


def _source_files(
    shard: Shard,
    stats: ReadStats,
    raw: bool,
    max_bytes: int | None,
    select: Callable[[str, int], bool] | None,
) -> Iterator[dict[str, Any]]:
    root = Path(shard.root)
    for name in shard.files:
        p = Path(name)
        rel = p.relative_to(root).as_posix()
        rec: dict[str, Any] = {"id": rel, "text": None, "source": str(p), "path": rel}
        try:
            rec["bytes"] = size = p.stat().st_size
            if (max_bytes is not None and size > max_bytes) or (select is not None and not select(rel, size)):
                if raw:  # the caller filters and counts it
                    yield rec
                continue
            data = p.read_bytes()
        except OSError as e:
            stats.unreadable(p, f"{type(e).__name__}: {e}")
            continue
        try:
            rec["text"] = data.decode("utf-8")
        except UnicodeDecodeError as e:
            if not raw:
                stats.skip(str(p), f"invalid UTF-8 at byte {e.start}")
                continue
            rec["decode_error"] = True
        stats.documents += 1
        yield rec


def read_shard(
    shard: Shard,
    stats: ReadStats,
    *,
    fields: Fields = Fields(),
    columns: Sequence[str] | None = None,
    max_bytes: int | None = None,
    select: Callable[[str, int], bool] | None = None,
    raw: bool = False,
) -> Iterator[dict[str, Any]]:
    """Records of one shard in order: ``id``, ``text``, ``source``, ``path`` and, for Parquet, its columns
    (only ``columns`` when given, plus the ones ``fields`` name).

    Source files: ``id`` and ``path`` are the path relative to the input directory, ``bytes`` the file size;
    files over ``max_bytes`` or rejected by ``select(path, size)`` are not read. JSONL/Parquet records without
    an id field get ``<file name>:<line>`` / ``<file name>#<row>``. With ``raw`` (ingest, which filters and counts by reason)
    an unread file is yielded with ``text=None`` and an undecodable one with ``decode_error=True`` instead of
    being counted as malformed."""
    if shard.kind == "files":
        yield from _source_files(shard, stats, raw, max_bytes, select)
        return
    for name in shard.files:
        p = Path(name)
        label = shard.label
        if label.startswith("hf:"):
            label = f"{label}/{p.relative_to(shard.root).as_posix()}"
        else:
            label = str(p)
        if shard.kind == "jsonl":
            yield from _jsonl(p, label, fields, stats)
        else:
            yield from _parquet(p, label, fields, stats, columns)


def read_texts(
    inputs: Sequence[Any],
    *,
    pattern: str = "**/*.py",
    max_bytes: int | None = None,
    stats: ReadStats | None = None,
    where: str = "input",
) -> Iterator[str]:
    """The texts of every document of ``inputs``, in order (for consumers of all of them: BPE training)."""
    stats = stats if stats is not None else ReadStats()
    for shard in plan_shards([resolve(i, where=where) for i in inputs], pattern=pattern):
        for rec in read_shard(shard, stats, columns=(), max_bytes=max_bytes):
            yield rec["text"]


def batched(it: Iterable[T], n: int) -> Iterator[list[T]]:
    """Lists of ``n`` items (the last one shorter)."""
    it = iter(it)
    while batch := list(itertools.islice(it, n)):
        yield batch


def shard_schema(shards: Sequence[Shard], base: pa.Schema) -> pa.Schema:
    """``base``'s columns, then the Parquet columns every Parquet shard has (typed as in the first), so a
    stage passes through the columns earlier stages added. Unreadable files are left to the readers."""
    schemas = []
    for s in shards:
        if s.kind != "parquet":
            return base
        for f in s.files:
            pf = _parquet_file(Path(f), f)
            if not isinstance(pf, str):
                schemas.append(pf.schema_arrow)
    if not schemas:
        return base
    names = set.intersection(*(set(s.names) for s in schemas))
    extra = [f for f in schemas[0] if f.name in names and f.name not in base.names]
    return pa.schema([*base, *extra])
