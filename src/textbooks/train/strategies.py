"""Distributed strategies, built from trainer configs (``conf/trainer/*.yaml``).

Parallelism is applied from outside the model: FSDP wraps and (optionally) checkpoints each ``Block``;
``fully_shard`` (FSDP2) shards each ``Block`` in the LightningModule's ``configure_model``; DeepSpeed ZeRO
shards optimizer state (stage 1), gradients (stage 2) or parameters (stage 3).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

from textbooks.model import Block


def deepspeed(
    stage: int = 1,
    initial_scale_power: int = 12,
    loss_scale_window: int = 1000,
    hysteresis: int = 2,
    min_loss_scale: int = 1,
    offload_optimizer: bool = False,
    **kwargs: Any,
) -> DeepSpeedStrategy:
    """DeepSpeed ZeRO with phi-1's fp16 settings (initial loss scale 2^12).

    Stage 0 (plain data parallel with DeepSpeed's fp16 optimizer) is what the paper's configs use for
    350M; stage 1 for 1.3B.
    """
    if stage not in (0, 1, 2, 3):
        from textbooks.errors import ConfigError

        raise ConfigError(f"trainer.strategy.stage={stage}: DeepSpeed ZeRO stages are 0, 1, 2, 3")
    return DeepSpeedStrategy(
        stage=stage,
        initial_scale_power=initial_scale_power,
        loss_scale_window=loss_scale_window,
        hysteresis=hysteresis,
        min_loss_scale=min_loss_scale,
        offload_optimizer=offload_optimizer,
        **kwargs,
    )


def fsdp(
    sharding_strategy: str = "FULL_SHARD",
    activation_checkpointing: bool = False,
    state_dict_type: str = "full",
    **kwargs: Any,
) -> FSDPStrategy:
    """FSDP wrapping each transformer block (and checkpointing it when asked)."""
    return FSDPStrategy(
        auto_wrap_policy={Block},
        activation_checkpointing_policy={Block} if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        state_dict_type=state_dict_type,
        **kwargs,
    )


class FullyShardStrategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` with every process in the data-parallel (sharding) dimension: its
    ``"auto"`` would give that dimension one process per node and the rest to tensor parallelism."""

    def setup_environment(self) -> None:
        self._data_parallel_size = self.world_size
        super().setup_environment()


def fully_shard(**kwargs: Any) -> FullyShardStrategy:
    """PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``, one unit per block) through Lightning's
    ``ModelParallelStrategy``, which, unlike ``FSDPStrategy``, also runs on CPUs (gloo). Checkpoints are
    single files (the whole state gathered on rank 0), so a run resumes at any world size or strategy."""
    return FullyShardStrategy(tensor_parallel_size=1, save_distributed_checkpoint=False, **kwargs)
