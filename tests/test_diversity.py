"""Diversity measures on texts whose answer is known: repeated, varied and near-copied generations."""

from __future__ import annotations

from pathlib import Path

import pytest

from textbooks.data.text.diversity import distinct_n, diversity, near_duplicate_rate


def test_distinct_n_counts_repeated_ngrams() -> None:
    assert distinct_n(["a b c d"], 1) == 1.0
    assert distinct_n(["a b a b"], 1) == 0.5 and distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["x y", "x y"], 2) == 0.5  # the same text twice
    assert distinct_n([], 3) == 0.0 and distinct_n(["one"], 2) == 0.0


def test_near_duplicates_of_real_modules(stdlib_dir: Path) -> None:
    originals = [(stdlib_dir / n).read_text() for n in ("textwrap.py", "shlex.py", "fnmatch.py", "glob.py")]
    copies = [originals[0].replace("width", "columns"), originals[1] + "\n# one more comment\n"]
    assert near_duplicate_rate(originals) == 0.0
    assert near_duplicate_rate(originals + copies) == pytest.approx(2 / 6)


def test_report_per_group_shows_the_dimension_that_does_not_diversify(stdlib_dir: Path) -> None:
    text = (stdlib_dir / "textwrap.py").read_text()
    rows = [{"text": text, "topic": "loops", "audience": a} for a in ("kids", "adults")]
    rows += [
        {"text": (stdlib_dir / n).read_text(), "topic": "io", "audience": "kids"}
        for n in ("glob.py", "shlex.py")
    ]
    d = diversity(rows, ["topic", "audience"])
    assert d["all"]["count"] == 4 and d["all"]["near_duplicate_rate"] == 0.25
    assert (
        d["topic"]["loops"]["near_duplicate_rate"] == 0.5 and d["topic"]["io"]["near_duplicate_rate"] == 0.0
    )
    assert d["topic"]["loops"]["distinct_4"] < d["topic"]["io"]["distinct_4"]
    assert set(d["audience"]) == {"kids", "adults"}
