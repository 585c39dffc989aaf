"""Figure 2.1's drawing from a runs table: the pass@1 panel is in percent (bars, axis, labels) like the printed
tables, and bits/byte panels keep their units."""

from __future__ import annotations

import pandas as pd
import pytest

from textbooks.report.plots import bars_table, plot_figure_2_1


def runs() -> pd.DataFrame:
    """Two pretraining datasets, two seeds each, pass@1 as the runs table holds it (a fraction)."""
    passed = {"stack_plus": (0.0, 0.2), "filtered": (0.4, 0.6)}
    return pd.DataFrame(
        [
            dict(
                run_name=f"pretrain-{d}-s{seed}",
                status="complete",
                stage="pretrain",
                dataset=d,
                model="cpu_tiny",
                params=1e5,
                tokens=40_000,
                seed=seed,
                **{"humaneval_pass@1": p, "humaneval_bpb": 3.0 + p},
            )
            for d, ps in passed.items()
            for seed, p in enumerate(ps)
        ]
    )


def test_pass_at_1_is_drawn_in_percent_as_the_bars_table_gives_it():
    r = runs()
    fig = plot_figure_2_1(r, ("humaneval_pass@1", "humaneval_bpb"), title="Figure 2.1 (cpu_tiny)")
    passk, bpb = fig.axes[:2]
    table = bars_table(r, "humaneval_pass@1")
    assert list(table["mean"]) == pytest.approx([10.0, 50.0])  # the fractions' means, in percent
    assert [p.get_height() for p in passk.patches] == pytest.approx(list(table["mean"]))
    assert [t.get_text() for t in passk.texts] == ["10%", "50%"]
    assert "(%)" in passk.get_ylabel() and passk.get_ylim()[1] > 50.0
    fig.canvas.draw()
    ticks = [t.get_text() for t in passk.get_yticklabels() if t.get_text()]
    assert ticks and all(t.endswith("%") for t in ticks), ticks
    assert [p.get_height() for p in bpb.patches] == pytest.approx([3.1, 3.5])  # bits/byte as they are
    assert not any(t.get_text().endswith("%") for t in bpb.texts)
    assert fig._suptitle.get_text().startswith("Figure 2.1 (cpu_tiny)")


def test_a_pass_at_1_of_zero_reads_as_zero_percent():
    r = runs().assign(**{"humaneval_pass@1": 0.0})
    ax = plot_figure_2_1(r, ("humaneval_pass@1",)).axes[0]
    assert ax.get_ylim() == (0.0, 10.0)  # not a 0-1 axis that reads as fractions
    assert [t.get_text() for t in ax.texts] == ["0%", "0%"]
