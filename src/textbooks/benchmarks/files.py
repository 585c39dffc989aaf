"""The benchmark files: the copies this package ships (verified by sha256) and the file a ``path`` or a
``data_dir`` names instead. Each family says which files its benchmarks read (``DataFile``)."""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textbooks.benchmarks.problems import BenchmarkError
from textbooks.io import sha256_file

# The shipped copies; data/SOURCES.md says where each comes from and under which license.
DATA_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class DataFile:
    """The file benchmark ``name`` is read from: ``filename`` in a ``data_dir``, or the copy shipped in
    ``DATA_DIR`` when ``sha256`` (that copy's, checked on every load) is given."""

    name: str
    filename: str
    sha256: str | None = None

    def shipped(self) -> Path:
        """The copy shipped in this package."""
        if self.sha256 is None:
            raise BenchmarkError(f"{self.name}: no copy is shipped with textbooks; pass path=")
        return DATA_DIR / self.filename

    def find(self, path: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None) -> Path:
        """``path``, else ``data_dir``/``filename``, else the shipped copy."""
        if path is not None:
            return Path(path).expanduser()
        if data_dir is not None:
            return Path(data_dir).expanduser() / self.filename
        return self.shipped()

    def source(self, path: str | os.PathLike | None) -> tuple[Path, str, str]:
        """(file, source label, sha256): ``path`` if given, else the verified shipped copy."""
        if path is not None:
            p = Path(path).expanduser()
            if not p.is_file():
                raise BenchmarkError(
                    f"{self.name}: benchmark file not found: {p}. Pass the path of a {self.filename}, "
                    "or no path to use the copy shipped with textbooks"
                )
            return p, str(p), sha256_file(p)
        p = self.shipped()
        if not p.is_file():
            raise BenchmarkError(
                f"{self.name}: the shipped copy {p} is missing; reinstall textbooks (its package data) or "
                "pass path="
            )
        sha = sha256_file(p)
        if sha != self.sha256:
            raise BenchmarkError(
                f"{self.name}: the shipped copy {p} has sha256 {sha[:12]}..., not {str(self.sha256)[:12]}... "
                "(data/SOURCES.md); it was modified: restore it (git checkout / reinstall textbooks)"
            )
        return p, f"textbooks.benchmarks:data/{self.filename}", sha


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    rows, i = [], 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f, 1):  # noqa: B007 (i is reported on error)
                if line.strip():
                    rows.append(json.loads(line))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BenchmarkError(f"cannot read benchmark file {path} (line {i}): {e}") from e
    return rows
