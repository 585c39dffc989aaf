"""Figure 2.1 from a runs table (``textbooks-collect``): grouped bars per (model, tokens seen), one bar per
training data, error bars over seeds; plus metric curves against tokens seen."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from textbooks.config import format_count

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# how the paper names the training data of each bar
DATA_LABELS = {
    "stack_plus": "The Stack+",
    "codetextbook": "CodeTextbook",
    "filtered": "Filtered code",
    "stdlib": "Python stdlib",
    "codeexercises": "CodeExercises",
}
BAR_COLORS = ["#7f7f7f", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
METRIC_LABELS = {
    "humaneval_pass@1": "HumanEval pass@1 (%)",
    "humaneval_bpb": "HumanEval gold bits/byte (lower is better)",
    "mbpp_pass@1": "MBPP pass@1 (%)",
    "mbpp_bpb": "MBPP gold bits/byte (lower is better)",
}
PERCENT = ("pass@",)  # metrics stored as fractions, shown (tables, axes, labels) in percent


def is_percent(metric: str) -> bool:
    return any(p in metric for p in PERCENT)


def _label(dataset: str | None, labels: Mapping[str, str] | None = None) -> str:
    return {**DATA_LABELS, **(labels or {})}.get(dataset or "", str(dataset))


def bars_table(runs: pd.DataFrame, metric: str, labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Mean, std and count over seeds of ``metric`` per (group, bar); pass@k in percent (the runs table
    holds fractions).

    Group = model and pretraining tokens seen ("cpu_small, 2M"); bar = the training data: a pretraining
    run's dataset, or "<its base run's data> → <its finetuning data>" for a run finetuned from another run.
    ``labels`` names datasets by what a study's copy of them holds (the demo: "Filtered code + 14 textbook
    sections"); the paper's names otherwise.
    """
    if metric not in runs:
        raise KeyError(
            f"no column {metric!r} in the runs table; columns with metrics: "
            f"{[c for c in runs.columns if 'pass@' in c or c.endswith('bpb')]}"
        )
    df = runs[(runs["status"] == "complete") & runs[metric].notna()].copy()
    finetuned = df["base_run"].notna() if "base_run" in df else pd.Series(False, index=df.index)
    df["pretrain_tokens"] = np.where(finetuned, df.get("base_tokens"), df["tokens"])
    df["bar"] = [
        f"{_label(b, labels)} → {_label(d, labels)}" if f else _label(d, labels)
        for f, b, d in zip(finetuned, df.get("base_dataset", pd.Series(None, index=df.index)), df["dataset"])
    ]
    df["group"] = [f"{m}, {format_count(int(t))}" for m, t in zip(df["model"], df["pretrain_tokens"])]
    df["params"] = df["params"].astype(float) if "params" in df else np.nan
    scale = 100.0 if is_percent(metric) else 1.0
    out = (
        df.assign(value=df[metric].astype(float) * scale)
        .groupby(["group", "bar"], sort=False)
        .agg(
            mean=("value", "mean"),
            std=("value", "std"),
            n=("value", "size"),
            params=("params", "first"),
            pretrain_tokens=("pretrain_tokens", "first"),
        )
        .reset_index()
    )
    out["std"] = out["std"].fillna(0.0)
    out["bar_order"] = [_bar_rank(b) for b in out["bar"]]
    out = out.sort_values(["params", "pretrain_tokens", "bar_order"], kind="stable").reset_index(drop=True)
    return out.drop(columns="bar_order")


def _bar_rank(bar: str) -> tuple[int, str]:
    """The paper's order within a group: The Stack+, then the other pretraining data, then finetunes."""
    if bar.startswith(DATA_LABELS["stack_plus"]) and "→" not in bar:
        return (0, bar)
    return (2, bar) if "→" in bar else (1, bar)


