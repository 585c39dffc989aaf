"""The schema of ``textbooks-train``'s config: one dataclass per part of ``conf/train.yaml``.

Every default of the training app is written here, once, with what it means. ``register()`` stores
``TrainAppConfig`` in Hydra's ConfigStore as ``train_schema``, the first entry of ``conf/train.yaml``'s
defaults list, so each config group is typed by its field here: ``model`` by ``ModelConfig`` (in
``textbooks.model``), ``recipe`` by ``RecipeConfig``, ``trainer`` by ``TrainerConfig``, ``logger`` by
``LoggerConfig``, ``dataset`` by ``DatasetConfig``, ``scale`` by ``ScaleConfig``, ``eval`` by
``textbooks.eval.callback.InTrainingEvalConfig`` and ``train`` by ``TrainConfig``; ``experiment`` files
override any of them. The YAML files hold only what differs from these defaults, the links between
parts (``train.seq_len: ${model.max_seq_len}``) and the comments a user reads; a key the schema does
not have, or a value of the wrong type, stops the app before it does any work. Fields without a default
(``MISSING``) are set by the YAML links or by the chosen group.

``load(cfg)`` turns a composed config into these objects; from Python, build them directly
(``TrainConfig(tokens="2M", seq_len=256, global_batch_size=16, micro_batch_size=16).total_steps``).
The ``paths`` and ``tokenizer`` groups are shared with the other apps and stay plain mappings here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from textbooks.config import parse_count
from textbooks.errors import ConfigError, ConfigValueError
from textbooks.eval.callback import InTrainingEvalConfig
from textbooks.model import ModelConfig
from textbooks.train.datamodule import Source


@dataclass
class TrainConfig:
    """How long the run trains and in what batches (litgpt's ``TrainArgs``); ``train`` in the config."""

    tokens: str = "2M"  # tokens seen: the unit of training length (a count: 1.5M, 26B)
    seq_len: int = MISSING  # tokens per window (conf/train.yaml: the model's context)
    global_batch_size: int = MISSING  # windows per optimizer step (conf/train.yaml: the recipe's)
    micro_batch_size: int = MISSING  # windows per device and forward pass (conf/train.yaml: the trainer's)
    val_windows: int = 32  # windows held out at the end of each source for val/loss
    log_every_steps: int = 10  # train metrics, tokens/s and MFU every this many optimizer steps
    init_from: str | None = None  # start from these weights (a run's model/ dir or a .ckpt): finetuning
    export: bool = True  # write <run dir>/model/ (config.json + model.safetensors) at the end

    @property
    def total_tokens(self) -> int:
        try:
            return parse_count(self.tokens)
        except ConfigValueError as e:
            raise e.with_key("train.tokens") from None

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len

    @property
    def total_steps(self) -> int:
        """Optimizer steps that see ``tokens`` tokens (budgets below one global batch are refused)."""
        steps = self.total_tokens // self.tokens_per_step
        if steps < 1:
            raise ConfigError(
                f"train.tokens={self.total_tokens:,} is below one global batch ({self.global_batch_size} x "
                f"{self.seq_len} = {self.tokens_per_step:,} tokens): raise train.tokens or lower the global "
                "batch size / sequence length"
            )
        return steps

    def accumulation(self, world_size: int) -> int:
        """Micro-batches per optimizer step on each of ``world_size`` devices."""
        G, micro = self.global_batch_size, self.micro_batch_size
        if G % (micro * world_size):
            raise ConfigError(
                f"global_batch_size={G} is not a multiple of micro_batch_size={micro} x {world_size} devices: "
                "change train.global_batch_size or trainer.micro_batch_size"
            )
        return G // (micro * world_size)


@dataclass
class OptimConfig:
    """AdamW, as phi-1 was trained (the released configs)."""

    lr: float = 1.0e-3  # peak learning rate; 1.8e-3 for phi-1-small in the released configs
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1.0e-7
    weight_decay: float = 0.1  # on matrices only (linear weights, embeddings)
    fused: bool | None = None  # torch's fused AdamW kernel; None = on CUDA only

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]  (a list when it comes from YAML)


@dataclass
class ScheduleConfig:
    """Linear warmup to the peak learning rate, then linear decay to ``min_lr_ratio`` of it."""

    warmup_steps: int = 750
    # the step at which lr reaches min_lr; None = the run's last step. phi-1-base: 36000 scheduled, its
    # checkpoint taken at 24000 (lr still ~3.4e-4)
    decay_steps: int | None = None
    min_lr_ratio: float = 0.0


@dataclass
class DropoutConfig:
    """Dropout probabilities (the model's ``embd_dropout``, ``attn_dropout``, ``resid_dropout``)."""

    attn: float = 0.1
    resid: float = 0.1
    embd: float = 0.0


@dataclass
class CheckpointConfig:
    """When checkpoints are written (with a validation) and which are kept."""

    every_steps: int = 1000  # at most: short runs checkpoint ~10 times. Also the granularity of resuming
    keep: str = "all"  # all: keep every periodic checkpoint; last: only last.ckpt
    best: str | None = None  # keep the best checkpoint by this metric (val/loss); exported as <run>/model
    mode: str = "min"  # min or max: which value of ``best`` is better

    def __post_init__(self) -> None:
        if self.keep not in ("all", "last") or self.mode not in ("min", "max"):
            raise ConfigError(
                f"recipe.checkpoint: keep={self.keep!r} (all or last), mode={self.mode!r} (min or max)"
            )

    def interval(self, total_steps: int) -> int:
        """Optimizer steps between checkpoints: ``every_steps``, or less so that a run has ~10."""
        return max(1, min(self.every_steps, math.ceil(total_steps / 10)))


