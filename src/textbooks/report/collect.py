"""``textbooks-collect``: many run directories -> one table (``runs.parquet``, ``runs.csv``) + curves.

A run directory is any directory holding ``.hydra/config.yaml`` (every ``textbooks-train`` run). Each one
becomes one row with the keys that define it (``run.json``: stage, dataset, model, tokens, seed, tau, ...),
its training results (``results.json``) and its evaluations (``eval/<benchmark>/results.json``). A run without
results is reported (status ``running`` or ``missing``) rather than dropped. ``curves.parquet`` holds every
logged metric of every run against tokens seen, long format, for loss/metric curves.

    textbooks-collect runs/figure_2_1                 # positional directories are accepted
    textbooks-collect dirs=[runs/a,runs/b] out=report
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from textbooks.cli import hydra_app
from textbooks.errors import ConfigError

log = logging.getLogger(__name__)

KEYS = ("run_name", "stage", "dataset", "model", "tokenizer", "tokens", "seed", "tau", "init_from")
TRAIN_METRICS = (
    "steps",
    "total_steps",
    "tokens_seen",
    "params",
    "train_loss",
    "val_loss",
    "tokens_per_sec",
    "mfu",
    "device_hours",
    "wall_seconds",
)


def find_runs(roots: list[str | Path]) -> list[Path]:
    """Training run directories (holding ``.hydra/config.yaml``) below ``roots``, sorted."""
    found: set[Path] = set()
    for root in roots:
        r = Path(root)
        if not r.exists():
            raise ConfigError(f"textbooks-collect: {r} does not exist")
        found.update(p.parent.parent for p in r.rglob(".hydra/config.yaml") if _is_training_run(p))
    return sorted(found)


def _is_training_run(hydra_config: Path) -> bool:
    """A ``textbooks-train`` run's composed config (not another app's, e.g. an evaluation sweep's)."""
    if (hydra_config.parent.parent / "run.json").is_file():
        return True
    cfg = OmegaConf.load(hydra_config)
    return "train" in cfg and "recipe" in cfg


def _keys(run_dir: Path) -> dict[str, Any]:
    """The keys that define a run, from the ``run.json`` that ``textbooks-train`` writes before training."""
    f = run_dir / "run.json"
    if not f.is_file():  # killed before it got that far: only the directory name is known
        return {"run_name": run_dir.name}
    keys = json.loads(f.read_text())
    return {k: keys.get(k) for k in KEYS}


def _eval_metrics(run_dir: Path) -> dict[str, Any]:
    """``<tag>_pass@k`` (``<tag>_base_pass@k``), ``<tag>_bpb`` from each ``eval/<tag>/results.json`` of a run."""
    out: dict[str, Any] = {}
    for f in sorted((run_dir / "eval").glob("*/results.json")):
        tag = f.parent.name
        res = json.loads(f.read_text())
        for k, v in (res.get("pass@k") or {}).items():
            out[f"{tag}_{k}"] = v
        for k, v in (res.get("pass@k_base") or {}).items():  # HumanEval+: its base tests alone
            out[f"{tag}_base_{k}"] = v
        bpb = res.get("bpb") or {}
        if bpb.get("bpb") is not None:
            out[f"{tag}_bpb"] = bpb["bpb"]
            out[f"{tag}_mean_bpb"] = bpb.get("mean_bpb")
        if res.get("n_samples") is not None:
            out[f"{tag}_n_samples"] = res["n_samples"]
    return out


def collect_run(run_dir: Path) -> dict[str, Any]:
    """One row: the run's defining keys, training results and evaluation metrics."""
    row: dict[str, Any] = {"run_dir": str(run_dir), **{k: None for k in KEYS}, **_keys(run_dir)}
    res_file = run_dir / "results.json"
    if res_file.is_file():
        res = json.loads(res_file.read_text())
        row["status"] = res.get("status", "complete")
        row.update({k: res.get(k) for k in TRAIN_METRICS})
        row["gpu_hours"] = res.get("device_hours")
    else:
        has_ckpt = (run_dir / "checkpoints" / "last.ckpt").is_file()
        row["status"] = "running" if has_ckpt or (run_dir / "metrics.csv").is_file() else "missing"
    row.update(_eval_metrics(run_dir))
    return row


