"""Lightning training step vs a plain PyTorch loop: same model, optimizer, schedule, clipping and batches.

Prints tokens/s of both, measured in the same run (alternating rounds, median), and the ratio.
Goal: Lightning overhead <= 5% on CPU.

    python benchmarks/train_step.py [--d-model 128 --layers 4 --vocab 4096 --seq 256 --batch 8 --steps 40]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import lightning as L
import torch
import torch.nn.functional as F

from textbooks.model import ModelConfig, PhiForCausalLM
from textbooks.train.config import OptimConfig, ScheduleConfig
from textbooks.train.module import CausalLMModule, lr_lambda, param_groups

OPTIM = OptimConfig(lr=1e-3, betas=(0.9, 0.95), eps=1e-7, weight_decay=0.1)
SCHED = ScheduleConfig(warmup_steps=10, decay_steps=None, min_lr_ratio=0.0)


def model_config(a) -> ModelConfig:
    return ModelConfig(
        name="bench",
        vocab_size=a.vocab,
        n_layer=a.layers,
        d_model=a.d_model,
        n_head=a.d_model // 32,
        d_mlp=4 * a.d_model,
        rotary_dim=16,
        max_seq_len=a.seq,
    )


def plain_loop(a, batches: list[torch.Tensor]) -> float:
    """Seconds per step of a hand-written loop (after warm-up)."""
    torch.manual_seed(0)
    model = PhiForCausalLM(model_config(a)).train()
    opt = torch.optim.AdamW(
        param_groups(model, OPTIM.weight_decay), lr=OPTIM.lr, betas=OPTIM.betas, eps=OPTIM.eps
    )
    total = len(batches)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, SCHED.warmup_steps, total, 0.0))
    times = []
    t0 = time.perf_counter()
    for b in batches:
        logits = model(b[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), b[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        t1 = time.perf_counter()
        times.append(t1 - t0)
        t0 = t1
    return statistics.median(times[a.warmup :])


class StepTimer(L.Callback):
    """Time between consecutive batch starts: everything Lightning does per step is inside."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        self.starts.append(time.perf_counter())

    @property
    def times(self) -> list[float]:
        return [b - a for a, b in zip(self.starts, self.starts[1:])]


def lightning_loop(a, batches: list[torch.Tensor], log_dir: str) -> float:
    """Seconds per step of the library's LightningModule under a Trainer, with its real logging."""
    from textbooks.train.logging import RunCSVLogger
    from textbooks.train.throughput import ThroughputMonitor

    torch.manual_seed(0)
    module = CausalLMModule(model_config(a), OPTIM, SCHED, tokens_per_step=a.batch * a.seq, log_every=10)
    timer = StepTimer()
    monitor = ThroughputMonitor(every=10, accumulate=1)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=len(batches),
        logger=RunCSVLogger(log_dir),
        callbacks=[timer, monitor],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        log_every_n_steps=10,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    trainer.fit(module, train_dataloaders=loader)
    return statistics.median(timer.times[a.warmup :])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    import logging
    import tempfile

    logging.getLogger("lightning").setLevel(logging.ERROR)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, a.vocab, (a.batch, a.seq + 1), generator=g) for _ in range(a.steps)]
    tokens = a.batch * a.seq
    plain, light = [], []
    with tempfile.TemporaryDirectory() as d:
        for r in range(a.rounds):  # alternate, so drifting machine load hits both alike
            plain.append(plain_loop(a, batches))
            light.append(lightning_loop(a, batches, f"{d}/{r}"))
    tp, tl = tokens / statistics.median(plain), tokens / statistics.median(light)
    print(
        f"model d{a.d_model} L{a.layers} vocab {a.vocab}, {a.batch}x{a.seq} tokens/step, {torch.get_num_threads()} "
        f"threads, median of {a.rounds} rounds x {a.steps - a.warmup} steps"
    )
    print(f"plain PyTorch loop : {tp:9.0f} tokens/s")
    print(f"Lightning step     : {tl:9.0f} tokens/s")
    print(f"ratio Lightning/plain = {tl / tp:.3f}  (overhead {100 * (1 - tl / tp):+.1f}%; goal <= 5%)")


if __name__ == "__main__":
    main()
