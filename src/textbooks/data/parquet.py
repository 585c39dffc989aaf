"""Parquet document shards: ``part-00000.parquet`` files written atomically, read back in order.

Every stage that produces documents writes them with ``ShardWriter`` (columns at least ``id``, ``text``,
``source``, plus the stage's own columns) and finishes with a ``manifest.json`` (``textbooks.data.manifest``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from textbooks.io import atomic_path

PART = "part-{:05d}.parquet"


def write_table(path: str | os.PathLike, table: pa.Table) -> None:
    """Write one Parquet file atomically (temporary name, then rename)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


class PartWriter:
    """One Parquet part streamed row group by row group into a temporary name, renamed into place on
    ``close`` (an empty part still holds the schema, so parts stay aligned with the shards they came from)."""

    def __init__(self, path: str | os.PathLike, schema: pa.Schema, rows_per_group: int = 10_000) -> None:
        self.path = Path(path)
        self.schema = schema
        self.rows_per_group = rows_per_group
        self.rows: list[dict[str, Any]] = []
        self.count = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.writer = pq.ParquetWriter(self.tmp, schema, compression="zstd")

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.count += 1
        if len(self.rows) >= self.rows_per_group:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self) -> Path:
        self._flush()
        self.writer.close()
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        self.writer.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            self.discard()


class ShardWriter:
    """Buffer rows and write them as numbered Parquet parts of at most ``rows_per_shard`` rows."""

    def __init__(
        self, out_dir: str | os.PathLike, rows_per_shard: int = 50_000, schema: pa.Schema | None = None
    ):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.rows_per_shard = rows_per_shard
        self.schema = schema
        self.rows: list[dict[str, Any]] = []
        self.files: list[Path] = []
        self.count = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.count += 1
        if len(self.rows) >= self.rows_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        table = pa.Table.from_pylist(self.rows, schema=self.schema)
        self.schema = self.schema or table.schema
        path = self.out_dir / PART.format(len(self.files))
        write_table(path, table)
        self.files.append(path)
        self.rows = []

    def close(self) -> list[Path]:
        """Write what is buffered (an empty output still gets one part with the schema) and list the parts."""
        if self.rows or (not self.files and self.schema is not None):
            table = pa.Table.from_pylist(self.rows, schema=self.schema)
            path = self.out_dir / PART.format(len(self.files))
            write_table(path, table)
            self.files.append(path)
            self.rows = []
        return self.files

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()


def part_files(directory: str | os.PathLike) -> list[Path]:
    """The Parquet parts of a stage output, in order."""
    return sorted(Path(directory).glob("*.parquet"))


def read_table(directory: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """All parts of a stage output as one table."""
    files = part_files(directory)
    if not files:
        from textbooks.data.documents import DataError

        raise DataError(f"no Parquet parts in {directory}: run the stage that writes it first")
    return pa.concat_tables(pq.read_table(f, columns=columns) for f in files)


def iter_rows(
    directory: str | os.PathLike, columns: list[str] | None = None, batch_size: int = 4096
) -> Iterator[dict[str, Any]]:
    """Rows of all parts, in order, as dicts."""
    for f in part_files(directory):
        for batch in pq.ParquetFile(f).iter_batches(columns=columns, batch_size=batch_size):
            yield from batch.to_pylist()
