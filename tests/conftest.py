"""Shared test set-up: offline everything, small thread counts, a tiny real corpus."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(REPO / ".cache" / "tiktoken"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("WANDB_API_KEY", None)


# `make test` runs on two pytest-xdist workers (``-n 2 --dist loadfile``). A module's tests stay on one worker,
# so a module fixture (a demo, a trained run) is built once; these modules share a worker, so that one one-node
# SLURM runs at a time.
ONE_WORKER = {"test_executors.py": "slurm", "test_train_distributed.py": "slurm"}
# Modules of a minute or more start first, so that the workers finish together (the rest go in file order).
LONG_FIRST = ("slurm", "test_report.py", "test_eval_score.py", "test_train.py", "test_eval_served.py")


def _unit(path: str) -> str:
    """The worker unit of a test file: its group in ``ONE_WORKER``, or the file itself."""
    return ONE_WORKER.get(Path(path).name, path)


def _rank(path: str) -> int:
    unit = Path(_unit(path)).name
    return LONG_FIRST.index(unit) if unit in LONG_FIRST else len(LONG_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: _rank(item.nodeid.split("::", 1)[0]))  # stable: file order within a rank


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """``--dist loadfile`` with the units above, in collection order (not by their number of tests)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Modules(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid.split("::", 1)[0])

    config.option.loadscopereorder = False
    return Modules(config, log)


@pytest.fixture(autouse=True)
def _commands_start_their_own_wandb_service() -> Iterator[None]:
    """A command a test starts runs its own W&B service, as from a shell. An in-process W&B run of a test
    leaves WANDB_SERVICE set, and commands inheriting it would share this process's service, where a killed
    command's run stays registered ("run ID ... is in use" when it resumes)."""
    yield
    os.environ.pop("WANDB_SERVICE", None)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for the module: tiny models run faster without OpenMP hand-offs on a loaded machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def stdlib_dir() -> Path:
    from textbooks.io import stdlib_dir

    return stdlib_dir()


TINY_PACKAGES = ("json", "email", "collections", "logging", "urllib", "http")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, stdlib_dir):
    """A small real corpus (a few stdlib packages), a 512-token BPE trained on it and its packed shards,
    laid out as the configs expect under ``root`` (``paths.root=<root>``)."""
    from textbooks.data.stages.pack import PackConfig, pack
    from textbooks.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("tiny")
    inputs = [str(stdlib_dir / p) for p in TINY_PACKAGES]
    from textbooks.data.engine.reader import read_texts

    tok = root / "data" / "tokenizer" / "bpe-512.tiktoken"
    train_bpe(read_texts(inputs), 512, tok, show_progress=False)
    out = root / "data" / "tokens" / "bpe512" / "stdlib"
    manifest = pack(
        PackConfig(inputs=inputs, out_dir=str(out), tokenizer=str(tok), shard_bytes=300_000), progress=False
    )
    overrides = [
        f"paths.root={root}",
        "tokenizer=bpe",
        "tokenizer.vocab_size=512",
        "dataset=stdlib",
        "model=cpu_tiny",
        "progress=false",
    ]
    return {
        "root": root,
        "inputs": inputs,
        "tokenizer": tok,
        "shards": out,
        "manifest": manifest,
        "overrides": overrides,
    }
