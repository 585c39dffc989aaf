"""The LightningModule: next-token loss, AdamW, linear warmup then linear decay.

Everything that differs between pretraining and finetuning (learning rate, batch, warmup, weight decay,
dropout) is a value of the recipe (``textbooks.train.config.RecipeConfig``, ``conf/recipe/*.yaml``); this
module only reads them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from textbooks.model import Block, ModelConfig, PhiForCausalLM
from textbooks.train.config import OptimConfig, ScheduleConfig


def lr_lambda(step: int, warmup: int, decay_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at ``step``: linear 0 -> 1 over ``warmup``, then linear to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if step >= decay_steps:
        return min_ratio
    frac = (step - warmup) / max(1, decay_steps - warmup)
    return min_ratio + (1.0 - min_ratio) * (1.0 - frac)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices (linear weights, embeddings); none on biases and LayerNorm parameters."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def apply_activation_checkpointing(model: PhiForCausalLM) -> None:
    """Recompute each block's activations in the backward pass (trades ~30% compute for memory)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        apply_activation_checkpointing,
        checkpoint_wrapper,
    )

    apply_activation_checkpointing(
        model,
        checkpoint_wrapper_fn=lambda m: checkpoint_wrapper(m, checkpoint_impl=CheckpointImpl.NO_REENTRANT),
        check_fn=lambda m: isinstance(m, Block),
    )


def shard_blocks(model: PhiForCausalLM, mesh: Any) -> None:
    """FSDP2: each block one unit, then the rest (embeddings, final norm, head); idempotent (Lightning
    configures the model again for a validation after fit)."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(model, FSDPModule):
        return
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def whole_model(model: PhiForCausalLM) -> PhiForCausalLM:
    """An unsharded copy of a (possibly FSDP2-sharded) model, for export: every rank must call this when
    it is sharded; rank 0 gets the weights."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        return model
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    whole = PhiForCausalLM(model.config)
    if state:  # rank 0
        whole.load_state_dict(state)
    return whole


def step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """A distinct, reproducible RNG seed per (run seed, optimizer step, micro-batch, rank) for dropout."""
    return (seed * 1_000_003 + step * 7_919 + micro * 104_729 + rank * 15_485_863) % (2**63 - 1)


class CausalLMModule(L.LightningModule):
    """Trains a ``PhiForCausalLM`` on ``[B, seq_len + 1]`` token windows.

    The run's length and accumulation are the Trainer's (``max_steps``, ``accumulate_grad_batches``);
    ``tokens_per_step`` (global batch x sequence length) turns steps into tokens seen in the logs.
    """

    def __init__(
        self,
        model: ModelConfig,
        optim: OptimConfig,
        schedule: ScheduleConfig,
        *,
        tokens_per_step: int,
        tokenizer: str | None = None,
        seed: int = 0,
        log_every: int = 1,
        init_from: str | None = None,
        activation_checkpointing: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        # plain values: checkpoint.load_pretrained reads model_config and tokenizer back from a .ckpt
        self.save_hyperparameters(
            {
                "model_config": model.to_dict(),
                "tokenizer": tokenizer,
                "optim": dataclasses.asdict(optim),
                "schedule": dataclasses.asdict(schedule),
                "tokens_per_step": tokens_per_step,
                "seed": seed,
                "init_from": init_from,
            }
        )
        self.optim, self.schedule = optim, schedule
        self.tokens_per_step, self.seed, self.log_every = tokens_per_step, seed, max(1, log_every)
        self.model = PhiForCausalLM(model)
        if init_from:
            self._load_initial_weights(init_from)
        if activation_checkpointing:
            apply_activation_checkpointing(self.model)
        if compile:
            for block in self.model.blocks:
                block.compile()
        self._micro_total = 0
        self._loss_sum: torch.Tensor | None = None
        self._dropout = max(model.attn_dropout, model.resid_dropout, model.embd_dropout) > 0
        self._flops_per_token: dict[int, float] = {}
        self.flops_per_batch = (
            0.0  # of the last training micro-batch (Lightning's ThroughputMonitor reads it)
        )

    def _load_initial_weights(self, path: str) -> None:
        from textbooks.checkpoint import load_pretrained
        from textbooks.errors import ConfigError

        src, _ = load_pretrained(path)
        if src.config.to_dict() | {"name": "", "embd_dropout": 0, "attn_dropout": 0, "resid_dropout": 0} != (
            self.model.config.to_dict()
            | {"name": "", "embd_dropout": 0, "attn_dropout": 0, "resid_dropout": 0}
        ):
            raise ConfigError(
                f"init_from={path}: its architecture {src.config} differs from model={self.model.config.name}; "
                "choose the model preset the checkpoint was trained with"
            )
        self.model.load_state_dict(src.state_dict())

    def configure_model(self) -> None:
        """Shard the model when the strategy gives a device mesh (``trainer=fully_shard``)."""
        if self._device_mesh is not None:
            shard_blocks(self.model, self._device_mesh["data_parallel"])

    # -- training -----------------------------------------------------------------------------------------
    @property
    def accumulate(self) -> int:
        return self.trainer.accumulate_grad_batches

    def on_train_start(self) -> None:
        self._micro_total = self.global_step * self.accumulate

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)

    def _loss(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.model(batch[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        A = self.accumulate
        step, micro = divmod(self._micro_total, A)
        if self._dropout:
            torch.manual_seed(step_seed(self.seed, step, micro, self.global_rank))
        loss = self._loss(batch)
        self._count_flops(batch)
        self._micro_total += 1
        self._loss_sum = loss.detach() if micro == 0 else self._loss_sum + loss.detach()
        last = step + 1 == self.trainer.max_steps
        if micro == A - 1 and ((step + 1) % self.log_every == 0 or last):
            tokens_seen = (step + 1) * self.tokens_per_step
            self.log_dict(
                {
                    "train/loss": self._loss_sum / A,
                    "train/lr": self.optimizers().param_groups[0]["lr"],
                    "train/tokens_seen": float(tokens_seen),
                    "train/step": float(step + 1),
                },
                on_step=True,
                on_epoch=False,
                sync_dist=self.trainer.world_size > 1,
                batch_size=batch.shape[0],
            )
        return loss

    def _count_flops(self, batch: torch.Tensor) -> None:
        B, T = batch.shape[0], batch.shape[1] - 1
        if T not in self._flops_per_token:
            self._flops_per_token[T] = self.model.flops_per_token(T)
        self.flops_per_batch = self._flops_per_token[T] * B * T

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("val/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=batch.shape[0])
        return loss

    def on_validation_epoch_end(self) -> None:
        self.log_dict(
            {
                "val/tokens_seen": float(self.global_step * self.tokens_per_step),
                "val/step": float(self.global_step),
            },
            on_epoch=True,
            sync_dist=True,  # the same on every rank; synced, Lightning does not warn about it
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["accumulate_grad_batches"] = self.accumulate

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Count the loop's micro-batches in this run's accumulation: a checkpoint of another world size
        counted its own, and Lightning places validation (and so checkpoints) by that count."""
        saved = checkpoint.get("accumulate_grad_batches")
        loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
        if saved and loop and saved != self.accumulate:
            for part in ("total", "current"):
                counts = loop[part]
                for k, v in counts.items():
                    counts[k] = v // saved * self.accumulate + v % saved

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.optim
        fused = o.fused if o.fused is not None else torch.cuda.is_available()
        opt = torch.optim.AdamW(
            param_groups(self.model, o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps, fused=fused
        )
        s = self.schedule
        decay = s.decay_steps or self.trainer.max_steps
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_lambda(step, s.warmup_steps, decay, s.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
