"""Parquet document parts: ``part-00000.parquet`` files written atomically, read back in order.

Every stage that produces documents writes one part per shard with ``PartWriter`` (columns at least ``id``,
``text``, ``source``, plus the stage's own columns); its manifest lists them (``textbooks.data.engine.stage``).
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
    ``close``. An empty part holds the schema (so parts stay aligned with the shards they came from), or,
    with ``keep_empty=False``, is not written at all."""

    def __init__(
        self,
        path: str | os.PathLike,
        schema: pa.Schema,
        rows_per_group: int = 10_000,
        keep_empty: bool = True,
    ) -> None:
        self.path = Path(path)
        self.schema = schema
        self.rows_per_group = rows_per_group
        self.keep_empty = keep_empty
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

    def close(self) -> Path | None:
        self._flush()
        self.writer.close()
        if not self.count and not self.keep_empty:
            self.tmp.unlink(missing_ok=True)
            return None
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


def part_files(directory: str | os.PathLike) -> list[Path]:
    """The Parquet parts of a stage output, in order."""
    return sorted(Path(directory).glob("*.parquet"))


def read_table(directory: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """All parts of a stage output as one table."""
    files = part_files(directory)
    if not files:
        from textbooks.errors import DataError

        raise DataError(f"no Parquet parts in {directory}: run the stage that writes it first")
    return pa.concat_tables(pq.read_table(f, columns=columns) for f in files)


def iter_rows(
    directory: str | os.PathLike, columns: list[str] | None = None, batch_size: int = 4096
) -> Iterator[dict[str, Any]]:
    """Rows of all parts, in order, as dicts."""
    for f in part_files(directory):
        for batch in pq.ParquetFile(f).iter_batches(columns=columns, batch_size=batch_size):
            yield from batch.to_pylist()
