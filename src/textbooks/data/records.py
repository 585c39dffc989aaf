"""Rows between stages: reading earlier stages' outputs (or raw inputs) as records, and writing a stage's
Parquet output so that it appears only when complete.

* ``iter_records``: rows of Parquet stage outputs with all their columns, or documents of raw inputs
  (source directories, JSONL) as ``{id, text, source}``; ``common_columns`` is the schema they share.
* ``StagedOutput``: write into a hidden directory, publish into the stage directory only on success.
* ``check_inputs_exist``, ``as_list``, ``batched``: the small checks and helpers every stage uses.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from textbooks.data.documents import PARQUET_SUFFIXES, DataError, ReadStats, iter_documents
from textbooks.data.manifest import Stage, read_manifest
from textbooks.data.parquet import ShardWriter, part_files

T = TypeVar("T")


def as_list(value: Any) -> list[Any]:
    """A config value that may be one item or a list, as a list."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def is_stage_output(path: Path) -> bool:
    """A directory of Parquet parts (an earlier stage's output) or a single Parquet file."""
    return (path.is_dir() and any(path.glob("*.parquet"))) or (
        path.is_file() and path.name.endswith(PARQUET_SUFFIXES)
    )


def check_inputs_exist(paths: list[str | os.PathLike], stage: str) -> None:
    """Fail before anything is written when an input is missing, naming the fix."""
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise DataError(
                f"{stage}: input {p} does not exist; run the stage that writes it first or set "
                "stage.inputs to existing paths"
            )


def iter_records(
    paths: list[str | os.PathLike],
    *,
    columns: list[str] | None = None,
    pattern: str = "**/*.py",
    stats: ReadStats | None = None,
    max_bytes: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Records (dicts with at least ``id``, ``text``, ``source``) of each input in order.

    Parquet inputs (stage outputs) keep all their columns (or ``columns``); a missing ``id``/``source``
    becomes ``file#row``. Source directories and JSONL go through ``iter_documents``.
    """
    stats = stats if stats is not None else ReadStats()
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise DataError(f"input {p} does not exist")
        if not is_stage_output(p):
            for d in iter_documents([p], pattern=pattern, max_bytes=max_bytes, stats=stats):
                yield {"id": d.id, "text": d.text, "source": d.source}
            continue
        for f in [p] if p.is_file() else part_files(p):
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            if "text" not in names:
                raise DataError(
                    f"{f}: no 'text' column (columns: {names}); it is not a document stage output"
                )
            cols = None if columns is None else [c for c in columns if c in names]
            row = 0
            for batch in pf.iter_batches(columns=cols, batch_size=2048):
                for rec in batch.to_pylist():
                    where = f"{f}#{row}"
                    row += 1
                    if not isinstance(rec.get("text"), str):
                        stats.skip(where, "text is not a string")
                        continue
                    rec["id"] = where if rec.get("id") is None else str(rec["id"])
                    rec["source"] = where if rec.get("source") is None else str(rec["source"])
                    stats.documents += 1
                    yield rec


def common_columns(paths: list[str | os.PathLike]) -> pa.Schema:
    """The columns every input has, typed as in the first (``id``, ``text``, ``source`` always)."""
    base = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string())])
    schemas = []
    for raw in paths:
        p = Path(raw)
        files = [p] if p.is_file() else part_files(p)
        if not is_stage_output(p) or not files:
            return base
        schemas.append(pq.read_schema(files[0]))
    if not schemas:
        return base
    names = set.intersection(*(set(s.names) for s in schemas))
    extra = [f for f in schemas[0] if f.name in names and f.name not in base.names]
    return pa.schema([*base, *extra])


class StagedOutput:
    """Outputs written into a hidden directory inside ``out_dir`` and moved into place only when complete.

    A killed or failed run leaves the previous outputs untouched (the hidden directory of a killed run is
    removed by the next one); ``publish`` replaces the old Parquet parts with the new files.
    """

    PREFIX = ".staging-"

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for old in self.out_dir.glob(self.PREFIX + "*"):
            shutil.rmtree(old, ignore_errors=True)
        self.dir = self.out_dir / f"{self.PREFIX}{os.getpid()}"
        self.dir.mkdir()

    def writer(self, subdir: str = "", *, schema: pa.Schema, rows_per_shard: int) -> ShardWriter:
        return ShardWriter(self.dir / subdir, rows_per_shard=rows_per_shard, schema=schema)

    def publish(self, stage: Stage) -> list[str]:
        """Invalidate the old manifest, replace old parts with the staged files; returns their paths."""
        old_manifest = read_manifest(self.out_dir) or {}
        stage.prepare()
        subdirs = {p.name for p in self.dir.iterdir() if p.is_dir()}
        subdirs |= {Path(o["path"]).parent.as_posix() for o in old_manifest.get("outputs", [])}
        for sub in sorted(subdirs | {"."}):
            for old in (self.out_dir / sub).glob("part-*.parquet"):
                old.unlink()
        outputs = []
        for f in sorted(q for q in self.dir.rglob("*") if q.is_file()):
            rel = f.relative_to(self.dir)
            (self.out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, self.out_dir / rel)
            outputs.append(str(rel))
        shutil.rmtree(self.dir, ignore_errors=True)
        return outputs

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def batched(it: Iterable[T], n: int) -> Iterator[list[T]]:
    """Lists of ``n`` items (the last one shorter)."""
    it = iter(it)
    while batch := list(itertools.islice(it, n)):
        yield batch
