"""The README's "Adding a stage" recipe, done: tests/example_stage.py (a whole stage in ~60 lines) runs through
the local executor with one task and with three on two worker processes, gives the same rows, counts a
malformed input line, is skipped when current, and refuses too many malformed lines with one error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from example_stage import Short, ShortConfig

from textbooks.data.app import stage_module, stage_names
from textbooks.data.engine.executor import ExecutorConfig
from textbooks.data.engine.executor import run as run_on
from textbooks.data.engine.parquet import read_table
from textbooks.errors import DataError


def corpus(root: Path, *, bad_lines: int = 1) -> list[str]:
    """Three JSONL files (three shards) of documents of 1 to 9 lines, and ``bad_lines`` lines that are not
    JSON; returns every document's text."""
    texts = []
    for f in range(3):
        lines = []
        for d in range(12):
            text = "\n".join(f"x_{f}_{d} = {k}" for k in range(1 + (f * 12 + d) % 9))
            texts.append(text)
            lines.append(json.dumps({"id": f"{f}-{d}", "text": text}))
        lines += ["{not json"] * (bad_lines if f == 1 else 0)
        (root / f"docs-{f}.jsonl").write_text("\n".join(lines) + "\n")
    return texts


def rows(out: Path) -> list[tuple[str, str]]:
    table = read_table(out)
    return sorted(zip(table.column("id").to_pylist(), table.column("text").to_pylist()))


def test_an_added_stage_runs_through_the_executors_with_any_number_of_tasks(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    texts = corpus(src)
    files = [str(p) for p in sorted(src.glob("*.jsonl"))]
    one = run_on(
        Short(ShortConfig(str(tmp_path / "one"), files, max_lines=4, max_bad_fraction=0.05)),
        ExecutorConfig(),
        progress=False,
    )
    three = run_on(
        Short(ShortConfig(str(tmp_path / "three"), files, max_lines=4, max_bad_fraction=0.05)),
        ExecutorConfig(tasks=3, workers=2),
        progress=False,
    )
    expected = sum(t.count("\n") < 4 for t in texts)
    assert one["documents"] == three["documents"] == expected == 16
    assert one["malformed"] == three["malformed"] == 1  # counted, below the fraction that fails the stage
    assert rows(tmp_path / "one") == rows(tmp_path / "three") and len(rows(tmp_path / "one")) == expected
    again = run_on(
        Short(ShortConfig(str(tmp_path / "one"), files, max_lines=4, max_bad_fraction=0.05)),
        ExecutorConfig(),
        progress=False,
    )
    assert again == one  # current: skipped, the same manifest


def test_too_many_malformed_lines_stop_the_added_stage_with_one_error(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    corpus(src, bad_lines=5)  # 5 of 41 records: above the default 1%
    files = [str(p) for p in sorted(src.glob("*.jsonl"))]
    with pytest.raises(DataError, match="malformed"):
        run_on(Short(ShortConfig(str(tmp_path / "out"), files)), ExecutorConfig(), progress=False)


def test_stages_are_found_by_their_module_name() -> None:
    names = ["annotate", "classify", "decontaminate", "dedup", "exercises", "ingest", "pack", "textbooks"]
    assert stage_names() == sorted([*names, "tokenizer"])
    assert all(stage_module(n).CONFIG.name == n for n in stage_names())  # type: ignore[union-attr]
    assert stage_module("prompts") is None and stage_module("no_such_stage") is None  # helpers are no stages
    assert stage_module("../app") is None
