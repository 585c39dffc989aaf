"""The in-training eval callback on a real tiny Lightning training: metrics in metrics.csv and W&B against
tokens seen, eval and no_grad during the evaluation only, the final model evaluated too."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from textbooks.benchmarks import load_humaneval
from textbooks.errors import ConfigError
from textbooks.eval.callback import EvalCallback, InTrainingEvalConfig, SandboxSettings, spread
from textbooks.model import ModelConfig
from textbooks.train.config import OptimConfig, ScheduleConfig
from textbooks.train.datamodule import Source, TokenDataModule
from textbooks.train.logging import RunCSVLogger, define_wandb_metrics, wandb_logger
from textbooks.train.module import CausalLMModule

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: no OpenMP hand-offs

SEQ, GLOBAL, MICRO = 64, 8, 4
TOKENS_PER_STEP = SEQ * GLOBAL


class ModeProbe(L.Callback):
    """Records (train mode, grad enabled) at every training batch and every forward of the first block."""

    def __init__(self) -> None:
        self.train_batches: list[tuple[bool, bool]] = []
        self.forwards: list[tuple[bool, bool]] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.model.blocks[0].register_forward_pre_hook(
            lambda m, args: self.forwards.append((m.training, torch.is_grad_enabled()))
        )

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.train_batches.append((pl_module.model.training, torch.is_grad_enabled()))


def tiny_training(tiny_data, run_dir: Path, callback: EvalCallback, steps: int, wandb: bool = False):
    module = CausalLMModule(
        ModelConfig(name="tiny", vocab_size=512, n_layer=2, d_model=64, n_head=2, d_mlp=256, rotary_dim=16,
                    max_seq_len=128),
        OptimConfig(lr=3e-3, weight_decay=0.1),
        ScheduleConfig(warmup_steps=2),
        tokens_per_step=TOKENS_PER_STEP,
        tokenizer=str(tiny_data["tokenizer"]),
    )  # fmt: skip
    dm = TokenDataModule(
        [Source(str(tiny_data["shards"]))], seq_len=SEQ, global_batch_size=GLOBAL, micro_batch_size=MICRO
    )
    loggers: list = [RunCSVLogger(run_dir)]
    if wandb:
        loggers.append(
            wandb_logger(run_dir, name="eval-cb", group="tests", tags=[], config={}, mode="offline")
        )
    probe = ModeProbe()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        accumulate_grad_batches=GLOBAL // MICRO,
        logger=loggers,
        callbacks=[callback, probe],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        limit_val_batches=0,
        use_distributed_sampler=False,
        default_root_dir=str(run_dir),
    )
    if wandb:
        define_wandb_metrics(loggers[1])
    trainer.fit(module, datamodule=dm)
    if wandb:
        loggers[1].experiment.finish()  # flush the offline run's file
    return trainer, module, probe


def rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_eval_metrics_are_logged_against_tokens_seen(tiny_data, tmp_path):
    cfg = InTrainingEvalConfig(
        every_tokens=4 * TOKENS_PER_STEP,
        bpb_problems=16,
        pass_problems=3,
        max_new_tokens=16,
        batch_size=8,
        sandbox=SandboxSettings(workers=1),
    )
    cb = EvalCallback(str(tiny_data["tokenizer"]), TOKENS_PER_STEP, cfg)
    assert cb.every_steps == 4
    trainer, module, probe = tiny_training(tiny_data, tmp_path, cb, steps=10, wandb=True)
    assert trainer.global_step == 10

    table = rows(tmp_path)
    evals = [r for r in table if r.get("eval/humaneval_bpb")]
    assert [int(float(r["train/step"])) for r in evals] == [4, 8, 10]  # every 4 steps, and the final model
    train_tokens = {r["train/step"]: r["train/tokens_seen"] for r in table if r.get("train/loss")}
    for r in evals:
        assert float(r["train/tokens_seen"]) == float(r["train/step"]) * TOKENS_PER_STEP
        assert r["train/tokens_seen"] == train_tokens[r["train/step"]] == r["eval/tokens_seen"]
        assert math.isfinite(float(r["eval/humaneval_bpb"])) and float(r["eval/humaneval_bpb"]) > 0
        assert float(r["eval/humaneval_pass@1"]) in (0.0, 1 / 3, 2 / 3, 1.0)
        assert float(r["eval/seconds"]) > 0
    bpb = [float(r["eval/humaneval_bpb"]) for r in evals]
    assert bpb[-1] < bpb[0]  # training on Python code makes the reference solutions likelier
    assert float(trainer.callback_metrics["eval/humaneval_bpb"]) == pytest.approx(bpb[-1])

    # every forward ran either for training (train mode, grad) or for the evaluation (eval mode, no grad),
    # and each training batch found the model back in train mode
    assert set(probe.forwards) == {(True, True), (False, False)}
    assert probe.train_batches and set(probe.train_batches) == {(True, True)}
    assert module.model.training

    # W&B (offline) got the same rows (its service may still be writing the run file)
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/*.wandb")
    deadline = time.monotonic() + 30
    while b"eval/humaneval_pass@1" not in run_file.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.2)
    data = run_file.read_bytes()
    assert b"eval/humaneval_bpb" in data and b"eval/humaneval_pass@1" in data


def test_no_final_evaluation_when_the_last_step_was_just_evaluated(tiny_data, tmp_path):
    cfg = InTrainingEvalConfig(every_tokens=f"{2 * TOKENS_PER_STEP}", bpb_problems=4, pass_problems=0)
    cb = EvalCallback(str(tiny_data["tokenizer"]), TOKENS_PER_STEP, cfg)
    tiny_training(tiny_data, tmp_path, cb, steps=4)
    evals = [r for r in rows(tmp_path) if r.get("eval/humaneval_bpb")]
    assert [r["train/step"] for r in evals] == ["2.0", "4.0"] and "eval/humaneval_pass@1" not in evals[0]
    assert cb.state_dict() == {"last_step": 4}


def test_problems_for_pass_at_1_are_spread_over_the_benchmark():
    problems = list(load_humaneval())
    chosen = [p.task_id for p in spread(problems, 4)]
    assert chosen == ["HumanEval/0", "HumanEval/41", "HumanEval/82", "HumanEval/123"]
    assert len(spread(problems, 500)) == 164


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"every_tokens": "lots"}, "every_tokens"),
        ({"every_tokens": 0}, "every_tokens must be >= 1"),
        ({"humaneval": False}, "nothing to evaluate"),
        ({"pass_problems": -1}, "must be >= 0"),
    ],
)
def test_bad_settings_are_named(kw, match):
    with pytest.raises(ConfigError, match=match):
        InTrainingEvalConfig(**kw)


def test_unknown_keys_and_missing_files_fail_before_training(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="unknown keys \\['every'\\]"):
        EvalCallback(str(tiny_data["tokenizer"]), TOKENS_PER_STEP, {"every": 5})
    with pytest.raises(ConfigError, match="tokens_per_step"):
        EvalCallback(str(tiny_data["tokenizer"]), 0, {})
    with pytest.raises(Exception, match="benchmark file not found"):
        EvalCallback(
            str(tiny_data["tokenizer"]), TOKENS_PER_STEP, {"mbpp": True, "benchmarks_dir": str(tmp_path)}
        )
