"""``textbooks-data``: run one stage of the data pipeline (a Hydra app).

Stages are modules of ``textbooks.data`` with a ``run_stage(cfg) -> dict`` function that reads
``cfg.stage`` (the stage's config group) and ``cfg.paths``, writes its outputs with a manifest and returns
the manifest.
"""

from __future__ import annotations

import importlib
import logging

from omegaconf import DictConfig

from textbooks.config import hydra_app

log = logging.getLogger(__name__)

# stage name -> module holding its run_stage(cfg)
STAGES = {
    "ingest": "textbooks.data.corpus",
    "dedup": "textbooks.data.dedup",
    "annotate": "textbooks.data.annotate",
    "classify": "textbooks.data.classify",
    "textbooks": "textbooks.data.synth",
    "exercises": "textbooks.data.exercises",
    "decontaminate": "textbooks.data.decontam",
    "pack": "textbooks.data.pack",
    "tokenizer": "textbooks.data.bpe",
}


def run(cfg: DictConfig) -> dict:
    name = cfg.stage.name
    if name not in STAGES:
        raise SystemExit(f"textbooks-data: unknown stage {name!r}; stages are {', '.join(STAGES)}")
    module = importlib.import_module(STAGES[name])
    manifest = module.run_stage(cfg)
    log.info("stage %s done: %s", name, {k: manifest.get(k) for k in ("documents", "tokens", "seconds")})
    return manifest


@hydra_app("data")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
