"""Training throughput and MFU of the phi-1 presets on one device (the GPU numbers of the README).

One training step = forward + backward + AdamW on a micro-batch, in bf16 autocast with SDPA attention
(flash kernels on Hopper/Ampere), optionally with activation checkpointing and torch.compile. MFU uses the
model's 6N + 12LdT FLOPs per token and the device's peak from ``textbooks.train.throughput.peak_flops``. The baseline of
the same run is the eager step without checkpointing, so each option prints its ratio against it.

    python benchmarks/throughput.py --model phi1 --micro-batch 8 --steps 20          # on a GPU
    python benchmarks/throughput.py --model cpu_small --micro-batch 8 --seq 256      # smoke run on a CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from textbooks.model import ModelConfig, PhiForCausalLM
from textbooks.train.module import apply_activation_checkpointing, param_groups
from textbooks.train.throughput import peak_flops

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"


def load_preset(name: str, vocab: int) -> ModelConfig:
    """A ``conf/model`` preset over its schema's defaults (``vocab`` where the preset leaves it to the tokenizer)."""
    cfg = OmegaConf.to_object(
        OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(CONF / f"{name}.yaml"))
    )
    return cfg if cfg.vocab_size is not None else dataclasses.replace(cfg, vocab_size=vocab)


def measure(cfg: ModelConfig, a, *, checkpointing: bool, compile: bool) -> dict:
    device = torch.device(a.device)
    torch.manual_seed(0)
    model = PhiForCausalLM(cfg).to(device)
    if checkpointing:
        apply_activation_checkpointing(model)
    if compile:
        for block in model.blocks:
            block.compile()
    opt = torch.optim.AdamW(
        param_groups(model, 0.1), lr=1e-4, betas=(0.9, 0.95), eps=1e-7, fused=device.type == "cuda"
    )
    seq = a.seq or cfg.max_seq_len
    x = torch.randint(0, cfg.vocab_size, (a.micro_batch, seq + 1), device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(a.warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync()
    dt = (time.perf_counter() - t0) / a.steps
    tps = a.micro_batch * seq / dt
    peak = peak_flops(device, dtype)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "measured fp32 matmul"
    rate = f"{peak / 1e12:.1f} TFLOP/s" if peak and peak >= 1e12 else f"{(peak or 0) / 1e9:.0f} GFLOP/s"
    source = f"{where}, {str(dtype).removeprefix('torch.')}: {rate}" if peak else "unknown"
    mfu = model.flops_per_token(seq) * tps / peak if peak else float("nan")
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"tokens_per_sec": tps, "mfu": mfu, "step_s": dt, "peak_gib": mem, "peak_source": source}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+", default=["phi1_small", "phi1"])
    p.add_argument("--vocab", type=int, default=51200, help="vocab for presets whose vocab_size is null")
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=None, help="default: the model's context")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--variants",
        nargs="+",
        default=["eager", "checkpointing", "compile"],
        choices=["eager", "checkpointing", "compile", "compile+checkpointing"],
    )
    a = p.parse_args()
    if a.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    rows = []
    for name in a.model:
        cfg = load_preset(name, a.vocab)
        base = None
        for v in a.variants:
            r = measure(cfg, a, checkpointing="checkpointing" in v, compile="compile" in v)
            gc.collect()
            if a.device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            base = base or r["tokens_per_sec"]
            rows.append((name, v, r, r["tokens_per_sec"] / base))
            print(
                f"{name:12s} {v:22s} {r['tokens_per_sec']:10.0f} tok/s  MFU {r['mfu']:6.1%}  "
                f"step {r['step_s'] * 1e3:7.1f} ms  mem {r['peak_gib']:5.1f} GiB  x{rows[-1][3]:.2f} vs eager",
                flush=True,
            )
    print(f"\n(peak FLOPs: {rows[0][2]['peak_source']}; micro-batch {a.micro_batch}; {a.steps} timed steps)")


if __name__ == "__main__":
    main()
