"""The README's "Adding a stage" example, complete: keep the documents of at most ``max_lines`` lines.

As ``src/textbooks/data/stages/short.py`` with a ``conf/stage/short.yaml`` (``defaults: [short_schema,
_self_]`` and its ``out_dir``) it would be ``textbooks-data stage=short``; tests/test_example_stage.py runs it
through the executors as it is."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from textbooks.config import dataclass_from
from textbooks.data.engine.inputs import Shard, plan_shards, resolve
from textbooks.data.engine.parquet import PartWriter
from textbooks.data.engine.reader import ReadStats, read_shard
from textbooks.data.engine.stage import Stage, Step, Task, summed

SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string())])


@dataclass
class ShortConfig:
    out_dir: str
    inputs: list[str] = field(default_factory=list)  # files, directories or earlier stages' outputs
    max_lines: int = 50  # longer documents are dropped
    max_bad_fraction: float = 0.01  # malformed records (counted, named) above this fraction fail the stage
    name: str = "short"  # the stage (conf/stage/short.yaml)


class Short(Stage):
    """Each input shard filtered into ``part-<shard>.parquet`` (parts aligned with shards, so the output is
    the same for any number of tasks)."""

    name = "short"

    def __init__(self, cfg: ShortConfig) -> None:
        self.config = cfg
        self.sources = [resolve(s, where="short") for s in cfg.inputs]
        self.inputs = [s.path for s in self.sources]

    def plan(self) -> dict[str, Any]:
        return {"shards": [s.to_dict() for s in plan_shards(self.sources, pattern=self.pattern)]}

    def steps(self) -> list[Step]:
        return [Step("keep", "keep")]

    def keep(self, task: Task) -> dict[str, Any]:
        shards = [Shard.from_dict(d) for d in task.plan["shards"]]
        bar = task.bar("short")  # the step's one progress bar, that every task counts its documents in

        def one(i: int) -> dict[str, Any]:
            stats, kept = ReadStats(), 0
            with PartWriter(task.publish_path(f"part-{i:05d}.parquet"), SCHEMA) as part:
                for doc in read_shard(shards[i], stats):
                    bar.update()
                    if doc["text"].count("\n") < self.config.max_lines:
                        part.add({"id": doc["id"], "text": doc["text"], "source": doc["source"]})
                        kept += 1
            return {"kept": kept, "read": stats.to_dict()}

        with bar:
            return task.each_shard(len(shards), one)

    def summarize(self, task: Task) -> dict[str, Any]:
        read = task.reads("keep", self.config.max_bad_fraction, f"short {self.config.inputs}")
        kept = summed(task.shard_stats("keep"), ("kept",)).get("kept", 0)
        parts = [f"part-{i:05d}.parquet" for i in range(len(task.plan["shards"]))]
        return {"documents": kept, "parts": parts, "malformed": read.bad, "read": read.to_dict()}


CONFIG = ShortConfig  # the schema of conf/stage/short.yaml (registered as stage/short_schema)


def from_config(cfg: Any) -> Short:
    return Short(dataclass_from(ShortConfig, cfg.stage, "stage"))
