"""The LightningModule: next-token loss, AdamW, linear warmup then linear decay.

Everything that differs between pretraining and finetuning (learning rate, batch, warmup, weight decay,
dropout) is a value of ``conf/recipe/*.yaml``; this module only reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from textbooks.model import Block, ModelConfig, PhiForCausalLM


@dataclass
class OptimConfig:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-7
    weight_decay: float = 0.1
    fused: bool | None = None  # torch's fused AdamW kernel; None = on CUDA only


@dataclass
class ScheduleConfig:
    warmup_steps: int = 750
    decay_steps: int | None = None  # steps at which lr reaches min_lr; None = the run's total steps
    min_lr_ratio: float = 0.0


@dataclass
class TrainPlan:
    """What the run does, derived from the config (tokens -> steps)."""

    total_steps: int
    global_batch_size: int
    micro_batch_size: int
    accumulate: int
    seq_len: int
    seed: int = 0
    log_every: int = 1  # log train metrics every this many optimizer steps (and at the last one)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len


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


def step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """A distinct, reproducible RNG seed per (run seed, optimizer step, micro-batch, rank) for dropout."""
    return (seed * 1_000_003 + step * 7_919 + micro * 104_729 + rank * 15_485_863) % (2**63 - 1)


class CausalLMModule(L.LightningModule):
    """Trains a ``PhiForCausalLM`` on ``[B, seq_len + 1]`` token windows."""

    def __init__(
        self,
        model_config: dict[str, Any],
        tokenizer: str,
        optim: dict[str, Any],
        schedule: dict[str, Any],
        plan: dict[str, Any],
        *,
        init_from: str | None = None,
        activation_checkpointing: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.optim = OptimConfig(**{**optim, "betas": tuple(optim.get("betas", (0.9, 0.95)))})
        self.schedule = ScheduleConfig(**schedule)
        self.plan = TrainPlan(**plan)
        self.model = PhiForCausalLM(ModelConfig.from_dict(model_config))
        if init_from:
            self._load_initial_weights(init_from)
        if activation_checkpointing:
            apply_activation_checkpointing(self.model)
        if compile:
            for block in self.model.blocks:
                block.compile()
        self._micro_total = 0
        self._loss_sum: torch.Tensor | None = None
        c = self.model.config
        self._dropout = max(c.attn_dropout, c.resid_dropout, c.embd_dropout) > 0

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

    # -- training -----------------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        self._micro_total = self.global_step * self.plan.accumulate

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)

    def _loss(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.model(batch[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        A = self.plan.accumulate
        step, micro = divmod(self._micro_total, A)
        if self._dropout:
            torch.manual_seed(step_seed(self.plan.seed, step, micro, self.global_rank))
        loss = self._loss(batch)
        self._micro_total += 1
        self._loss_sum = loss.detach() if micro == 0 else self._loss_sum + loss.detach()
        last = step + 1 == self.plan.total_steps
        if micro == A - 1 and ((step + 1) % self.plan.log_every == 0 or last):
            tokens_seen = (step + 1) * self.plan.tokens_per_step
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

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("val/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=batch.shape[0])
        return loss

    def on_validation_epoch_end(self) -> None:
        self.log_dict(
            {
                "val/tokens_seen": float(self.global_step * self.plan.tokens_per_step),
                "val/step": float(self.global_step),
            },
            on_epoch=True,
        )

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.optim
        fused = o.fused if o.fused is not None else torch.cuda.is_available()
        opt = torch.optim.AdamW(
            param_groups(self.model, o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps, fused=fused
        )
        s = self.schedule
        decay = s.decay_steps or self.plan.total_steps
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_lambda(step, s.warmup_steps, decay, s.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
