"""Peak FLOP/s per device type and precision, for model FLOPs utilisation (MFU).

Dense (no sparsity) tensor-core figures from the vendors' datasheets. On a CPU there is no datasheet
number to trust, so the peak is the measured rate of a large fp32 matrix product on this machine
(MFU then reads "fraction of what this CPU's BLAS reaches").
"""

from __future__ import annotations

import functools
import time

import torch

# device-name substring -> {precision: FLOP/s}; first match wins, so specific names come first
PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51e12}),
    ("H100 NVL", {"bf16": 835e12, "fp16": 835e12, "tf32": 418e12, "fp32": 60e12}),
    ("H100", {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12}),  # SXM
    ("H200", {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12}),
    ("GH200", {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12}),
    ("B200", {"bf16": 2250e12, "fp16": 2250e12, "tf32": 1100e12, "fp32": 80e12}),
    ("A100", {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
    ("A10G", {"bf16": 70e12, "fp16": 70e12, "tf32": 35e12, "fp32": 31.2e12}),
    ("A6000", {"bf16": 154.8e12, "fp16": 154.8e12, "tf32": 77.4e12, "fp32": 38.7e12}),
    ("L40S", {"bf16": 362e12, "fp16": 362e12, "tf32": 183e12, "fp32": 91.6e12}),
    ("L4", {"bf16": 121e12, "fp16": 121e12, "tf32": 60e12, "fp32": 30.3e12}),
    ("RTX 4090", {"bf16": 165.2e12, "fp16": 165.2e12, "tf32": 82.6e12, "fp32": 82.6e12}),
    ("RTX 3090", {"bf16": 71e12, "fp16": 71e12, "tf32": 35.6e12, "fp32": 35.6e12}),
    ("V100", {"fp16": 125e12, "fp32": 15.7e12}),
    ("T4", {"fp16": 65e12, "fp32": 8.1e12}),
    ("MI300X", {"bf16": 1307e12, "fp16": 1307e12, "tf32": 653.7e12, "fp32": 163.4e12}),
]


def precision_class(trainer_precision: str, matmul_precision: str | None = None) -> str:
    """Map a Lightning precision string (``bf16-mixed``, ``16-mixed``, ``32-true``) to a table column."""
    p = str(trainer_precision)
    if p.startswith("bf16"):
        return "bf16"
    if p.startswith("16") or p.startswith("fp16"):
        return "fp16"
    return "tf32" if matmul_precision in ("high", "medium") else "fp32"


@functools.lru_cache(maxsize=1)
def measured_cpu_flops(n: int = 1024, seconds: float = 0.3) -> float:
    """FLOP/s of an ``n x n`` fp32 matrix product on this CPU (a practical peak)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def peak_flops(device: torch.device, precision: str) -> tuple[float | None, str]:
    """(peak FLOP/s per device, where the number comes from) for ``device`` at ``precision``."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, table in PEAK_FLOPS:
            if key in name:
                value = table.get(precision) or table.get("fp16")
                return value, f"datasheet {key} {precision}"
        return None, f"unknown GPU {name!r}"
    if device.type == "cpu":
        return measured_cpu_flops(), "measured fp32 matmul"
    return None, f"no peak for {device.type}"
