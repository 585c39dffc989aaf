"""A small stage for the executor tests: each task writes the squares of its shard's numbers, a task of the
rank named in ``fail_rank`` fails while ``fail_file`` exists (a fault the test switches on and off), the first
task each process runs holds ``big_mb`` MB for a moment (to tell its peak memory from the later ones'); each
task takes at least ``seconds``."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textbooks.data.engine.stage import Stage, Step, Task, summed
from textbooks.errors import DataError
from textbooks.io import write_json_atomic


@dataclass
class SquaresConfig:
    out_dir: str
    shards: int = 6
    per_shard: int = 5
    fail_rank: int = -1
    fail_file: str = ""
    big_mb: int = 0
    seconds: float = 0.0


_RAN_A_TASK: set[int] = set()  # the processes that ran a task (by pid: a forked worker starts anew)


class Squares(Stage):
    name = "squares"
    stale = ("part-*.json",)

    def __init__(self, cfg: SquaresConfig) -> None:
        self.config = cfg
        self.inputs: list[Any] = []

    def key_config(self) -> dict[str, Any]:
        return {"shards": self.config.shards, "per_shard": self.config.per_shard}

    def plan(self) -> dict[str, Any]:
        return {"shards": self.config.shards}

    def steps(self) -> list[Step]:
        return [Step("square", "square"), Step("total", "total", sharded=False)]

    def square(self, task: Task) -> dict[str, Any]:
        c = self.config
        if task.rank == c.fail_rank and c.fail_file and Path(c.fail_file).exists():
            raise DataError(f"task {task.rank} was told to fail ({c.fail_file} exists)")
        if c.big_mb and os.getpid() not in _RAN_A_TASK:
            block = bytearray(c.big_mb << 20)
            block[:: 1 << 12] = b"x" * len(range(0, len(block), 1 << 12))  # every page resident
            del block
        _RAN_A_TASK.add(os.getpid())
        time.sleep(c.seconds)
        bar = task.bar("squares", "number", total=0)
        shards = []  # this task's running count, shown beside the bar (the step's bar sums the tasks')

        def one(i: int) -> dict[str, Any]:
            numbers = range(i * c.per_shard, (i + 1) * c.per_shard)
            bar.extend(len(numbers))  # work found on the way: the bar's total grows
            write_json_atomic(task.publish_path(f"part-{i:05d}.json"), [n * n for n in numbers])
            shards.append(i)
            bar.set_postfix(shards=len(shards), refresh=False)
            bar.update(len(numbers))
            return {"sum": sum(n * n for n in numbers)}

        with bar:
            return task.each_shard(task.plan["shards"], one)

    def total(self, task: Task) -> dict[str, Any]:
        return {"sum": summed(task.shard_stats("square"))["sum"]}

    def summarize(self, task: Task) -> dict[str, Any]:
        parts = [f"part-{i:05d}.json" for i in range(task.plan["shards"])]
        values = [v for p in parts for v in json.loads(task.publish_path(p).read_text())]
        return {"documents": len(values), "sum": task.stats_of("total")[0]["sum"], "values": values}
