"""One command for the day a GPU is lent: phi-1's speed and both training recipes, in under 8 minutes.

    python benchmarks/gpu_check.py                       # one GPU (an H100): all parts
    python benchmarks/gpu_check.py --skip throughput     # parts: throughput, deepspeed, fsdp
    python benchmarks/gpu_check.py --device cpu          # smoke mode: tiny model, a few steps (CI)

Parts, in order, each reported even when another fails (the exit status is 1 if any failed):

* ``throughput``: tokens/s, MFU and peak memory of phi-1 1.3B (``conf/model/phi1.yaml``) in bf16 autocast,
  eager, the model's attention (``F.scaled_dot_product_attention``: flash kernels on Hopper), by
  ``benchmarks/throughput.py``'s ``measure`` (3 warm-up and 10 timed steps, micro-batch 4 x 2048, which
  fits 80 GB without activation checkpointing);
* a small real dataset, so that the runs read what training reads: a 4096-id BPE of this project trained
  on 12 standard-library packages, then the whole standard library this interpreter ships packed with it
  (~10M tokens, ``dataset=stdlib``'s layout under the work directory): offline, nothing to download;
* ``deepspeed`` and ``fsdp``: 50 optimizer steps of phi-1-small (350M) through the real ``textbooks-train``
  command line, with ``trainer=deepspeed`` (ZeRO-1, fp16 with dynamic loss scaling: the paper's recipe)
  and ``trainer=fsdp`` (Lightning's FSDPStrategy, bf16), global batch 16 x 2048 in micro-batches of 8;
  losses, tokens/s, MFU and peak memory are read back from each run's ``metrics.csv``.

It prints the device, one summary table, the losses every 10th step and the total wall time.

Time budget on one H100, estimated (no GPU has run it yet): throughput ~30 s (building 1.4B parameters
on the host, ~13 steps at ~0.2 s: 9.7 GFLOP/token x 8192 tokens at ~50% of 989 TFLOP/s); data ~15 s
(3 s here for the BPE and 5 s for the pack on 2 shared cores); each training run ~60-100 s: ~15 s of
imports and start-up, 50 steps of 16 x 2048 tokens at 2.6 GFLOP/token and ~40% MFU (~0.1 s each: ~5 s),
and two validations and checkpoints (``recipe.checkpoint.every_steps`` = half the steps; ~4-5 GB of
weights and optimizer state each, ~2-4 s to write). About 4 minutes in all, 6 at worst: under the 8 asked for.

``--device cpu`` runs what a CPU can (DeepSpeed's fp16 engine and Lightning's FSDPStrategy need CUDA): the
throughput of ``cpu_tiny`` in fp32, and ``trainer=cpu`` and ``trainer=fully_shard`` (FSDP2 on gloo) in their
places, a few steps of ``cpu_tiny`` on a 512-id BPE. It says so in its output; its numbers check that the
script works end to end, they are no GPU figures.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gc
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from throughput import load_preset, measure

from textbooks.data.engine.reader import read_texts
from textbooks.data.stages.pack import PackConfig, pack
from textbooks.io import stdlib_dir
from textbooks.tokenizer import train_bpe

PARTS = ("throughput", "deepspeed", "fsdp")
BUDGET_S = 8 * 60
BPE_PACKAGES = (
    "json", "email", "collections", "logging", "urllib", "http",
    "asyncio", "multiprocessing", "importlib", "xml", "ctypes", "unittest",
)  # fmt: skip
CPU_PACKAGES = ("json", "collections", "logging")


@dataclasses.dataclass(frozen=True)
class Mode:
    """What one device kind runs: the models, sizes and trainer configs of each part."""

    device: str
    bench_model: str  # conf/model preset of the throughput part
    bench_vocab: int  # its vocabulary where the preset leaves it to the tokenizer
    bench_micro_batch: int
    bench_seq: int | None  # None: the model's context
    bench_warmup: int
    bench_steps: int
    train_model: str  # conf/model preset of the training runs
    vocab: int  # the BPE the runs train with
    bpe_packages: tuple[str, ...]  # what the BPE is trained on
    pack_packages: tuple[str, ...] | None  # what is packed; None: the whole standard library
    seq_len: int | None  # None: the model's context
    global_batch: int
    micro_batch: int
    steps: int
    warmup: int
    val_windows: int
    trainers: dict[str, tuple[str, str]]  # part -> (trainer config, what it is)


GPU = Mode(
    device="cuda",
    bench_model="phi1",
    bench_vocab=51200,
    bench_micro_batch=4,
    bench_seq=None,
    bench_warmup=3,
    bench_steps=10,
    train_model="phi1_small",
    vocab=4096,
    bpe_packages=BPE_PACKAGES,
    pack_packages=None,
    seq_len=None,
    global_batch=16,
    micro_batch=8,
    steps=50,
    warmup=10,
    val_windows=32,
    trainers={
        "deepspeed": ("deepspeed", "DeepSpeed ZeRO-1, fp16 (the paper's recipe)"),
        "fsdp": ("fsdp", "FSDP (Lightning FSDPStrategy), bf16"),
    },
)
CPU = Mode(
    device="cpu",
    bench_model="cpu_tiny",
    bench_vocab=512,
    bench_micro_batch=2,
    bench_seq=64,
    bench_warmup=1,
    bench_steps=2,
    train_model="cpu_tiny",
    vocab=512,
    bpe_packages=CPU_PACKAGES,
    pack_packages=CPU_PACKAGES,
    seq_len=32,
    global_batch=8,
    micro_batch=4,
    steps=8,
    warmup=2,
    val_windows=4,
    trainers={
        "deepspeed": ("cpu", "trainer=cpu, fp32: stands in for DeepSpeed, which needs CUDA"),
        "fsdp": ("fully_shard", "FSDP2 on gloo, fp32: stands in for FSDPStrategy, which needs CUDA"),
    },
)


def device_line(device: str) -> str:
    """What ran it: the chip, its memory and the software that matters for the numbers."""
    import lightning

    soft = f"torch {torch.__version__}, lightning {lightning.__version__}, Python {platform.python_version()}"
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        try:
            import deepspeed

            soft += f", deepspeed {deepspeed.__version__}"
        except ImportError:
            soft += ", deepspeed not installed"
        return f"device: {p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}; {soft}"
    return f"device: CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores); {soft}"


def run_throughput(mode: Mode, micro_batch: int) -> dict[str, Any]:
    """``benchmarks/throughput.py``'s eager step of the preset, its memory given back afterwards."""
    cfg = load_preset(mode.bench_model, mode.bench_vocab)
    a = argparse.Namespace(
        device=mode.device,
        micro_batch=micro_batch,
        seq=mode.bench_seq,
        warmup=mode.bench_warmup,
        steps=mode.bench_steps,
    )
    if mode.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats()
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # as the runs: the tiny model is faster without OpenMP hand-offs
    try:
        r = measure(cfg, a, checkpointing=False, compile=False)
    finally:
        gc.collect()
        if mode.device == "cuda":
            torch.cuda.empty_cache()  # the training runs are other processes: leave them the card
    seq = mode.bench_seq or cfg.max_seq_len
    dtype = "bf16" if mode.device == "cuda" else "fp32"
    return {
        "what": f"{mode.bench_model}, {dtype}, eager, SDPA attention, micro-batch {micro_batch} x {seq}",
        "steps": mode.bench_steps,
        "tokens_per_sec": r["tokens_per_sec"],
        "mfu": r["mfu"],
        "peak_mem_gib": r["peak_gib"],
        "note": f"peak FLOPs: {r['peak_source']}; {r['step_s'] * 1e3:.0f} ms/step",
    }


