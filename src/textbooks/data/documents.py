"""Read documents from directories of source files, JSONL files and Parquet shards.

Every reader yields ``Document(id, text, source)`` in a deterministic order, so stages that split their
input into shards by position get the same shards on every run. Malformed input (an undecodable file, a
broken JSONL line, a record without text) is counted in ``ReadStats`` and skipped; it becomes an error only
when it exceeds ``max_bad_fraction`` of what was read.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from textbooks.errors import DataError
from textbooks.io import list_source_files

log = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    source: str  # where it came from: a file path, or "path:line" for JSONL


@dataclass
class ReadStats:
    """What a reader saw: good documents, skipped ones and a few examples of why."""

    documents: int = 0
    bad: int = 0
    examples: list[str] = field(default_factory=list)

    def skip(self, where: str, why: str) -> None:
        self.bad += 1
        if len(self.examples) < 10:
            self.examples.append(f"{where}: {why}")
        log.warning("skipping %s: %s", where, why)

    def check(self, max_bad_fraction: float, what: str) -> None:
        total = self.documents + self.bad
        if total and self.bad / total > max_bad_fraction:
            raise DataError(
                f"{what}: {self.bad} of {total} records are malformed (more than max_bad_fraction="
                f"{max_bad_fraction}); first ones: " + "; ".join(self.examples[:3])
            )

    def to_dict(self) -> dict:
        return {"documents": self.documents, "bad": self.bad, "bad_examples": self.examples}


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _from_dir(root: Path, pattern: str, max_bytes: int | None, stats: ReadStats) -> Iterator[Document]:
    for p in list_source_files(root, pattern, max_bytes):
        try:
            text = p.read_bytes().decode("utf-8")
        except (UnicodeDecodeError, OSError) as e:
            stats.skip(str(p), f"{type(e).__name__}: {e}")
            continue
        stats.documents += 1
        yield Document(id=str(p.relative_to(root)), text=text, source=str(p))


def _from_jsonl(path: Path, text_field: str, id_field: str, stats: ReadStats) -> Iterator[Document]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
                text = rec[text_field]
                if not isinstance(text, str):
                    raise TypeError(f"field {text_field!r} is {type(text).__name__}, not a string")
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                stats.skip(where, f"{type(e).__name__}: {e}")
                continue
            stats.documents += 1
            yield Document(id=str(rec.get(id_field, f"{path.name}:{lineno}")), text=text, source=where)


def _from_parquet(path: Path, text_field: str, id_field: str, stats: ReadStats) -> Iterator[Document]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if text_field not in names:
        raise DataError(
            f"{path}: no column {text_field!r} (columns: {names}); set text_field to the text column"
        )
    cols = [text_field] + ([id_field] if id_field in names else [])
    row = 0
    for batch in pf.iter_batches(columns=cols, batch_size=4096):
        texts = batch.column(text_field).to_pylist()
        ids = batch.column(id_field).to_pylist() if id_field in names else [None] * len(texts)
        for text, doc_id in zip(texts, ids):
            where = f"{path}#{row}"
            row += 1
            if not isinstance(text, str):
                stats.skip(where, f"{text_field!r} is {type(text).__name__}")
                continue
            stats.documents += 1
            yield Document(
                id=str(doc_id if doc_id is not None else f"{path.name}#{row - 1}"), text=text, source=where
            )


def input_kind(path: Path) -> str:
    """``"jsonl"``, ``"parquet"`` or ``"files"`` (a directory of source files)."""
    name = path.name
    if path.is_file():
        if name.endswith(JSONL_SUFFIXES):
            return "jsonl"
        if name.endswith(PARQUET_SUFFIXES):
            return "parquet"
        return "files"
    if path.is_dir() and any(path.glob("*.parquet")):
        return "parquet"
    if path.is_dir() and any(p.name.endswith(JSONL_SUFFIXES) for p in path.iterdir()):
        return "jsonl"
    return "files"


def iter_documents(
    paths: Iterable[str | os.PathLike],
    *,
    pattern: str = "**/*.py",
    text_field: str = "text",
    id_field: str = "id",
    max_bytes: int | None = None,
    stats: ReadStats | None = None,
) -> Iterator[Document]:
    """Documents from each path in order: a source directory, a JSONL file, a Parquet file, or a
    directory of JSONL/Parquet shards (read in sorted order)."""
    stats = stats if stats is not None else ReadStats()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise DataError(f"input {path} does not exist")
        kind = input_kind(path)
        if kind == "files":
            if path.is_file():
                files = [path]
                root = path.parent
                for p in files:
                    yield from _from_dir(root, p.name, max_bytes, stats)
            else:
                yield from _from_dir(path, pattern, max_bytes, stats)
        else:
            suffixes = JSONL_SUFFIXES if kind == "jsonl" else PARQUET_SUFFIXES
            files = (
                [path] if path.is_file() else sorted(p for p in path.iterdir() if p.name.endswith(suffixes))
            )
            for f in files:
                reader = _from_jsonl if kind == "jsonl" else _from_parquet
                yield from reader(f, text_field, id_field, stats)


def iter_texts(paths: Iterable[str | os.PathLike], **kwargs) -> Iterator[str]:
    """Just the texts of ``iter_documents``."""
    for doc in iter_documents(paths, **kwargs):
        yield doc.text