def link_finetunes(rows: list[dict[str, Any]]) -> None:
    """Give each run started from another run's weights (``init_from``) its base run's name, dataset and
    tokens, so a finetuned model is grouped with the pretraining it continued (Figure 2.1's third bar)."""
    by_dir = {Path(r["run_dir"]).resolve(): r for r in rows}
    for r in rows:
        r["base_run"] = r["base_dataset"] = r["base_tokens"] = None
        if r.get("init_from"):
            base = by_dir.get(Path(r["init_from"]).resolve().parent)
            if base is None and Path(r["init_from"]).resolve().parent.name == "checkpoints":
                base = by_dir.get(Path(r["init_from"]).resolve().parent.parent)
            if base is not None:
                r["base_run"], r["base_dataset"], r["base_tokens"] = (
                    base["run_name"],
                    base["dataset"],
                    base["tokens"],
                )


def curves(run_dir: Path, run_name: str) -> list[dict[str, Any]]:
    """Every numeric metric of ``metrics.csv`` against tokens seen (long format)."""
    f = run_dir / "metrics.csv"
    if not f.is_file():
        return []
    out = []
    with open(f, newline="") as fh:
        for r in csv.DictReader(fh):
            x = r.get("train/tokens_seen") or r.get("val/tokens_seen") or r.get("eval/tokens_seen")
            if not x:
                continue
            for k, v in r.items():
                if v and k not in ("step", "epoch") and not k.endswith("tokens_seen"):
                    try:
                        value = float(v)
                    except ValueError:
                        continue
                    if math.isfinite(value):
                        out.append(
                            {"run_name": run_name, "tokens_seen": float(x), "metric": k, "value": value}
                        )
    return out


def collect(roots: list[str | Path], out: str | Path | None = None) -> tuple[Path, list[dict[str, Any]]]:
    """Write ``runs.parquet``, ``runs.csv`` and ``curves.parquet`` to ``out`` (default: the first root)."""
    import pandas as pd

    run_dirs = find_runs(roots)
    if not run_dirs:
        raise ConfigError(f"textbooks-collect: no run directories (with .hydra/config.yaml) under {roots}")
    rows, curve_rows = [], []
    for d in run_dirs:
        row = collect_run(d)
        rows.append(row)
        curve_rows.extend(curves(d, row["run_name"]))
        if row["status"] != "complete":
            log.warning("%s: %s (no finished results.json)", d, row["status"])
    link_finetunes(rows)
    out_dir = Path(out) if out else Path(roots[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    df.to_parquet(out_dir / "runs.parquet", index=False)
    df.to_csv(out_dir / "runs.csv", index=False)
    pd.DataFrame(curve_rows, columns=["run_name", "tokens_seen", "metric", "value"]).to_parquet(
        out_dir / "curves.parquet", index=False
    )
    return out_dir, rows


def _positional_to_override(argv: list[str]) -> list[str]:
    """``textbooks-collect a b`` == ``textbooks-collect dirs=[a,b]`` (Hydra takes only key=value)."""
    flags = [a for a in argv if a.startswith("-") or "=" in a]
    dirs = [a for a in argv if not (a.startswith("-") or "=" in a)]
    return flags + ([f"dirs=[{','.join(dirs)}]"] if dirs else [])


@hydra_app("collect", types={"out": str | None})
def _main(cfg: DictConfig) -> None:
    if not cfg.dirs:
        raise ConfigError("textbooks-collect: give run directories, e.g. `textbooks-collect runs/figure_2_1`")
    dirs = list(cfg.dirs) if isinstance(cfg.dirs, ListConfig) else [cfg.dirs]  # dirs=one_dir
    out, rows = collect([str(d) for d in dirs], cfg.out)
    done = sum(r["status"] == "complete" for r in rows)
    print(
        f"{len(rows)} runs ({done} complete) -> {out / 'runs.parquet'}, {out / 'runs.csv'}, {out / 'curves.parquet'}"
    )
    for r in rows:
        if r["status"] != "complete":
            print(f"  {r['status']:>8}: {r['run_dir']}")


def main() -> None:
    sys.argv = [sys.argv[0], *_positional_to_override(sys.argv[1:])]
    _main()


if __name__ == "__main__":
    main()
