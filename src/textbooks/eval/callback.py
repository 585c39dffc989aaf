"""In-training evaluation: a Lightning callback that scores the model every N tokens seen.

Each evaluation measures, for HumanEval (and MBPP with ``mbpp=true``):

* gold-solution bits per byte (``bpb.gold_bpb``) on all problems, or the first ``bpb_problems``;
* greedy pass@1 on ``pass_problems`` problems spread evenly over the benchmark, executed in the sandbox.

and logs ``eval/humaneval_bpb``, ``eval/humaneval_pass@1``, ``eval/mbpp_bpb``, ``eval/mbpp_pass@1`` and
``eval/seconds`` together with ``train/tokens_seen`` and ``train/step`` of that optimizer step (and their
``eval/`` copies). The row goes straight to every logger (``metrics.csv``, W&B), whatever
``log_every_n_steps`` is; carrying ``train/step`` means a resumed run's log truncation drops it like the
other rows logged after the checkpoint. The values also land in ``trainer.callback_metrics``, so a
``ModelCheckpoint`` can monitor them.

The evaluation runs on global rank 0 (the others wait at a barrier), in eval mode and under ``no_grad``,
in the weights' dtype, and puts the model back in train mode afterwards. It needs the whole model on rank
0 (single device, DDP, DeepSpeed ZeRO 1-2; not FSDP or ZeRO-3 sharded parameters). It relies only on
``pl_module.model`` being a ``PhiForCausalLM``; the tokenizer and the tokens per optimizer step are given.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import lightning as L
import torch

from textbooks.benchmarks import (
    Problem,
    ProblemSet,
    build_program,
    build_prompt,
    default_format,
    load_benchmark,
    stop_sequences,
)
from textbooks.config import dataclass_from, parse_count
from textbooks.errors import ConfigError
from textbooks.eval.bpb import gold_bpb
from textbooks.eval.models.codecs import TiktokenCodec
from textbooks.eval.models.completions import GenerationConfig
from textbooks.eval.models.decoding import LM, TextbooksLM
from textbooks.model import PhiForCausalLM
from textbooks.sandbox import Limits, Sandbox

log = logging.getLogger(__name__)


@dataclass
class SandboxSettings:
    """The sandbox of the pass@1 runs, under the names of ``textbooks-eval``'s ``sandbox`` settings."""

    workers: int | None = None  # programs run in parallel; None = CPU count
    test_cpu_s: float = Limits.test_cpu_s  # CPU seconds per test


@dataclass
class InTrainingEvalConfig:
    """What the callback measures and how often (``eval`` of ``conf/train.yaml``: its schema)."""

    every_tokens: str = "50M"  # evaluate every this many tokens seen (a count: 500K, 2B; rounded to steps)
    humaneval: bool = True
    mbpp: bool = False
    mbpp_split: str = "test"
    benchmarks_dir: str | None = None  # mbpp.jsonl from here instead of the shipped copy (paths.benchmarks)
    bpb_problems: int | None = None  # gold bpb on the first N problems of each benchmark; None = all
    pass_problems: int = 20  # greedy pass@1 on N problems spread over each benchmark; 0 = off
    max_new_tokens: int = 128
    batch_size: int = 8
    at_end: bool = True  # evaluate the final model too (unless the last step was just evaluated)
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)

    def __post_init__(self) -> None:
        if isinstance(self.sandbox, Mapping):
            self.sandbox = dataclass_from(SandboxSettings, self.sandbox, "eval.sandbox")
        if self.tokens_between < 1:
            raise ConfigError(f"eval.every_tokens must be >= 1, got {self.every_tokens}")
        if self.pass_problems < 0 or (self.bpb_problems is not None and self.bpb_problems < 0):
            raise ConfigError("eval.pass_problems and eval.bpb_problems must be >= 0")
        if not self.humaneval and not self.mbpp:
            raise ConfigError("eval: nothing to evaluate; set humaneval=true or mbpp=true")

    @property
    def tokens_between(self) -> int:
        """``every_tokens`` as a number."""
        try:
            return parse_count(self.every_tokens)
        except ValueError as e:
            raise ConfigError(f"eval.every_tokens: {e}") from None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InTrainingEvalConfig:
        return dataclass_from(cls, d, "eval config")


@dataclass(frozen=True)
class Suite:
    """One benchmark as the callback evaluates it."""

    name: str  # metric prefix: humaneval, mbpp
    problems: ProblemSet
    prompt_format: str


