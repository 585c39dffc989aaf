"""Training samples from a mixture of token shards, in an order that resumes exactly.

* A sample is a window of ``seq_len + 1`` tokens (inputs and shifted targets); windows do not overlap
  and run over the concatenation of each source's shards.
* A mixture weights its sources by repeats: weight 2 puts every window of that source in the index
  twice; a fractional part adds a seeded subset of its windows.
* Each epoch is a seeded permutation of the index; the global order is epoch after epoch.
* Optimizer step ``k`` consumes global positions ``[k * G, (k + 1) * G)`` (``G`` = global batch size);
  rank ``r`` of ``W`` takes positions ``r, r + W, ...`` of those, so the samples of a step do not depend
  on the world size, and the DataLoader worker count never changes the order.
* The position is ``global_step * G``, saved with the checkpoint (``state_dict``), so a resumed run
  continues with exactly the batches the uninterrupted run would have seen.
* The last ``val_windows`` windows of each source are held out for validation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from textbooks.errors import ConfigError
from textbooks.train.shards import TokenShards

_SHIFT = 40  # global window id = source << 40 | window


@dataclass
class Source:
    """One component of a mixture: packed token shards and how often to repeat them."""

    path: str
    weight: float = 1.0
    build: str | None = None  # the command that builds the shards, quoted in the "missing shards" error


class Mixture:
    """The windows of a weighted set of token sources, split into train and validation indices."""

    def __init__(
        self, sources: Sequence[Source], seq_len: int, *, seed: int = 0, val_windows: int = 0
    ) -> None:
        if not sources:
            raise ConfigError("dataset: no sources given")
        self.seq_len = seq_len
        self.sources = list(sources)
        self.shards = [TokenShards(s.path, build_hint=s.build) for s in sources]
        train, val = [], []
        for i, (src, sh) in enumerate(zip(self.sources, self.shards)):
            n = max(0, (sh.n_tokens - 1) // seq_len)
            n_val = min(val_windows, n // 10) if val_windows else 0
            n_train = n - n_val
            if n_train <= 0:
                raise ConfigError(
                    f"dataset: {src.path} has {sh.n_tokens} tokens, fewer than one window of {seq_len + 1}"
                )
            if src.weight < 0:
                raise ConfigError(f"dataset: weight of {src.path} is negative ({src.weight})")
            ids = np.arange(n_train, dtype=np.int64)
            whole, frac = divmod(src.weight, 1.0)
            parts = [ids] * int(whole)
            if frac > 0:
                rng = np.random.default_rng([seed, i, 7919])
                parts.append(np.sort(rng.choice(ids, size=round(frac * n_train), replace=False)))
            if parts:
                train.append((i << _SHIFT) | np.concatenate(parts))
            val.append((i << _SHIFT) | np.arange(n_train, n, dtype=np.int64))
        self.train_index = np.concatenate(train) if train else np.zeros(0, dtype=np.int64)
        self.val_index = np.concatenate(val)
        if len(self.train_index) == 0:
            raise ConfigError("dataset: all source weights are zero")

    def fingerprint(self) -> str:
        """Identifies the data order: sources (by manifest), weights, window length."""
        key = [
            (s.path, s.weight, sh.manifest.get("config_hash"), sh.n_tokens)
            for s, sh in zip(self.sources, self.shards)
        ]
        return hashlib.sha256(json.dumps([key, self.seq_len]).encode()).hexdigest()[:16]

    def window(self, gid: int) -> np.ndarray:
        src, w = gid >> _SHIFT, gid & ((1 << _SHIFT) - 1)
        return self.shards[src].read(w * self.seq_len, self.seq_len + 1)

    @property
    def n_tokens(self) -> int:
        return sum(sh.n_tokens for sh in self.shards)


class WindowDataset(Dataset):
    """Map-style view of an index of global window ids; items are ``int64[seq_len + 1]`` tensors."""

    def __init__(self, mixture: Mixture, index: np.ndarray) -> None:
        self.mixture = mixture
        self.index = index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.mixture.window(int(self.index[i])).astype(np.int64))


class StridedBatchSampler(Sampler[list[int]]):
    """An endless stream of micro-batches of dataset positions for one rank (see the module docstring)."""

    def __init__(
        self,
        n: int,
        *,
        global_batch: int,
        micro_batch: int,
        rank: int,
        world: int,
        seed: int,
        start: int = 0,
    ) -> None:
        per_rank, rem = divmod(global_batch, world)
        if rem or per_rank % micro_batch:
            raise ConfigError(
                f"global_batch_size={global_batch} must be a multiple of micro_batch_size={micro_batch} x "
                f"world size={world}"
            )
        self.n, self.G, self.micro, self.rank, self.world, self.seed = (
            n,
            global_batch,
            micro_batch,
            rank,
            world,
            seed,
        )
        self.start = start
        self._epoch, self._perm = -1, np.zeros(0, dtype=np.int64)

    def position(self, p: int) -> int:
        """Dataset index of global position ``p``."""
        epoch, j = divmod(p, self.n)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return int(self._perm[j])

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start // self.G
        while True:
            base = step * self.G
            mine = [self.position(base + self.rank + k * self.world) for k in range(self.G // self.world)]
            for i in range(0, len(mine), self.micro):
                yield mine[i : i + self.micro]
            step += 1


class TokenDataModule(L.LightningDataModule):
    """Lightning DataModule over a ``Mixture``; its state (samples consumed) travels in checkpoints."""

    def __init__(
        self,
        sources: Sequence[Source],
        *,
        seq_len: int,
        global_batch_size: int,
        micro_batch_size: int,
        seed: int = 0,
        val_windows: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.sources = list(sources)
        self.seq_len = seq_len
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.seed = seed
        self.val_windows = val_windows
        self.num_workers = num_workers
        self.mixture: Mixture | None = None
        self._start = 0

    def prepare(self) -> Mixture:
        """Open the shards (also validates them) once."""
        if self.mixture is None:
            self.mixture = Mixture(self.sources, self.seq_len, seed=self.seed, val_windows=self.val_windows)
        return self.mixture

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    def _world(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def _loader(self, dataset: Dataset, batch_sampler) -> DataLoader:
        return DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        mix = self.prepare()
        rank, world = self._world()
        sampler = StridedBatchSampler(
            len(mix.train_index),
            global_batch=self.global_batch_size,
            micro_batch=self.micro_batch_size,
            rank=rank,
            world=world,
            seed=self.seed,
            start=self._start,
        )
        return self._loader(WindowDataset(mix, mix.train_index), sampler)

    def val_dataloader(self) -> DataLoader:
        mix = self.prepare()
        rank, world = self._world()
        mine = list(range(rank, len(mix.val_index), world))
        batches = [mine[i : i + self.micro_batch_size] for i in range(0, len(mine), self.micro_batch_size)]
        return self._loader(WindowDataset(mix, mix.val_index), batches)

    def state_dict(self) -> dict:
        step = self.trainer.global_step if self.trainer is not None else 0
        return {
            "samples_consumed": step * self.global_batch_size,
            "global_batch_size": self.global_batch_size,
            "mixture": self.prepare().fingerprint(),
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict) -> None:
        mine = self.prepare().fingerprint()
        if state.get("mixture") != mine or state.get("seed") != self.seed:
            raise ConfigError(
                "the checkpoint was trained on a different data mixture or seed than this run's config; "
                "resume with the original dataset/seed, or start a new run directory"
            )
        if state.get("global_batch_size") != self.global_batch_size:
            raise ConfigError(
                f"the checkpoint used global_batch_size={state.get('global_batch_size')}, this run "
                f"{self.global_batch_size}: the data order would change; keep the batch size to resume"
            )
        self._start = int(state["samples_consumed"])

    def epochs_for(self, steps: int) -> float:
        """How many passes over the mixture ``steps`` optimizer steps make."""
        return steps * self.global_batch_size / max(1, len(self.prepare().train_index))
