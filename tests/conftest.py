"""Shared test set-up: offline everything, small thread counts, paths to shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(REPO / ".cache" / "tiktoken"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("WANDB_API_KEY", None)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def benchmarks_dir() -> Path:
    """MBPP, sanitized MBPP, HumanEval+ and MBPP+ files (../shared/data/benchmarks beside the checkout)."""
    d = Path(os.environ.get("TEXTBOOKS_BENCHMARKS", REPO.parent / "shared" / "data" / "benchmarks"))
    if not d.is_dir():
        pytest.skip(f"benchmark files not found at {d} (set TEXTBOOKS_BENCHMARKS)")
    return d


@pytest.fixture(scope="session")
def stdlib_dir() -> Path:
    from textbooks.data.documents import stdlib_dir

    return stdlib_dir()
