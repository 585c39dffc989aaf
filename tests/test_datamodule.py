"""The data order: epochs, mixture weights, world-size and worker independence, exact resume."""

from __future__ import annotations

import re
from collections import Counter
from itertools import chain

import numpy as np
import pytest
import torch

from textbooks.errors import ConfigError, DataError
from textbooks.train.config import TrainConfig
from textbooks.train.datamodule import (
    Mixture,
    Source,
    StridedBatchSampler,
    TokenDataModule,
    WindowDataset,
)


def take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_each_epoch_is_a_permutation_of_all_windows():
    s = StridedBatchSampler(50, global_batch=10, micro_batch=5, rank=0, world=1, seed=3)
    flat = [i for b in take(s, 20) for i in b]  # 2 epochs
    assert sorted(flat[:50]) == list(range(50)) and sorted(flat[50:]) == list(range(50))
    assert flat[:50] != flat[50:]
    again = StridedBatchSampler(50, global_batch=10, micro_batch=5, rank=0, world=1, seed=3)
    assert [i for b in take(again, 20) for i in b] == flat
    other = StridedBatchSampler(50, global_batch=10, micro_batch=5, rank=0, world=1, seed=4)
    assert [i for b in take(other, 20) for i in b] != flat


@pytest.mark.parametrize(("world", "micro"), [(2, 4), (4, 2), (8, 1)])
def test_step_samples_do_not_depend_on_world_size(world, micro):
    G, steps = 8, 12
    single = StridedBatchSampler(37, global_batch=G, micro_batch=8, rank=0, world=1, seed=0)
    ref = [sorted(b) for b in take(single, steps)]
    per_rank = []
    for r in range(world):
        s = StridedBatchSampler(37, global_batch=G, micro_batch=micro, rank=r, world=world, seed=0)
        batches = take(s, steps * G // (micro * world))
        per_rank.append(
            [
                list(chain.from_iterable(batches[k * G // (micro * world) : (k + 1) * G // (micro * world)]))
                for k in range(steps)
            ]
        )
    for k in range(steps):
        assert sorted(chain.from_iterable(per_rank[r][k] for r in range(world))) == ref[k]


def test_resuming_at_a_step_continues_the_same_stream():
    full = take(StridedBatchSampler(29, global_batch=6, micro_batch=3, rank=0, world=1, seed=1), 30)
    resumed = take(
        StridedBatchSampler(29, global_batch=6, micro_batch=3, rank=0, world=1, seed=1, start=5 * 6), 20
    )
    assert resumed == full[10:]


def test_batch_arithmetic_is_checked():
    with pytest.raises(ConfigError, match="multiple"):
        StridedBatchSampler(10, global_batch=10, micro_batch=4, rank=0, world=1, seed=0)

    def steps(tokens: int, global_batch: int, seq_len: int) -> int:
        return TrainConfig(str(tokens), seq_len, global_batch, micro_batch_size=global_batch).total_steps

    with pytest.raises(ConfigError, match="below one global batch"):
        steps(1000, 8, 256)
    assert steps(26_000_000_000, 1024, 2048) == 12397
    assert TrainConfig("26B", 2048, 1024, 4).accumulation(world_size=8) == 32
    with pytest.raises(ConfigError, match="not a multiple of micro_batch_size=3 x 2 devices"):
        TrainConfig("2M", 256, 16, 3).accumulation(world_size=2)


def test_mixture_windows_weights_and_validation(tiny_data):
    seq = 64
    one = Mixture([Source(str(tiny_data["shards"]))], seq, val_windows=8)
    n_train = len(one.train_index)
    assert len(one.val_index) == 8
    assert n_train + 8 == (one.shards[0].n_tokens - 1) // seq
    tokens = one.shards[0].read(0, one.shards[0].n_tokens)
    w = one.window(int(one.train_index[3]))
    assert len(w) == seq + 1 and np.array_equal(w, tokens[3 * seq : 4 * seq + 1])
    assert set(one.train_index).isdisjoint(one.val_index)
    mix = Mixture(
        [Source(str(tiny_data["shards"]), 2.5), Source(str(tiny_data["shards"]), 0.5)], seq, val_windows=8
    )
    counts = Counter((mix.train_index >> 40).tolist())
    assert counts[0] == 2 * n_train + round(0.5 * n_train) and counts[1] == round(0.5 * n_train)
    assert len(set(mix.train_index[mix.train_index >> 40 == 1].tolist())) == round(0.5 * n_train)
    assert mix.fingerprint() != one.fingerprint()


def test_missing_shards_name_the_build_command(tmp_path):
    with pytest.raises(DataError, match=re.escape("textbooks-data stage=pack stage.component=filtered")):
        Mixture([Source(str(tmp_path / "x"), build="textbooks-data stage=pack stage.component=filtered")], 64)


def test_worker_count_does_not_change_batches(tiny_data):
    dm0 = TokenDataModule(
        [Source(str(tiny_data["shards"]))], seq_len=32, global_batch_size=4, micro_batch_size=2
    )
    dm2 = TokenDataModule(
        [Source(str(tiny_data["shards"]))], seq_len=32, global_batch_size=4, micro_batch_size=2, num_workers=2
    )
    a = take(dm0.train_dataloader(), 12)
    b = take(dm2.train_dataloader(), 12)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert a[0].dtype == torch.int64 and a[0].shape == (2, 33)


def test_datamodule_state_restores_position_and_refuses_other_data(tiny_data):
    dm = TokenDataModule(
        [Source(str(tiny_data["shards"]))], seq_len=32, global_batch_size=4, micro_batch_size=2
    )
    ref = take(dm.train_dataloader(), 10)
    state = dm.state_dict() | {"samples_consumed": 3 * 4}
    dm2 = TokenDataModule(
        [Source(str(tiny_data["shards"]))], seq_len=32, global_batch_size=4, micro_batch_size=2
    )
    dm2.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(take(dm2.train_dataloader(), 4), ref[6:]))
    dm3 = TokenDataModule(
        [Source(str(tiny_data["shards"]), 2.0)], seq_len=32, global_batch_size=4, micro_batch_size=2
    )
    with pytest.raises(ConfigError, match="different data mixture"):
        dm3.load_state_dict(state)
    dm4 = TokenDataModule(
        [Source(str(tiny_data["shards"]))], seq_len=32, global_batch_size=8, micro_batch_size=2
    )
    with pytest.raises(ConfigError, match="global_batch_size"):
        dm4.load_state_dict(state)


def test_window_dataset_items(tiny_data):
    mix = Mixture([Source(str(tiny_data["shards"]))], 16)
    ds = WindowDataset(mix, mix.train_index)
    assert len(ds) == len(mix.train_index) and ds[0].shape == (17,)
