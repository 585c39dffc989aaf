"""A training run's directory: the keys that define the run, where it resumes from, what it leaves.

``run.json`` (written when the run starts) and ``results.json`` (when it ends: the keys, the final
metrics, ``status`` complete or interrupted) make a run findable by ``textbooks-collect``; a complete
``results.json`` makes a rerun of the same command a no-op. A killed run resumes from its newest readable
checkpoint in ``checkpoints/``; ``model/`` is the exported model (the best checkpoint's weights when the
recipe keeps one).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from textbooks.train.config import TrainAppConfig

log = logging.getLogger(__name__)

RESULTS = "results.json"
RUN = "run.json"


def read_results(run_dir: str | Path) -> dict[str, Any] | None:
    p = Path(run_dir) / RESULTS
    return json.loads(p.read_text()) if p.is_file() else None


def run_keys(cfg: TrainAppConfig) -> dict[str, Any]:
    """The config keys that define the run (the columns ``textbooks-collect`` groups runs by)."""
    return {
        "run_name": cfg.run_name,
        "stage": cfg.stage,
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "tokenizer": cfg.tokenizer.get("tag"),
        "tokens": cfg.train.total_tokens,
        "seed": cfg.seed,
        "tau": cfg.dataset.tau,
        "init_from": cfg.train.init_from,
        "sweep_name": cfg.sweep_name,
    }


def resume_checkpoint(ckpt_dir: Path) -> Path | None:
    """The checkpoint to resume from: the newer of ``last.ckpt`` and the newest periodic one, skipping any a
    kill left half-written (each candidate's zip directory is read, not its tensors). A kill between the
    periodic save and ``last.ckpt``'s leaves ``last.ckpt`` a save behind; resuming from it would redo steps."""
    found: tuple[int, Path] | None = None
    for c in [ckpt_dir / "last.ckpt", *sorted(ckpt_dir.glob("step*.ckpt"), reverse=True)]:
        if not c.is_file():
            continue
        try:
            step = int(torch.load(c, map_location="cpu", mmap=True, weights_only=False)["global_step"])
        except Exception as e:  # truncated by a kill: try the next one
            log.warning("checkpoint %s is unreadable (%s); trying an older one", c, type(e).__name__)
            continue
        if found is None or step > found[0]:
            found = (step, c)
        if c.name != "last.ckpt":  # the newest readable periodic one: the older ones are older still
            break
    return found[1] if found else None


def better(a: float, b: float | None, mode: str) -> bool:
    """Is score ``a`` better than ``b`` (``None``: no score) under ``mode`` (min/max)?"""
    return b is None or (a < b if mode == "min" else a > b)


def export(
    cfg: TrainAppConfig, run_dir: Path, model: torch.nn.Module, step: int, best: Any, final: float | None
) -> dict[str, Any]:
    """Write ``<run_dir>/model``: the final weights, or the best checkpoint's (``best``, a
    ``ModelCheckpoint`` or None) when it beats the final ``final`` score; returns the results keys."""
    from textbooks.checkpoint import load_pretrained, save_pretrained

    ck = cfg.recipe.checkpoint
    if best is not None and best.best_model_path and better(float(best.best_model_score), final, ck.mode):
        model, _ = load_pretrained(best.best_model_path)
        step = int(torch.load(best.best_model_path, map_location="cpu", mmap=True)["global_step"])
    out = run_dir / "model"
    save_pretrained(
        model, out, tokenizer=cfg.tokenizer["name"], extra={"run_name": cfg.run_name, "steps": step}
    )
    return {"exported_step": step, "model_dir": str(out)}
