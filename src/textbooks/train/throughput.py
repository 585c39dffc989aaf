"""Tokens/s and model FLOPs utilisation (MFU): Lightning's ``ThroughputMonitor``, with the peaks it lacks.

Lightning measures (a rolling window of micro-batches, validation time left out, CUDA synchronised) and
``lightning.fabric.utilities.throughput.get_available_flops`` gives the device's peak for the trainer's
compute dtype (TF32 when fp32 matmuls may use it). Two things it does not cover are kept here:

* CPUs: Lightning has no peak for them, so the peak is the measured rate of a large fp32 matrix product
  on this machine (MFU then reads "fraction of what this CPU's BLAS reaches");
* GPUs its table misses or lists with 2:4 sparsity: an H200 (reported as ``NVIDIA H200``, which it does
  not match), the H100 NVL (its sparse figures), B200, L40S (matched as an L4) and MI300X. ``DENSE_PEAKS``
  holds their dense datasheet figures, so MFU means the same on every device.

The monitor logs ``perf/tokens_per_sec`` (all devices), ``perf/tokens_per_sec_per_device``,
``perf/step_seconds`` and ``perf/mfu`` with the train metrics of every ``log_every_steps``-th optimizer
step, over the micro-batches since the previous log, with rank 0's peak memory so far (``peak_memory``:
``perf/peak_mem_gib`` on CUDA, ``perf/peak_rss_gib`` everywhere), and keeps the training time of all sessions of a
resumed run (for device-hours) in the checkpoints.
"""

from __future__ import annotations

import functools
import logging
import resource
import sys
import time
import warnings
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.callbacks import ThroughputMonitor as LightningThroughputMonitor
from lightning.pytorch.callbacks.throughput_monitor import _plugin_to_compute_dtype
from lightning.pytorch.trainer.states import RunningStage

log = logging.getLogger(__name__)

# chip (lower-case substring of the device name) -> compute dtype -> dense FLOP/s; first match wins
DENSE_PEAKS: dict[str, dict[torch.dtype | str, float]] = {
    "h100 nvl": {torch.bfloat16: 835e12, torch.float16: 835e12, "tfloat32": 418e12, torch.float32: 60e12},
    "gh200": {
        torch.bfloat16: 989.4e12,
        torch.float16: 989.4e12,
        "tfloat32": 494.7e12,
        torch.float32: 66.9e12,
    },
    "h200": {torch.bfloat16: 989.4e12, torch.float16: 989.4e12, "tfloat32": 494.7e12, torch.float32: 66.9e12},
    "b200": {torch.bfloat16: 2250e12, torch.float16: 2250e12, "tfloat32": 1100e12, torch.float32: 80e12},
    "l40s": {torch.bfloat16: 362e12, torch.float16: 362e12, "tfloat32": 183e12, torch.float32: 91.6e12},
    "mi300x": {
        torch.bfloat16: 1307e12,
        torch.float16: 1307e12,
        "tfloat32": 653.7e12,
        torch.float32: 163.4e12,
    },
}


@functools.lru_cache(maxsize=1)
def measured_cpu_flops(n: int = 1024, seconds: float = 0.3) -> float:
    """FLOP/s of an ``n x n`` fp32 matrix product on this CPU (a practical peak). Its own RNG: training's
    random state is left as it was."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    a @ b  # warm-up
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Peak FLOP/s of one ``device`` computing in ``dtype`` (None when unknown)."""
    if device.type == "cpu":
        return measured_cpu_flops()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device).lower()
        for chip, table in DENSE_PEAKS.items():
            if chip in name:
                if dtype is torch.float32 and torch.get_float32_matmul_precision() != "highest":
                    return table.get("tfloat32")
                return table.get(dtype)
    return get_available_flops(device, dtype)


def peak_memory(device: torch.device) -> dict[str, float]:
    """This process's peak memory so far, in GiB, as two metrics that do not mean the same thing:

    * ``perf/peak_mem_gib`` (CUDA only): ``torch.cuda.max_memory_allocated``, the most the tensors on the
      device ever took: what has to fit the card (the caching allocator reserves a little more);
    * ``perf/peak_rss_gib`` (every device): the peak resident set of the process on the host, interpreter,
      libraries and CUDA context included (DataLoader workers are other processes): what has to fit the
      machine's RAM. On a CPU it is the only figure; CPUs have no allocator statistic for tensors alone.
    """
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    out = {"perf/peak_rss_gib": rss / (2**30 if sys.platform == "darwin" else 2**20)}
    if device.type == "cuda":
        out["perf/peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


class ThroughputMonitor(LightningThroughputMonitor):
    """Lightning's monitor for windows of tokens (``[B, seq_len + 1]`` batches), logging ``perf/*`` every
    ``every`` optimizer steps of ``accumulate`` micro-batches. The module sets ``flops_per_batch``."""

    def __init__(self, *, every: int, accumulate: int) -> None:
        self.every, self.accumulate = max(1, every), accumulate
        super().__init__(
            batch_size_fn=lambda batch: batch.shape[0],
            length_fn=lambda batch: batch.shape[0] * (batch.shape[1] - 1),  # tokens predicted
            window_size=max(2, self.every * accumulate),  # rates over the steps since the last log
        )
        self.last: dict[str, float] = {}  # the metrics logged last
        self.train_seconds = 0.0  # all sessions of the run, this one up to on_train_end
        self._before = 0.0  # training seconds of earlier sessions of a resumed run
        self._session_start = time.perf_counter()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        with warnings.catch_warnings():  # Lightning's "FLOPs not found" for chips DENSE_PEAKS has
            warnings.filterwarnings("ignore", message=".*FLOPs not found")
            super().setup(trainer, pl_module, stage)
        device = trainer.strategy.root_device
        peak = peak_flops(device, _plugin_to_compute_dtype(trainer.precision_plugin))
        if peak is None:
            log.warning("no peak FLOP/s known for %s: MFU is not logged", device)
        self.available_flops = peak  # type: ignore[assignment]
        for throughput in self._throughputs.values():
            throughput.available_flops = peak

    def on_train_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_start(trainer, *args)
        self._session_start = time.perf_counter()

    def _compute(self, trainer: L.Trainer, iter_num: int | None = None) -> None:
        """Log the window's rates as ``perf/*`` with the train metrics of this step (training only)."""
        step = trainer.global_step
        if trainer.state.stage != RunningStage.TRAINING or step % self.every:
            return  # (the parent calls this at the last micro-batch of each optimizer step)
        m = self._throughputs[RunningStage.TRAINING].compute()
        per_device = m.get("device/items_per_sec")
        if per_device is None:  # the window is not full yet
            return
        world = trainer.world_size
        metrics = {
            "perf/tokens_per_sec": per_device * world,
            "perf/tokens_per_sec_per_device": per_device,
            "perf/step_seconds": self.accumulate / m["device/batches_per_sec"],
        }
        if "device/mfu" in m:
            metrics["perf/mfu"] = m["device/mfu"]
        metrics.update(peak_memory(trainer.strategy.root_device))
        self.last = metrics
        trainer.lightning_module.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.train_seconds = self._before + time.perf_counter() - self._session_start

    def state_dict(self) -> dict[str, float]:
        """Training time so far, so that device-hours add up over resumed sessions."""
        return {"train_seconds": self._before + time.perf_counter() - self._session_start}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self._before = float(state.get("train_seconds", 0.0))
