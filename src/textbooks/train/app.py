"""``textbooks-train``: the Hydra app that pretrains or finetunes a phi-1 model.

The run directory (``${paths.runs}/${run_name}``, named by the keys that define the run) holds
``.hydra/``, ``checkpoints/``, ``metrics.csv``, ``wandb/``, ``model/`` and ``results.json``
(``textbooks.train.rundir``). Running the same command again resumes from the newest checkpoint in
``checkpoints/``, or does nothing if ``results.json`` says the run is complete (``force=true`` reruns it).
The config's schema and defaults: ``textbooks.train.config``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, read_write

from textbooks.cli import hydra_app
from textbooks.config import Count
from textbooks.eval.callback import EvalCallback
from textbooks.io import write_json_atomic
from textbooks.model import ModelConfig
from textbooks.tokenizer import TokenizerError, fingerprint, load_tokenizer
from textbooks.train.config import CheckpointConfig, TrainAppConfig, load
from textbooks.train.datamodule import TokenDataModule
from textbooks.train.logging import (
    ResumeLogs,
    RunCSVLogger,
    define_wandb_metrics,
    quiet_third_party,
    step_progress_bar,
    wandb_logger,
)
from textbooks.train.module import CausalLMModule, whole_model
from textbooks.train.rundir import RESULTS, RUN, export, read_results, resume_checkpoint, run_keys
from textbooks.train.throughput import ThroughputMonitor

log = logging.getLogger(__name__)


def checkpoints(ck: CheckpointConfig, ckpt_dir: Path) -> tuple[ModelCheckpoint, ModelCheckpoint | None]:
    """The periodic checkpoints (``last.ckpt`` and, with ``keep: all``, every one) and the best one."""
    periodic = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="step{step:07d}",
        auto_insert_metric_name=False,
        save_top_k=-1 if ck.keep == "all" else 0,
        save_last=True,
        save_on_train_epoch_end=False,
        enable_version_counter=False,  # a resumed run rewrites a step's checkpoint (one a kill cut short)
    )
    if not ck.best:
        return periodic, None
    best = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best-step{step:07d}",
        auto_insert_metric_name=False,
        monitor=ck.best,
        mode=ck.mode,
        save_top_k=1,
        save_on_train_epoch_end=False,
    )
    return periodic, best


def loggers(cfg: TrainAppConfig, run_dir: Path, rank_zero: bool = True) -> list[Any]:
    """``metrics.csv`` and W&B, as ``logger=[...]`` chose (every rank has them; only rank 0 writes)."""
    out: list[Any] = []
    if cfg.logger.csv is not None:
        out.append(RunCSVLogger(run_dir))
    if cfg.logger.wandb is not None:
        w = dataclasses.asdict(cfg.logger.wandb)
        tags = [cfg.stage, cfg.dataset.name, cfg.model.name]
        out.append(
            wandb_logger(
                run_dir,
                name=cfg.run_name,
                tags=tags,
                config=dataclasses.asdict(cfg),
                rank_zero=rank_zero,
                **w,
            )
        )
    return out


def make_trainer(
    cfg: TrainAppConfig, run_dir: Path, callbacks: list, loggers: list, max_steps: int
) -> L.Trainer:
    """The ``lightning.Trainer`` of ``cfg.trainer``; accumulation, validation and checkpoint intervals,
    logging and clipping follow from the world size it resolves."""
    hw = cfg.trainer
    quiet_third_party()
    trainer = L.Trainer(
        accelerator=hw.accelerator,
        devices=hw.devices,
        num_nodes=hw.num_nodes,
        precision=hw.precision,  # type: ignore[arg-type]
        # a strategy name, or a node with _target_ (conf/trainer/deepspeed.yaml, fsdp.yaml)
        strategy=hydra.utils.instantiate(hw.strategy) if isinstance(hw.strategy, dict) else hw.strategy,
        default_root_dir=str(run_dir),
        max_steps=max_steps,
        callbacks=[*callbacks, *([step_progress_bar()] if cfg.progress else [])],
        logger=loggers,
        enable_progress_bar=cfg.progress,
        use_distributed_sampler=False,  # the DataModule already gives each rank its strided slice
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        enable_model_summary=False,
    )
    accumulate = cfg.train.accumulation(trainer.world_size)
    trainer.accumulate_grad_batches = accumulate
    # validation and checkpoints happen together, after the step's metrics are logged, so a run killed
    # at any point resumes from a checkpoint whose history is complete in metrics.csv
    trainer.val_check_interval = cfg.recipe.checkpoint.interval(max_steps) * accumulate
    trainer.log_every_n_steps = cfg.train.log_every_steps
    if cfg.recipe.grad_clip:
        trainer.gradient_clip_val = cfg.recipe.grad_clip
    return trainer


def datamodule(cfg: TrainAppConfig, enc: Any) -> TokenDataModule:
    """The run's training data, its shards checked (missing ones: one line naming the command that
    builds them; shards of another tokenizer are refused)."""
    t = cfg.train
    dm = TokenDataModule(
        cfg.dataset.sources,
        seq_len=t.seq_len,
        global_batch_size=t.global_batch_size,
        micro_batch_size=t.micro_batch_size,
        seed=cfg.seed,
        val_windows=t.val_windows,
        num_workers=cfg.trainer.num_workers,
    )
    for sh in dm.prepare().shards:
        sh.check_tokenizer(fingerprint(enc), cfg.tokenizer["name"])
    return dm


def make_module(cfg: TrainAppConfig, model: ModelConfig) -> CausalLMModule:
    """The LightningModule: the model, the recipe's optimizer and schedule, and how the trainer config
    runs it."""
    if cfg.recipe.schedule.warmup_steps >= cfg.train.total_steps:
        log.warning(
            "recipe warmup_steps=%d >= %d steps: lr never peaks",
            cfg.recipe.schedule.warmup_steps,
            cfg.train.total_steps,
        )
    return CausalLMModule(
        model,
        cfg.recipe.optimizer,
        cfg.recipe.schedule,
        tokens_per_step=cfg.train.tokens_per_step,
        tokenizer=cfg.tokenizer["name"],
        seed=cfg.seed,
        log_every=cfg.train.log_every_steps,
        init_from=cfg.train.init_from,
        activation_checkpointing=cfg.trainer.activation_checkpointing,
        compile=cfg.trainer.compile,
    )


def plan(cfg: TrainAppConfig, trainer: L.Trainer, dm: TokenDataModule) -> str:
    """What the run will do, in one line."""
    t, steps = cfg.train, cfg.train.total_steps
    return (
        f"{cfg.run_name}: {t.total_tokens:,} tokens = {steps} steps x {t.global_batch_size} sequences x "
        f"{t.seq_len} tokens (accumulate {trainer.accumulate_grad_batches}, {trainer.world_size} devices, "
        f"{dm.epochs_for(steps):.2f} epochs)"
    )


@contextmanager
def ranks_run_this_job(trainer: L.Trainer) -> Iterator[None]:
    """Lightning starts the other ranks of a DDP run on one machine by re-running the command line with
    ``hydra.run.dir`` set to the run's directory. In a job of a multirun that command is the whole sweep
    (each rank would run every job) and ``hydra.run.dir`` is not the job's directory: here the ranks get
    this job's overrides and directory instead, and the job leaves no process group behind for the next
    job of the sweep, whose ranks are new processes."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    env = getattr(trainer.strategy, "cluster_environment", None)
    if (
        trainer.world_size == 1
        or env is None
        or env.creates_processes_externally  # SLURM, torchrun: the ranks are already there
        or not HydraConfig.initialized()
        or HydraConfig.get().mode != RunMode.MULTIRUN
    ):
        yield
        return
    hc = HydraConfig.get()
    args = get_args_parser().parse_args(sys.argv[1:])
    flags = [
        f"--{k.replace('_', '-')}={v}"
        for k in ("config_path", "config_name", "config_dir")
        if (v := getattr(args, k))
    ]
    argv, run_dir = sys.argv, hc.run.dir
    # what Lightning's launcher sets in this process for its children; LOCAL_RANK left set would tell the
    # next job's trainer that its ranks were started by someone else
    ddp_env = {
        k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
    }
    sys.argv = [argv[0], *flags, *hc.overrides.task]
    with read_write(hc.run):
        hc.run.dir = hc.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = argv
        with read_write(hc.run):
            hc.run.dir = run_dir
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for k, v in ddp_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def train(cfg: TrainAppConfig | DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train (or resume, or skip) the run described by ``cfg`` in ``run_dir``; returns its results."""
    cfg, run_dir = load(cfg), Path(run_dir)
    done = read_results(run_dir)
    if done and done.get("status") == "complete" and not cfg.force:
        log.info("%s is complete (results.json); skipping. force=true reruns it.", run_dir)
        return done
    if cfg.trainer.matmul_precision:
        torch.set_float32_matmul_precision(cfg.trainer.matmul_precision)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    try:
        enc = load_tokenizer(cfg.tokenizer["name"])
    except TokenizerError as e:
        raise TokenizerError(f"{e}\nBuild this tokenizer with: {cfg.tokenizer['build']}") from None
    model = cfg.model_for(enc.n_vocab)  # the preset's vocabulary sized for the tokenizer
    dm, steps = datamodule(cfg, enc), cfg.train.total_steps
    periodic, best = checkpoints(cfg.recipe.checkpoint, run_dir / "checkpoints")
    trainer = make_trainer(cfg, run_dir, [periodic, ResumeLogs(), *([best] if best else [])], [], steps)
    # the trainer knows this process's rank (from Lightning's launcher or SLURM) before fit starts
    logs = trainer.loggers = loggers(cfg, run_dir, trainer.is_global_zero)
    module = make_module(cfg, model)
    monitor = ThroughputMonitor(every=cfg.train.log_every_steps, accumulate=trainer.accumulate_grad_batches)
    trainer.callbacks.append(monitor)
    if cfg.eval.enabled:
        trainer.callbacks.append(EvalCallback(enc, cfg.train.tokens_per_step, cfg.eval))
    wandb = next((lg for lg in logs if isinstance(lg, WandbLogger)), None)
    keys = run_keys(cfg)
    if trainer.is_global_zero:
        write_json_atomic(run_dir / RUN, keys)
        if wandb is not None:
            define_wandb_metrics(wandb)
    last = resume_checkpoint(run_dir / "checkpoints")
    log.info("%s%s", plan(cfg, trainer, dm), f"; resuming from {last}" if last else "")
    ok = False
    try:
        with ranks_run_this_job(trainer):
            t0 = time.time()
            trainer.fit(module, datamodule=dm, ckpt_path=str(last) if last else None)
            results = finish(cfg, run_dir, trainer, module, dm, monitor, best, keys, time.time() - t0)
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


def finish(
    cfg: TrainAppConfig,
    run_dir: Path,
    trainer: L.Trainer,
    module: CausalLMModule,
    dm: TokenDataModule,
    monitor: ThroughputMonitor,
    best: ModelCheckpoint | None,
    keys: dict[str, Any],
    wall: float,
) -> dict[str, Any]:
    """The results of a fit that ended; a complete run also validates its final model (unless its last
    step just did), exports it and writes ``results.json``."""
    steps = cfg.train.total_steps
    complete = trainer.global_step >= steps and not trainer.interrupted
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if complete and steps % cfg.recipe.checkpoint.interval(steps):
        metrics.update(
            {k: float(v) for k, v in trainer.validate(module, datamodule=dm, verbose=False)[0].items()}
        )
    results = {
        "status": "complete" if complete else "interrupted",
        **keys,
        "tokens_seen": trainer.global_step * cfg.train.tokens_per_step,
        "steps": trainer.global_step,
        "total_steps": steps,
        "params": module.model.num_params(),
        "train_loss": metrics.get("train/loss"),
        "val_loss": metrics.get("val/loss"),
        "tokens_per_sec": monitor.last.get("perf/tokens_per_sec"),
        "mfu": monitor.last.get("perf/mfu"),
        "device_hours": trainer.world_size * monitor.train_seconds / 3600,
        "wall_seconds": wall,
    }
    model = whole_model(module.model) if complete and cfg.train.export else module.model  # all ranks
    if trainer.is_global_zero and complete:
        if cfg.train.export:
            final = metrics.get(cfg.recipe.checkpoint.best or "")
            results.update(export(cfg, run_dir, model, trainer.global_step, best, final))
        write_json_atomic(run_dir / RESULTS, results)
    return results


@hydra_app("train", types={"train.tokens": Count, "scale.tokens": Count, "eval.every_tokens": Count})
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    train(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
