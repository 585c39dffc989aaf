"""The unbiased pass@k estimator of Chen et al. (2021) and its aggregation over tasks.

For a task with ``n`` samples of which ``c`` pass, ``pass@k = 1 - C(n-c, k) / C(n, k)``: the chance that at
least one of ``k`` samples drawn without replacement passes. It is computed as the numerically stable
product ``1 - prod(1 - k / arange(n-c+1, n+1))`` (exactly 1 when ``n - c < k``). A benchmark's pass@k is
the mean over its tasks; it is only reported for the ``k`` that every task has at least ``k`` samples for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

DEFAULT_KS: tuple[int, ...] = (1, 10, 100)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k for one task with ``n`` samples, ``c`` of them correct."""
    if not 0 <= c <= n:
        raise ValueError(f"pass@k: need 0 <= c <= n, got n={n}, c={c}")
    if k < 1:
        raise ValueError(f"pass@k: k must be >= 1, got {k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_per_task(
    num_samples: Sequence[int] | np.ndarray, num_correct: Sequence[int] | np.ndarray, k: int
) -> np.ndarray:
    """pass@k of each task (arrays of sample and correct counts, one entry per task)."""
    if len(num_samples) != len(num_correct):
        raise ValueError(f"pass@k: {len(num_samples)} sample counts but {len(num_correct)} correct counts")
    return np.array([pass_at_k(int(n), int(c), k) for n, c in zip(num_samples, num_correct)], dtype=float)


def aggregate_pass_at_k(
    counts: Mapping[str, tuple[int, int]], ks: Iterable[int] = DEFAULT_KS
) -> dict[str, float]:
    """Mean pass@k over tasks, ``counts`` = {task_id: (n, c)}; keys ``"pass@k"`` for each ``k <= min n``."""
    if not counts:
        return {}
    n = np.array([v[0] for v in counts.values()])
    c = np.array([v[1] for v in counts.values()])
    return {f"pass@{k}": float(pass_at_k_per_task(n, c, k).mean()) for k in ks if (n >= k).all()}
