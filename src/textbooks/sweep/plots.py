"""Figure 2.1 from a runs table (``textbooks-collect``): grouped bars per (model, tokens seen), one bar per
training data, error bars over seeds; plus metric curves against tokens seen."""

from __future__ import annotations

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
}
BAR_COLORS = ["#7f7f7f", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
METRIC_LABELS = {
    "humaneval_pass@1": "HumanEval pass@1 (%)",
    "humaneval_bpb": "HumanEval gold bits/byte (lower is better)",
    "mbpp_pass@1": "MBPP pass@1 (%)",
    "mbpp_bpb": "MBPP gold bits/byte (lower is better)",
}
PERCENT = ("pass@",)


def _label(dataset: str | None) -> str:
    return DATA_LABELS.get(dataset or "", str(dataset))


def bars_table(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean, std and count over seeds of ``metric`` per (group, bar).

    Group = model and pretraining tokens seen ("cpu_small, 2M"); bar = the training data: a pretraining
    run's dataset, or "<its base run's data> → CodeExercises" for a run finetuned from another run.
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
        f"{_label(b)} → CodeExercises" if f else _label(d)
        for f, b, d in zip(finetuned, df.get("base_dataset", pd.Series(None, index=df.index)), df["dataset"])
    ]
    df["group"] = [f"{m}, {format_count(int(t))}" for m, t in zip(df["model"], df["pretrain_tokens"])]
    df["params"] = df["params"].astype(float) if "params" in df else np.nan
    scale = 100.0 if any(p in metric for p in PERCENT) else 1.0
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
    return out.sort_values(["params", "pretrain_tokens"], kind="stable").reset_index(drop=True)


def plot_figure_2_1(
    runs: pd.DataFrame,
    metrics: tuple[str, ...] = ("humaneval_pass@1", "humaneval_bpb"),
    title: str | None = None,
) -> Figure:
    """Figure 2.1: one panel per metric, grouped bars with error bars over seeds and value labels."""
    import matplotlib.pyplot as plt  # headless machines fall back to the Agg backend by themselves

    fig, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 4.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        t = bars_table(runs, metric)
        groups = list(dict.fromkeys(t["group"]))
        bars = list(dict.fromkeys(t["bar"]))
        width = 0.8 / max(1, len(bars))
        for j, bar in enumerate(bars):
            sub = t[t["bar"] == bar].set_index("group").reindex(groups)
            x = np.arange(len(groups)) + (j - (len(bars) - 1) / 2) * width
            rects = ax.bar(
                x,
                sub["mean"],
                width,
                yerr=np.where(sub["n"] > 1, sub["std"], 0),
                capsize=3,
                label=bar,
                color=BAR_COLORS[j % len(BAR_COLORS)],
            )
            ax.bar_label(
                rects,
                labels=[("" if np.isnan(v) else f"{v:.3g}") for v in sub["mean"]],
                fontsize=8,
                padding=2,
            )
        ax.set_xticks(np.arange(len(groups)), [g.replace(", ", "\n") for g in groups])
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        seeds = int(t["n"].max()) if len(t) else 0
        ax.set_title(
            f"{METRIC_LABELS.get(metric, metric).split(' (')[0]}  (error bars: std over {seeds} seeds)"
            if seeds > 1
            else METRIC_LABELS.get(metric, metric).split(" (")[0],
            fontsize=10,
        )
        ax.legend(fontsize=8)
        ax.margins(y=0.15)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
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
