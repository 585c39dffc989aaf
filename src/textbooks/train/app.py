"""``textbooks-train``: the Hydra app that pretrains or finetunes a phi-1 model.

The run directory (``${paths.runs}/${run_name}``, named by the keys that define the run) holds
``.hydra/``, ``checkpoints/``, ``metrics.csv``, ``wandb/``, ``model/`` and ``results.json``. Running the
same command again resumes from ``checkpoints/last.ckpt``, or does nothing if ``results.json`` says the
run is complete (``force=true`` reruns it).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from textbooks.config import Count, hydra_app, parse_count
from textbooks.errors import ConfigError
from textbooks.io import write_json_atomic
from textbooks.tokenizer import TokenizerError, fingerprint, load_tokenizer, padded_vocab_size
from textbooks.train.datamodule import Source, TokenDataModule, steps_for_tokens
from textbooks.train.logging import (
    ResumeLogs,
    RunCSVLogger,
    ThroughputMonitor,
    define_wandb_metrics,
    wandb_logger,
)
from textbooks.train.module import CausalLMModule

log = logging.getLogger(__name__)

RESULTS = "results.json"
# keys of conf/trainer/*.yaml that are ours, not lightning.Trainer arguments
_OWN_TRAINER_KEYS = (
    "micro_batch_size",
    "num_workers",
    "compile",
    "activation_checkpointing",
    "matmul_precision",
)


def read_results(run_dir: str | Path) -> dict[str, Any] | None:
    p = Path(run_dir) / RESULTS
    return json.loads(p.read_text()) if p.is_file() else None


def resume_checkpoint(ckpt_dir: Path) -> Path | None:
    """The checkpoint to resume from: ``last.ckpt``, or the newest periodic one if a kill left ``last.ckpt``
    missing or half-written (each candidate's zip directory is read, not its tensors)."""
    candidates = [ckpt_dir / "last.ckpt", *sorted(ckpt_dir.glob("step*.ckpt"), reverse=True)]
    for c in candidates:
        if not c.is_file():
            continue
        try:
            torch.load(c, map_location="cpu", mmap=True, weights_only=False)
            return c
        except Exception as e:  # truncated by a kill: try the next one
            log.warning("checkpoint %s is unreadable (%s); trying an older one", c, type(e).__name__)
    return None


def model_config(cfg: DictConfig, n_vocab: int) -> dict[str, Any]:
    """The model preset with the vocabulary resolved and the recipe's dropout applied."""
    mc = OmegaConf.to_container(cfg.model, resolve=True)
    if mc.get("vocab_size") is None:
        mc["vocab_size"] = padded_vocab_size(n_vocab)
    elif n_vocab > mc["vocab_size"]:
        raise ConfigError(
            f"tokenizer {cfg.tokenizer.name!r} has {n_vocab} ids but model={cfg.model.name} embeds only "
            f"{mc['vocab_size']}: set model.vocab_size >= {n_vocab} (or null to size it from the tokenizer)"
        )
    d = cfg.recipe.dropout
    mc.update(attn_dropout=d.attn, resid_dropout=d.resid, embd_dropout=d.embd)
    return mc


def make_trainer(cfg: DictConfig, run_dir: Path, callbacks: list, loggers: list, max_steps: int) -> L.Trainer:
    t = OmegaConf.to_container(cfg.trainer, resolve=True)
    for k in _OWN_TRAINER_KEYS:
        t.pop(k, None)
    strategy = t.pop("strategy", "auto")
    if isinstance(strategy, dict):
        strategy = hydra.utils.instantiate(strategy)
    return L.Trainer(
        **t,
        strategy=strategy,
        default_root_dir=str(run_dir),
        max_steps=max_steps,
        callbacks=callbacks,
        logger=loggers,
        enable_progress_bar=bool(cfg.progress),
        use_distributed_sampler=False,  # the DataModule already gives each rank its strided slice
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        enable_model_summary=False,
    )


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train (or resume, or skip) the run described by ``cfg`` in ``run_dir``; returns its results."""
    run_dir = Path(run_dir)
    done = read_results(run_dir)
    if done and done.get("status") == "complete" and not cfg.force:
        log.info("%s is complete (results.json); skipping. force=true reruns it.", run_dir)
        return done
    if cfg.trainer.matmul_precision:
        torch.set_float32_matmul_precision(cfg.trainer.matmul_precision)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    try:
        enc = load_tokenizer(cfg.tokenizer.name)
    except TokenizerError as e:
        raise TokenizerError(f"{e}\nBuild this tokenizer with: {cfg.tokenizer.build}") from None
    mc = model_config(cfg, enc.n_vocab)
    tokens = parse_count(cfg.train.tokens)
    seq_len = int(cfg.train.seq_len)
    if seq_len > mc["max_seq_len"]:
        raise ConfigError(f"train.seq_len={seq_len} exceeds model.max_seq_len={mc['max_seq_len']}")
    G, micro = int(cfg.train.global_batch_size), int(cfg.train.micro_batch_size)
    total_steps = steps_for_tokens(tokens, G, seq_len)

    sources = [Source(**OmegaConf.to_container(s, resolve=True)) for s in cfg.dataset.sources]
    dm = TokenDataModule(
        sources,
        seq_len=seq_len,
        global_batch_size=G,
        micro_batch_size=micro,
        seed=cfg.seed,
        val_windows=int(cfg.train.val_windows),
        num_workers=int(cfg.trainer.num_workers),
    )
    mixture = dm.prepare()  # missing shards -> one line naming the command that builds them
    for sh in mixture.shards:
        sh.check_tokenizer(fingerprint(enc), cfg.tokenizer.name)

    # Validation and checkpoints happen together, after the step's metrics are logged, so a run killed
    # at any point resumes from a checkpoint whose history is complete in metrics.csv.
    ck = cfg.recipe.checkpoint
    every = max(1, min(int(ck.every_steps), math.ceil(total_steps / 10)))
    ckpt_dir = run_dir / "checkpoints"
    periodic = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="step{step:07d}",
        auto_insert_metric_name=False,
        save_top_k=-1 if ck.keep == "all" else 0,
        save_last=True,
        save_on_train_epoch_end=False,
    )
    callbacks: list = [periodic, ResumeLogs()]
    best = None
    if ck.best:
        best = ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="best-step{step:07d}",
            auto_insert_metric_name=False,
            monitor=ck.best,
            mode=ck.mode,
            save_top_k=1,
            save_on_train_epoch_end=False,
        )
        callbacks.append(best)

    loggers: list = []
    if "csv" in cfg.logger:
        loggers.append(RunCSVLogger(run_dir))
    wandb = None
    if "wandb" in cfg.logger:
        w = OmegaConf.to_container(cfg.logger.wandb, resolve=True)
        wandb = wandb_logger(
            run_dir,
            name=cfg.run_name,
            tags=[cfg.stage, cfg.dataset.name, cfg.model.name],
            config=OmegaConf.to_container(cfg, resolve=True),
            **w,
        )
        loggers.append(wandb)

    trainer = make_trainer(cfg, run_dir, callbacks, loggers, total_steps)
    world = trainer.world_size
    if G % (micro * world):
        raise ConfigError(
            f"global_batch_size={G} is not a multiple of micro_batch_size={micro} x {world} devices: "
            "change train.global_batch_size or trainer.micro_batch_size"
        )
    accumulate = G // (micro * world)
    trainer.accumulate_grad_batches = accumulate
    trainer.val_check_interval = every * accumulate
    trainer.log_every_n_steps = int(cfg.train.log_every_steps)
    if cfg.recipe.grad_clip:
        trainer.gradient_clip_val = float(cfg.recipe.grad_clip)

    plan = {
        "total_steps": total_steps,
        "global_batch_size": G,
        "micro_batch_size": micro,
        "accumulate": accumulate,
        "seq_len": seq_len,
        "seed": int(cfg.seed),
        "log_every": int(cfg.train.log_every_steps),
    }
    init_from = cfg.train.init_from
    module = CausalLMModule(
        mc,
        cfg.tokenizer.name,
        OmegaConf.to_container(cfg.recipe.optimizer, resolve=True),
        OmegaConf.to_container(cfg.recipe.schedule, resolve=True),
        plan,
        init_from=str(init_from) if init_from else None,
        activation_checkpointing=bool(cfg.trainer.activation_checkpointing),
        compile=bool(cfg.trainer.compile),
    )
    if module.schedule.warmup_steps >= total_steps:
        log.warning(
            "recipe warmup_steps=%d >= total steps %d: lr never reaches its peak",
            module.schedule.warmup_steps,
            total_steps,
        )
    monitor = ThroughputMonitor(
        plan["global_batch_size"] * seq_len,
        module.model.flops_per_token(seq_len),
        str(cfg.trainer.precision),
        every=int(cfg.train.log_every_steps),
        matmul_precision=cfg.trainer.matmul_precision,
    )
    trainer.callbacks.append(monitor)
    if cfg.eval.enabled:
        from textbooks.eval.callback import EvalCallback

        ev = OmegaConf.to_container(cfg.eval, resolve=True)
        ev.pop("enabled")
        trainer.callbacks.append(EvalCallback(enc, plan["global_batch_size"] * seq_len, ev))
    if wandb is not None and trainer.is_global_zero:
        define_wandb_metrics(wandb)

    keys = {
        "run_name": cfg.run_name,
        "stage": cfg.stage,
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "tokenizer": cfg.tokenizer.tag,
        "tokens": tokens,
        "seed": int(cfg.seed),
        "tau": cfg.dataset.get("tau"),
        "init_from": str(init_from) if init_from else None,
        "sweep_name": cfg.sweep_name,
    }
    if trainer.is_global_zero:
        write_json_atomic(run_dir / "run.json", keys)
    last = resume_checkpoint(ckpt_dir)
    resume = str(last) if last else None
    log.info(
        "%s: %s tokens = %d steps x %d sequences x %d tokens (accumulate %d, %d devices, %.2f epochs)%s",
        cfg.run_name,
        f"{tokens:,}",
        total_steps,
        G,
        seq_len,
        accumulate,
        world,
        dm.epochs_for(total_steps),
        f"; resuming from {last}" if resume else "",
    )
    ok = False
    try:
        t0 = time.time()
        trainer.fit(module, datamodule=dm, ckpt_path=resume)
        wall = time.time() - t0
        complete = trainer.global_step >= total_steps and not trainer.interrupted
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if complete and total_steps % every:
            # the last step was not a validation step: measure the final model too
            metrics.update(
                {k: float(v) for k, v in trainer.validate(module, datamodule=dm, verbose=False)[0].items()}
            )
        results = {
            "status": "complete" if complete else "interrupted",
            **keys,
            "tokens_seen": trainer.global_step * plan["global_batch_size"] * seq_len,
            "steps": trainer.global_step,
            "total_steps": total_steps,
            "params": module.model.num_params(),
            "train_loss": metrics.get("train/loss"),
            "val_loss": metrics.get("val/loss"),
            "tokens_per_sec": monitor.last.get("perf/tokens_per_sec"),
            "mfu": monitor.last.get("perf/mfu"),
            "device_hours": world * monitor.train_seconds / 3600,
            "wall_seconds": wall,
        }
        if trainer.is_global_zero and complete:
            if cfg.train.export:
                from textbooks.checkpoint import load_pretrained, save_pretrained

                src, step = module.model, trainer.global_step
                if (
                    best is not None
                    and best.best_model_path
                    and _better(float(best.best_model_score), metrics.get(ck.best), ck.mode)
                ):
                    src, _ = load_pretrained(best.best_model_path)
                    step = int(torch.load(best.best_model_path, map_location="cpu", mmap=True)["global_step"])
                results["exported_step"] = step
                save_pretrained(
                    src,
                    run_dir / "model",
                    tokenizer=cfg.tokenizer.name,
                    extra={"run_name": cfg.run_name, "steps": step},
                )
                results["model_dir"] = str(run_dir / "model")
            write_json_atomic(run_dir / RESULTS, results)
        if wandb is not None and trainer.is_global_zero:
            wandb.experiment.summary.update(
                {f"final/{k}": v for k, v in results.items() if isinstance(v, (int, float))}
            )
        ok = True
        return results
    finally:
        if wandb is not None and trainer.is_global_zero:
            # Lightning leaves the W&B run open; the next run of a multirun in this process would reuse it
            wandb.experiment.finish(exit_code=0 if ok else 1)


def _better(a: float, b: float | None, mode: str) -> bool:
    """Is score ``a`` better than ``b`` (``None``: no score) under ``mode`` (min/max)?"""
    return b is None or (a < b if mode == "min" else a > b)


@hydra_app("train", types={"train.tokens": Count, "scale.tokens": Count})
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