def spread(items: list[Problem], n: int) -> list[Problem]:
    """``n`` items spread evenly over ``items`` (all of them when ``n >= len(items)``)."""
    if n >= len(items):
        return list(items)
    return [items[(i * len(items)) // n] for i in range(n)]


def load_suites(cfg: InTrainingEvalConfig) -> list[Suite]:
    """The benchmarks ``cfg`` asks for, loaded (errors name the missing file)."""
    wanted = {"humaneval": (cfg.humaneval, None), "mbpp": (cfg.mbpp, cfg.mbpp_split)}  # the config's keys
    return [
        Suite(name, load_benchmark(name, split=split, data_dir=cfg.benchmarks_dir), default_format(name))
        for name, (on, split) in wanted.items()
        if on
    ]


def evaluate(
    lm: LM, suites: list[Suite], cfg: InTrainingEvalConfig, sandbox: Sandbox | None = None
) -> dict[str, float]:
    """``{<suite>_bpb, <suite>_bpb_mean, <suite>_pass@1}`` for each suite (no ``eval/`` prefix)."""
    out: dict[str, float] = {}
    for s in suites:
        problems = list(s.problems)
        if cfg.bpb_problems != 0:
            subset = problems if cfg.bpb_problems is None else problems[: cfg.bpb_problems]
            report = gold_bpb(lm, subset, prompt_format=s.prompt_format, batch_size=cfg.batch_size)
            out[f"{s.name}_bpb"] = report.bpb
            out[f"{s.name}_bpb_mean"] = report.mean_bpb
        if cfg.pass_problems and sandbox is not None:
            chosen = spread(problems, cfg.pass_problems)
            gen = GenerationConfig(
                max_new_tokens=min(cfg.max_new_tokens, lm.context_length - 1),
                batch_size=cfg.batch_size,
                stop=stop_sequences(s.prompt_format),
            )
            completions = lm.generate([build_prompt(p, s.prompt_format) for p in chosen], gen)
            programs = [build_program(p, c[0].text, s.prompt_format) for p, c in zip(chosen, completions)]
            results = sandbox.run_many(programs)
            out[f"{s.name}_pass@1"] = sum(r.passed for r in results) / len(results)
    return out


class EvalCallback(L.Callback):
    """Evaluate ``pl_module.model`` every ``cfg.every_tokens`` tokens seen (see the module docstring)."""

    def __init__(
        self,
        tokenizer: str | Any,
        tokens_per_step: int,
        cfg: InTrainingEvalConfig | dict[str, Any] | None = None,
    ) -> None:
        from textbooks.tokenizer import load_tokenizer

        self.cfg = cfg if isinstance(cfg, InTrainingEvalConfig) else InTrainingEvalConfig.from_dict(cfg or {})
        if tokens_per_step < 1:
            raise ConfigError(f"EvalCallback: tokens_per_step must be >= 1, got {tokens_per_step}")
        self.tokens_per_step = int(tokens_per_step)
        self.every_steps = max(1, round(self.cfg.tokens_between / self.tokens_per_step))
        self.codec = TiktokenCodec(load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer)
        self.suites = load_suites(self.cfg)
        self.last_step = -1  # the optimizer step evaluated last
        self.last: dict[str, float] = {}  # the metrics logged last

    # -- hooks --------------------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step > 0 and step != self.last_step and step % self.every_steps == 0:
            self.run(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.cfg.at_end and trainer.global_step > 0 and trainer.global_step != self.last_step:
            self.run(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_step = int(state_dict.get("last_step", -1))

    # -- evaluation ---------------------------------------------------------------------------------------
    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Evaluate now (rank 0), log the row and return it (empty on other ranks)."""
        step = trainer.global_step
        self.last_step = step
        row: dict[str, float] = {}
        if trainer.is_global_zero:
            model = pl_module.model
            if not isinstance(model, PhiForCausalLM):
                raise ConfigError(
                    f"EvalCallback needs pl_module.model to be a PhiForCausalLM, got {type(model).__name__}"
                )
            t0 = time.perf_counter()
            lm = TextbooksLM(model, self.codec)  # evaluating() restores the model's train mode after
            sandbox = None
            if self.cfg.pass_problems:
                box = self.cfg.sandbox
                sandbox = Sandbox(workers=box.workers, limits=Limits(test_cpu_s=box.test_cpu_s))
            try:
                metrics = evaluate(lm, self.suites, self.cfg, sandbox)
            finally:
                if sandbox is not None:
                    sandbox.close()
            tokens = float(step * self.tokens_per_step)
            row = {f"eval/{k}": float(v) for k, v in metrics.items()}
            row.update(
                {
                    "eval/seconds": time.perf_counter() - t0,
                    "eval/tokens_seen": tokens,
                    "eval/step": float(step),
                    "train/tokens_seen": tokens,
                    "train/step": float(step),
                }
            )
            for lg in trainer.loggers:
                lg.log_metrics(row, step=step)
                lg.save()
            trainer.callback_metrics.update({k: torch.tensor(v) for k, v in row.items()})
            self.last = row
            shown = ", ".join(f"{k} {float(v):.4g}" for k, v in metrics.items())  # all digits: the loggers
            log.info("eval at step %d (%s tokens): %s", step, f"{int(tokens):,}", shown)
        trainer.strategy.barrier("textbooks-eval")
        return row

    def describe(self) -> dict[str, Any]:
        """The settings, for results files."""
        return {**asdict(self.cfg), "every_steps": self.every_steps, "tokens_per_step": self.tokens_per_step}
