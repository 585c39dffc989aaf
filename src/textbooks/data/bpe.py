"""Stage ``tokenizer``: train the byte-level BPE of ``conf/tokenizer/bpe.yaml`` on a corpus.

The stage is current only when its manifest matches the config and inputs *and* the tokenizer file is the
one it wrote: the file must match the sha256 in its sidecar and in the manifest. A truncated, replaced or
half-written file (a new file next to an old sidecar) is trained again instead of being reported current.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from textbooks.data.manifest import Stage, read_manifest
from textbooks.data.reader import ReadStats, read_texts
from textbooks.errors import ConfigError
from textbooks.tokenizer import TokenizerError, train_bpe, verify_bpe_file

log = logging.getLogger(__name__)


def _is_built(out: Path, manifest: dict | None) -> bool:
    """The file the stage wrote is there, intact (its sidecar's sha256) and the one the manifest records."""
    if manifest is None or not out.is_file():
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


def run_stage(cfg: DictConfig) -> dict:
    s = OmegaConf.to_container(cfg.stage, resolve=True)
    out = Path(s["out"])
    if out.suffix != ".tiktoken" or s.get("vocab_size") is None:
        raise ConfigError(
            f"stage=tokenizer trains a BPE; choose it with tokenizer=bpe (got {cfg.tokenizer.name!r})"
        )
    stage = Stage("tokenizer", out.parent / f"{out.stem}.stage", s, s["inputs"], s["pattern"])
    if stage.is_current() and _is_built(out, read_manifest(stage.out_dir)):
        return read_manifest(stage.out_dir)  # type: ignore[return-value]
    stage.prepare()
    stats = ReadStats()
    texts = read_texts(
        s["inputs"], pattern=s["pattern"], max_bytes=s["max_file_bytes"], stats=stats, where="tokenizer"
    )
    enc = train_bpe(
        texts,
        int(s["vocab_size"]),
        out,
        min_frequency=int(s["min_frequency"]),
        show_progress=bool(cfg.get("progress", True)),
    )
    return stage.finish(
        [],
        tokenizer=str(out),
        sha256=verify_bpe_file(out),
        n_vocab=enc.n_vocab,
        documents=stats.documents,
        read=stats.to_dict(),
    )
