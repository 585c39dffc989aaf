"""Stage ``tokenizer``: train the byte-level BPE of ``conf/tokenizer/bpe.yaml`` on a corpus."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from textbooks.data.manifest import Stage, read_manifest
from textbooks.data.reader import ReadStats, read_texts
from textbooks.errors import ConfigError
from textbooks.tokenizer import train_bpe


def run_stage(cfg: DictConfig) -> dict:
    s = OmegaConf.to_container(cfg.stage, resolve=True)
    out = Path(s["out"])
    if out.suffix != ".tiktoken" or s.get("vocab_size") is None:
        raise ConfigError(
            f"stage=tokenizer trains a BPE; choose it with tokenizer=bpe (got {cfg.tokenizer.name!r})"
        )
    stage = Stage("tokenizer", out.parent / f"{out.stem}.stage", s, s["inputs"], s["pattern"])
    if stage.is_current() and out.is_file():
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
        [], tokenizer=str(out), n_vocab=enc.n_vocab, documents=stats.documents, read=stats.to_dict()
    )