def plot_figure_2_1(
    runs: pd.DataFrame,
    metrics: tuple[str, ...] = ("humaneval_pass@1", "humaneval_bpb"),
    title: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> Figure:
    """Figure 2.1: one panel per metric, grouped bars with error bars over seeds and value labels.

    Percent metrics (pass@k: the values of ``bars_table``, axis ticks and bar labels in %) start at 0 and
    reach at least 10%; bits-per-byte panels zoom on the bars, whose differences are a few percent, so
    their axis does not start at 0. ``title`` defaults to "Figure 2.1"; the seeds are added to it."""
    import matplotlib.pyplot as plt  # headless machines fall back to the Agg backend by themselves
    from matplotlib.ticker import PercentFormatter

    fig, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 4.8), squeeze=False)
    handles: dict[str, object] = {}
    seeds = 0
    for ax, metric in zip(axes[0], metrics):
        t = bars_table(runs, metric, labels)
        unit = "%" if is_percent(metric) else ""
        groups = list(dict.fromkeys(t["group"]))
        bars = sorted(dict.fromkeys(t["bar"]), key=_bar_rank)
        width = 0.8 / max(1, len(bars))
        for j, bar in enumerate(bars):
            sub = t[t["bar"] == bar].set_index("group").reindex(groups)
            x = np.arange(len(groups)) + (j - (len(bars) - 1) / 2) * width
            err = np.where(sub["n"] > 1, sub["std"], 0) if (sub["n"] > 1).any() else None
            rects = ax.bar(
                x, sub["mean"], width, yerr=err, capsize=3, label=bar, color=BAR_COLORS[j % len(BAR_COLORS)]
            )
            ax.bar_label(
                rects,
                labels=["" if np.isnan(v) else f"{v:.3g}{unit}" for v in sub["mean"]],
                fontsize=8,
                padding=2,
            )
            handles.setdefault(bar, rects)
        ax.set_xticks(np.arange(len(groups)), [g.replace(", ", "\n") for g in groups])
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.set_title(METRIC_LABELS.get(metric, metric).split(" (")[0], fontsize=10)
        values = (t["mean"] + t["std"]).to_numpy(dtype=float)
        if unit:
            ax.set_ylim(0, max(10.0, 1.2 * np.nanmax(values)) if len(values) else 10.0)
            ax.yaxis.set_major_formatter(PercentFormatter(100.0, decimals=0))
        elif len(values):
            lo, hi = np.nanmin((t["mean"] - t["std"]).to_numpy(dtype=float)), np.nanmax(values)
            pad = max(0.05 * (hi - lo), 0.02 * hi)
            ax.set_ylim(max(0.0, lo - 3 * pad), hi + 2 * pad)
        seeds = max(seeds, int(t["n"].max()) if len(t) else 0)
    ncol = len(handles) if sum(len(b) for b in handles) <= 100 else 1  # long labels: one per line
    rows = -(-len(handles) // max(ncol, 1))
    fig.legend(
        list(handles.values()), list(handles), loc="lower center", ncol=ncol, fontsize=9, frameon=False
    )
    note = f"mean over {seeds} seeds, error bars: standard deviation" if seeds > 1 else "one seed"
    fig.suptitle(f"{title or 'Figure 2.1'}  ({note})", fontsize=11)
    fig.tight_layout(rect=(0, 0.03 + 0.04 * rows, 1, 1))
    return fig


def plot_curves(
    curves: pd.DataFrame,
    runs: pd.DataFrame,
    metrics: tuple[str, ...] = ("train/loss", "val/loss"),
) -> Figure:
    """Each metric against tokens seen, one line per run (coloured by training data)."""
    import matplotlib.pyplot as plt  # headless machines fall back to the Agg backend by themselves

    fig, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 4.2), squeeze=False)
    info = runs.set_index("run_name")
    datasets = list(dict.fromkeys(runs["dataset"]))
    for ax, metric in zip(axes[0], metrics):
        sub = curves[curves["metric"] == metric]
        for name, c in sub.groupby("run_name", sort=False):
            ds = info["dataset"].get(name) if name in info.index else None
            color = BAR_COLORS[datasets.index(ds) % len(BAR_COLORS)] if ds in datasets else None
            c = c.sort_values("tokens_seen")
            ax.plot(
                c["tokens_seen"],
                c["value"],
                label=name,
                color=color,
                lw=1.2,
                marker="o" if len(c) < 20 else None,
                ms=3,
            )
        ax.set_xlabel("tokens seen")
        ax.set_ylabel(metric)
        ax.set_title(metric, fontsize=10)
        if len(sub):
            ax.legend(fontsize=6)
    fig.tight_layout()
    return fig
