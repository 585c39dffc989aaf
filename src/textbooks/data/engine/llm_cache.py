"""The LLM stages' side of the response cache: which cache file a task writes, by engine.

On the local engine every task writes the one cache file (SQLite's locking serialises them); on a cluster engine
each task writes a shard of its own (``textbooks.llm.cache``), and the stage folds the shards into the cache
once it is published, so the next stage or rerun reads every answer from one file.
"""

from __future__ import annotations

import logging
from typing import Any

from textbooks.llm.cache import merge_shards

log = logging.getLogger(__name__)


class SharedCache:
    """Mixed into a ``Stage`` that asks an LLM (``self.llm``): shards on cluster engines, folded at publish."""

    llm: Any

    def on_executor(self, engine: str) -> None:
        if self.llm is not None:
            self.llm.cache_shards = engine != "local"

    def published(self) -> None:
        if self.llm is not None and self.llm.cache_shards:
            added = merge_shards(self.llm.cache)
            log.info("LLM cache: %d answers of this stage's tasks folded into %s", added, self.llm.cache)
