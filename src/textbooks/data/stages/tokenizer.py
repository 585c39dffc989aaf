"""Stage ``tokenizer``: train the byte-level BPE of ``conf/tokenizer/bpe.yaml`` on a corpus.

One step, one task (training a BPE needs every text). The tokenizer file is written where the tokenizer config
names it (``stage.out``, with its JSON sidecar); the stage's own directory (``<out stem>.stage``) holds its
manifest. The stage is current only when its manifest matches the config and inputs *and* the tokenizer file is
the one it wrote: the file must match the sha256 in its sidecar and in the manifest. A truncated, replaced or
half-written file (a new file next to an old sidecar) is trained again instead of being reported current.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textbooks.config import dataclass_from
from textbooks.data.engine.inputs import resolve
from textbooks.data.engine.reader import ReadStats, read_texts
from textbooks.data.engine.stage import Stage, Step, Task, execution_only
from textbooks.errors import ConfigError
from textbooks.tokenizer import TokenizerError, train_bpe, verify_bpe_file

log = logging.getLogger(__name__)


@dataclass
class TokenizerConfig:
    """``conf/stage/tokenizer.yaml``."""

    inputs: list[str]
    out: str  # the .tiktoken file (its sidecar goes beside it)
    vocab_size: int
    pattern: str = "**/*.py"
    min_frequency: int = 2
    max_file_bytes: int | None = 1_000_000
    progress: bool = execution_only(True)
    name: str = "tokenizer"  # the stage (conf/stage/tokenizer.yaml)

    @property
    def out_dir(self) -> str:
        out = Path(self.out)
        return str(out.parent / f"{out.stem}.stage")


class TrainTokenizer(Stage):
    name = "tokenizer"
    stale = ()

    def __init__(self, cfg: TokenizerConfig) -> None:
        if Path(cfg.out).suffix != ".tiktoken":
            raise ConfigError(
                f"stage=tokenizer writes a .tiktoken file; stage.out={cfg.out} (choose tokenizer=bpe)"
            )
        self.config = cfg
        self.inputs = [resolve(i, where="tokenizer").path for i in cfg.inputs]
        self.pattern = cfg.pattern

    def key_config(self) -> dict[str, Any]:
        return super().key_config() | {"out": self.config.out}

    def is_built(self, manifest: dict[str, Any]) -> bool:
        """The file the stage wrote is there, intact (its sidecar's sha256) and the one the manifest records."""
        out = Path(self.config.out)
        if not out.is_file():
            return False
        try:
            sha = verify_bpe_file(out)
        except TokenizerError as e:
            log.warning("stage tokenizer: %s; training it again", e)
            return False
        if sha != manifest.get("sha256"):
            log.warning("stage tokenizer: %s is not the file this stage wrote; training it again", out)
            return False
        return True

    def steps(self) -> list[Step]:
        return [Step("train", "train", sharded=False)]

    def train(self, task: Task) -> dict[str, Any]:
        c = self.config
        stats = ReadStats()
        texts = read_texts(
            c.inputs, pattern=c.pattern, max_bytes=c.max_file_bytes, stats=stats, where="tokenizer"
        )
        with task.bar("tokenizer: read") as bar:

            def counted() -> Iterator[str]:
                for text in texts:
                    bar.update()
                    yield text

            # the stage's one bar counts the documents read; the tokenizers library's own bars (one per
            # phase) are off: outside a terminal they print only empty lines
            enc = train_bpe(
                counted(), int(c.vocab_size), c.out, min_frequency=int(c.min_frequency), show_progress=False
            )
        return {"n_vocab": enc.n_vocab, "sha256": verify_bpe_file(c.out), "read": stats.to_dict()}

    def summarize(self, task: Task) -> dict[str, Any]:
        t = task.stats_of("train")[0]
        return {
            "tokenizer": self.config.out,
            "sha256": t["sha256"],
            "n_vocab": t["n_vocab"],
            "documents": t["read"]["documents"],
            "read": t["read"],
        }


CONFIG = TokenizerConfig  # the schema of conf/stage/tokenizer.yaml (registered as stage/tokenizer_schema)


def from_config(cfg: Any) -> TrainTokenizer:
    """The stage ``textbooks-data stage=tokenizer tokenizer=bpe`` runs: train the BPE the tokenizer config names."""
    if cfg.stage.get("vocab_size") is None or not str(cfg.stage.out).endswith(".tiktoken"):
        raise ConfigError(
            f"stage=tokenizer trains a BPE; choose it with tokenizer=bpe (got {cfg.tokenizer.name!r})"
        )
    c = dataclass_from(TokenizerConfig, cfg.stage, "stage tokenizer")
    c.progress = bool(cfg.get("progress", True))
    return TrainTokenizer(c)