def build_data(mode: Mode, data: Path) -> str:
    """The BPE and the packed shards where ``tokenizer=bpe dataset=stdlib`` look for them under ``data``
    (kept between calls with the same work directory)."""
    lib = stdlib_dir()
    tok = data / "tokenizer" / f"bpe-{mode.vocab}.tiktoken"
    out = data / "tokens" / f"bpe{mode.vocab}" / "stdlib"
    if not tok.exists():
        tok.parent.mkdir(parents=True, exist_ok=True)
        texts = read_texts([str(lib / p) for p in mode.bpe_packages if (lib / p).exists()])
        train_bpe(texts, mode.vocab, tok, show_progress=False)
    if not (out / "manifest.json").exists():
        packages = mode.pack_packages or ()
        inputs = [str(lib / p) for p in packages if (lib / p).exists()] if packages else [str(lib)]
        pack(PackConfig(inputs=inputs, out_dir=str(out), tokenizer=str(tok)), progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    return f"{manifest['tokens']:,} tokens of {manifest['documents']:,} files, BPE {mode.vocab}"


def train_command() -> list[str]:
    """``textbooks-train`` of this interpreter's environment."""
    script = Path(sys.executable).parent / "textbooks-train"
    return [str(script)] if script.exists() else [sys.executable, "-m", "textbooks.train.app"]


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """Losses per step, and the run's tokens/s, MFU (medians after the first fifth of the steps, whose
    windows hold the start-up) and peak memory, from ``metrics.csv``."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]

    def column(key: str) -> list[float]:
        return [float(r[key]) for r in rows if r.get(key)]

    losses = {int(float(r["train/step"])): float(r["train/loss"]) for r in rows}
    later = rows[len(rows) // 5 :]

    def median(key: str) -> float:
        vals = [float(r[key]) for r in later if r.get(key)]
        return statistics.median(vals) if vals else math.nan

    return {
        "losses": losses,
        "tokens_per_sec": median("perf/tokens_per_sec"),
        "mfu": median("perf/mfu"),
        "peak_mem_gib": max(column("perf/peak_mem_gib"), default=math.nan),
        "peak_rss_gib": max(column("perf/peak_rss_gib"), default=math.nan),
    }


def train_overrides(mode: Mode, part: str, work: Path, steps: int) -> list[str]:
    """The ``textbooks-train`` command line of a part's run: ``steps`` optimizer steps of the part's trainer
    config on the data under ``<work>/data``, into ``<work>/runs/gpu_check-<part>``."""
    trainer = mode.trainers[part][0]
    seq = mode.seq_len or load_preset(mode.train_model, mode.vocab).max_seq_len
    return [
        f"paths.data={work / 'data'}",
        f"paths.runs={work / 'runs'}",
        "tokenizer=bpe",
        f"tokenizer.vocab_size={mode.vocab}",
        "dataset=stdlib",
        f"model={mode.train_model}",
        f"trainer={trainer}",
        "trainer.devices=1",
        f"trainer.micro_batch_size={mode.micro_batch}",
        f"recipe.global_batch_size={mode.global_batch}",
        f"recipe.schedule.warmup_steps={mode.warmup}",
        "recipe.checkpoint.keep=last",
        f"recipe.checkpoint.every_steps={max(1, steps // 2)}",  # two saves, validations: GBs each at 350M
        f"train.seq_len={seq}",
        f"train.tokens={steps * mode.global_batch * seq}",
        f"train.val_windows={mode.val_windows}",
        "train.log_every_steps=1",
        "train.export=false",
        "logger=[csv]",
        "progress=false",
        f"run_name=gpu_check-{part}",
    ]


def run_training(mode: Mode, part: str, work: Path, steps: int, timeout: float) -> dict[str, Any]:
    """Run ``train_overrides`` through ``textbooks-train``; its output goes to ``<work>/logs/<part>.log``,
    its checkpoints are deleted afterwards (GBs each at 350M)."""
    run_dir = work / "runs" / f"gpu_check-{part}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, not a resume
    args = train_overrides(mode, part, work, steps)
    log = work / "logs" / f"{part}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TEXTBOOKS_TRACEBACK": "1"}
    if mode.device == "cpu":  # a tiny model runs faster on one thread than with OpenMP hand-offs
        env.setdefault("OMP_NUM_THREADS", "1")
    with open(log, "w") as out:
        out.write(" ".join([*train_command(), *args]) + "\n\n")
        out.flush()
        r = subprocess.run(
            [*train_command(), *args], stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout
        )
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    if r.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"textbooks-train exited with {r.returncode} (log: {log}):\n{tail}")
    m = read_metrics(run_dir)
    return {"what": f"{mode.train_model}, {mode.trainers[part][1]}", "steps": len(m["losses"]), **m}


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def table(results: dict[str, dict[str, Any]]) -> str:
    """One row per part: what ran, steps, first and last loss, tokens/s, MFU, peak memory, wall time."""
    head = [
        "part",
        "what",
        "steps",
        "loss first -> last",
        "tokens/s",
        "MFU",
        "peak dev GiB",
        "peak RSS GiB",
        "s",
    ]
    rows = [head]
    for part, r in results.items():
        wall = fmt(r["wall_s"], ".0f")
        if "error" in r:
            rows.append([part, f"FAILED: {r['error'].splitlines()[0]}", *[""] * 6, wall])
            continue
        losses = list(r.get("losses", {}).values())
        loss = f"{losses[0]:.3f} -> {losses[-1]:.3f}" if losses else "-"
        tps, mfu = fmt(r["tokens_per_sec"], ",.0f"), fmt(r["mfu"], ".1%")
        mem, rss = fmt(r.get("peak_mem_gib"), ".1f"), fmt(r.get("peak_rss_gib"), ".1f")
        rows.append([part, r["what"], str(r["steps"]), loss, tps, mfu, mem, rss, wall])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def check(part: str, r: dict[str, Any], steps: int) -> str | None:
    """Why a training run's losses are not those of a model that trains ``steps`` steps (None when they are)."""
    losses = list(r["losses"].values())
    if len(losses) != steps:
        return f"{part}: {len(losses)} of {steps} steps have a train/loss in metrics.csv"
    if not all(math.isfinite(x) for x in losses):
        return f"{part}: a loss is not finite"
    if losses[-1] >= losses[0]:
        return f"{part}: the loss did not decrease ({losses[0]:.3f} -> {losses[-1]:.3f})"
    return None


def since_start(fallback: float) -> float:
    """Seconds since this process started, its imports included (from /proc on Linux; elsewhere since
    ``fallback``, a ``time.perf_counter()``)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        return float(Path("/proc/uptime").read_text().split()[0]) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - fallback


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    p.add_argument("--skip", nargs="+", choices=PARTS, default=[], help="parts not to run")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default: 50; CPU: 8)")
    p.add_argument(
        "--micro-batch", type=int, default=None, help="throughput micro-batch (default: 4; CPU: 2)"
    )
    p.add_argument("--workdir", type=Path, default=None, help="data, runs and logs (default: a new temp dir)")
    p.add_argument("--run-timeout", type=float, default=420, help="seconds before a training run is stopped")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error(f"no CUDA device visible to torch {torch.__version__}: --device cpu runs the smoke mode")
    t0 = time.perf_counter()
    mode = GPU if a.device == "cuda" else CPU
    steps = a.steps or mode.steps
    work = a.workdir or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    print(device_line(a.device), flush=True)
    if a.device == "cpu":
        print(
            "CPU smoke mode: DeepSpeed's fp16 engine and Lightning's FSDPStrategy need CUDA, so the deepspeed "
            "part runs trainer=cpu and the fsdp part trainer=fully_shard, on cpu_tiny; these numbers show "
            "that the script works, not what a GPU does.",
            flush=True,
        )
    print(f"work directory: {work}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    parts = [x for x in PARTS if x not in a.skip]
    data = ""  # what build_data made, once a training part needs it
    for part in parts:
        start = time.perf_counter()
        try:
            if part == "throughput":
                r = run_throughput(mode, a.micro_batch or mode.bench_micro_batch)
            else:
                if not data:
                    data = build_data(mode, work / "data")
                    print(f"data: {data} in {time.perf_counter() - start:.0f} s", flush=True)
                    start = time.perf_counter()
                r = run_training(mode, part, work, steps, a.run_timeout)
        except Exception as e:  # report it and go on with the other parts
            r = {"error": f"{type(e).__name__}: {e}"}
            print(f"{part} failed: {r['error']}", file=sys.stderr, flush=True)
        r["wall_s"] = time.perf_counter() - start
        if a.device == "cuda":  # a failed part's tensors are free only now: leave the next run the card
            gc.collect()
            torch.cuda.empty_cache()
        results[part] = r
        print(f"{part}: done in {r['wall_s']:.0f} s", flush=True)

    print("\n" + table(results))
    for part, r in results.items():
        if r.get("losses"):
            every = {s: v for s, v in r["losses"].items() if s == 1 or s % 10 == 0 or s == max(r["losses"])}
            print(f"{part} loss by step: " + ", ".join(f"{s}: {v:.3f}" for s, v in every.items()))
        if r.get("note"):
            print(f"{part}: {r['note']}")
    problems = [r["error"].splitlines()[0] for r in results.values() if "error" in r]
    problems += [w for part, r in results.items() if "losses" in r and (w := check(part, r, steps))]
    total = since_start(t0)
    budget = f" (budget {BUDGET_S // 60} min: {'within' if total <= BUDGET_S else 'OVER'})" * (
        a.device == "cuda"
    )
    print(f"\ntotal wall time: {total:.0f} s, imports included{budget}")
    for w in problems:
        print(f"PROBLEM: {w}")
    if a.json:
        a.json.write_text(
            json.dumps(
                {"device": device_line(a.device), "total_s": total, "results": results, "problems": problems},
                indent=1,
            )
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
