"""``textbooks-data``: run one stage of the data pipeline (a Hydra app).

Stages are modules of ``textbooks.data`` with a ``from_config(cfg) -> Stage`` function that builds the stage
from ``cfg.stage`` (the stage's config group, and ``cfg.llm`` for the LLM stages); the executor of ``cfg.executor``
runs it (``textbooks.data.executor``) and returns its manifest.

Every default is written once, in the dataclasses: each stage's config class, ``ExecutorConfig`` and
``LLMConfig`` are registered in Hydra's ConfigStore as the schema of their group (``stage/<name>_schema``,
``executor/executor_schema``, ``llm/llm_schema``), and the YAML files under ``conf/`` hold only what differs
(paths, interpolations, a preset's settings) and the comments a user reads. ``textbooks-data stage=<name>
--cfg job`` prints every key. In Python (a notebook, a test), ``run(compose([...overrides]))`` runs a stage;
``compose`` registers the schemas (importing this module does not: every task process of the local executor
imports the command's main module, and registering imports every stage).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from textbooks.config import CONF_DIR, hydra_app

log = logging.getLogger(__name__)

# stage name -> (module holding its from_config(cfg), its config class)
STAGES = {
    "ingest": ("textbooks.data.corpus", "IngestConfig"),
    "dedup": ("textbooks.data.dedup", "DedupConfig"),
    "annotate": ("textbooks.data.annotate", "AnnotateConfig"),
    "classify": ("textbooks.data.classify", "ClassifyConfig"),
    "textbooks": ("textbooks.data.synth", "SynthConfig"),
    "exercises": ("textbooks.data.exercises", "ExercisesConfig"),
    "decontaminate": ("textbooks.data.decontam", "DecontamConfig"),
    "pack": ("textbooks.data.pack", "PackConfig"),
    "tokenizer": ("textbooks.data.bpe", "TokenizerConfig"),
}


def register_schemas() -> None:
    """The dataclasses as the schemas of the data app's config groups (idempotent)."""
    from textbooks.data.executor import ExecutorConfig
    from textbooks.data.llm_config import register_schema

    register_schema()
    cs = ConfigStore.instance()
    for stage, (module, cls) in STAGES.items():
        cs.store(group="stage", name=f"{stage}_schema", node=getattr(importlib.import_module(module), cls))
    cs.store(group="executor", name="executor_schema", node=ExecutorConfig)


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The data app's config for ``overrides`` (``["stage=ingest", ...]``), as the command line composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_schemas()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose("data", overrides=list(overrides))


def run(cfg: DictConfig) -> dict:
    name = cfg.stage.name
    if name not in STAGES:
        raise SystemExit(f"textbooks-data: unknown stage {name!r}; stages are {', '.join(STAGES)}")
    from textbooks.data.executor import ExecutorConfig
    from textbooks.data.executor import run as run_on

    stage = importlib.import_module(STAGES[name][0]).from_config(cfg)
    manifest = run_on(
        stage, ExecutorConfig.from_config(cfg.get("executor")), progress=bool(cfg.get("progress", True))
    )
    log.info("stage %s done: %s", name, {k: manifest.get(k) for k in ("documents", "tokens", "seconds")})
    return manifest


@hydra_app("data")
def _app(cfg: DictConfig) -> None:
    run(cfg)


def main() -> None:
    """The command line. The schemas are registered here, not on import: every task process of the local
    executor imports this module (the command's main module), and registering imports every stage."""
    register_schemas()
    _app()


if __name__ == "__main__":
    main()