@dataclass
class RecipeConfig:
    """The paper's optimiser and schedule numbers. Defaults: pretraining (paper, section 2, and
    Microsoft's released configs); ``conf/recipe/finetune.yaml`` holds what finetuning changes."""

    name: str = "pretrain"
    global_batch_size: int = 1024  # sequences of 2048 tokens: ~2.1M tokens per step
    optimizer: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    grad_clip: float | None = 1.0  # gradient norm clipping; None = off
    dropout: DropoutConfig = field(default_factory=DropoutConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


@dataclass
class TrainerConfig:
    """The hardware: ``lightning.Trainer`` arguments, and how the model runs on it. Defaults: one CPU
    process in fp32 (bf16 autocast is ~35x slower on CPUs without AMX)."""

    accelerator: str = "cpu"
    devices: Any = 1  # a count, -1 (all), "auto" or a list of device ids
    num_nodes: int = 1
    precision: str = "32-true"
    # a Lightning strategy name, or a node with _target_ built by hydra.utils.instantiate
    # (conf/trainer/deepspeed.yaml, fsdp.yaml: textbooks.train.strategies)
    strategy: Any = "auto"
    micro_batch_size: int = 8  # windows per device and forward pass
    num_workers: int = 0  # DataLoader worker processes
    compile: bool = False  # torch.compile each block (+0-15% on CPU, 20-40 s first step)
    activation_checkpointing: bool = False  # recompute each block in the backward pass
    matmul_precision: str | None = None  # "high" allows TF32 matmuls on Ampere+ GPUs


@dataclass
class CSVLoggerConfig:
    """``metrics.csv`` in the run directory, continued across resumes (no settings)."""


@dataclass
class WandbConfig:
    """Weights & Biases. ``mode`` auto: online when an API key is configured, else offline files under
    ``<run dir>/wandb`` (upload later with ``wandb sync <run dir>/wandb/offline-run-*``)."""

    project: str = "textbooks"
    entity: str | None = None
    mode: str = "auto"  # auto, online, offline or disabled
    group: str | None = None
    job_type: str | None = None


@dataclass
class LoggerConfig:
    """The loggers the ``logger`` group chose (``logger=[csv,wandb]``); None = not chosen."""

    csv: CSVLoggerConfig | None = None
    wandb: WandbConfig | None = None


@dataclass
class DatasetConfig:
    """A mixture of packed token shards (``conf/dataset``): weights are repeats per epoch."""

    name: str = MISSING
    sources: list[Source] = MISSING
    tau: float | None = None  # CodeExercises: the AST-match threshold its decontamination pruned at


@dataclass
class ScaleConfig:
    """A (model, tokens seen) group of Figure 2.1 (``conf/scale``), read by experiments as ``${scale.*}``."""

    name: str = MISSING
    tokens: str = MISSING  # tokens seen of the group's pretraining runs (a count)
    pretrain_lr: float = MISSING  # the peak learning rate of its pretraining runs


@dataclass
class TrainEvalConfig(InTrainingEvalConfig):
    """The in-training evaluation (``textbooks.eval.callback``), off unless ``enabled``."""

    enabled: bool = False


@dataclass
class TrainAppConfig:
    """``textbooks-train``'s whole config: what ``conf/train.yaml`` composes."""

    paths: dict[str, Any] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: dict[str, Any] = field(default_factory=dict)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    scale: ScaleConfig | None = None
    stage: str = MISSING  # pretrain or finetune (conf/train.yaml: the recipe's name)
    seed: int = 0
    sweep_name: str = "sweep"
    run_name: str = MISSING  # the run directory's name (conf/train.yaml: from the keys that define the run)
    force: bool = False  # rerun even if the run directory already holds finished results
    progress: bool = True  # Lightning's progress bar
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: TrainEvalConfig = field(default_factory=TrainEvalConfig)

    def __post_init__(self) -> None:
        seq_len = self.train.seq_len
        if isinstance(seq_len, int) and seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"train.seq_len={self.train.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}"
            )

    def model_for(self, n_vocab: int) -> ModelConfig:
        """The model with its vocabulary sized for a tokenizer of ``n_vocab`` ids (``vocab_size: null``)."""
        from textbooks.tokenizer import padded_vocab_size

        vocab = self.model.vocab_size
        if vocab is None:
            return dataclasses.replace(self.model, vocab_size=padded_vocab_size(n_vocab))
        if n_vocab > vocab:
            raise ConfigError(
                f"tokenizer {self.tokenizer.get('name')!r} has {n_vocab} ids but model={self.model.name} embeds "
                f"only {vocab}: set model.vocab_size >= {n_vocab} (or null to size it from the tokenizer)"
            )
        return self.model


def load(cfg: DictConfig | TrainAppConfig) -> TrainAppConfig:
    """The typed config of a composed one (resolving every interpolation); objects pass through."""
    if isinstance(cfg, TrainAppConfig):
        return cfg
    if not OmegaConf.is_config(cfg) or OmegaConf.get_type(cfg) is not TrainAppConfig:
        cfg = OmegaConf.merge(OmegaConf.structured(TrainAppConfig), cfg)  # a config built without the schema
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def register() -> None:
    """Store the schema in Hydra's ConfigStore as ``train_schema`` (``conf/train.yaml`` starts with it)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="train_schema", node=TrainAppConfig)


register()
