"""``textbooks-data``: run one stage of the data pipeline (a Hydra app).

A stage is found by its name: ``stage=<name>`` runs the module ``textbooks.data.stages.<name>``, which holds
``CONFIG`` (its config dataclass) and ``from_config(cfg) -> Stage``, building the stage from ``cfg.stage`` (the
stage's config group, and ``cfg.llm`` for the LLM stages); the executor of ``cfg.executor`` runs it
(``textbooks.data.engine.executor``) and returns its manifest.

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
import pkgutil
from collections.abc import Sequence
from types import ModuleType

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from textbooks.cli import hydra_app
from textbooks.config import CONF_DIR

log = logging.getLogger(__name__)

STAGES_PACKAGE = "textbooks.data.stages"


def stage_module(name: str) -> ModuleType | None:
    """The module of stage ``name``, or None when no module of ``textbooks.data.stages`` is that stage."""
    if not name.isidentifier():
        return None
    try:
        module = importlib.import_module(f"{STAGES_PACKAGE}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{STAGES_PACKAGE}.{name}":
            raise
        return None
    return module if hasattr(module, "from_config") and hasattr(module, "CONFIG") else None


def stage_names() -> list[str]:
    """Every stage: the modules of ``textbooks.data.stages`` that define ``CONFIG`` and ``from_config``
    (the others are helpers of a stage)."""
    package = importlib.import_module(STAGES_PACKAGE)
    return [m.name for m in pkgutil.iter_modules(package.__path__) if stage_module(m.name) is not None]


def register_schemas() -> None:
    """The dataclasses as the schemas of the data app's config groups (idempotent)."""
    from textbooks.data.engine.executor import ExecutorConfig
    from textbooks.llm.config import register_schema

    register_schema()
    cs = ConfigStore.instance()
    for stage in stage_names():
        cs.store(group="stage", name=f"{stage}_schema", node=stage_module(stage).CONFIG)
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
    module = stage_module(name)
    if module is None:
        raise SystemExit(f"textbooks-data: unknown stage {name!r}; stages are {', '.join(stage_names())}")
    from textbooks.data.engine.executor import ExecutorConfig
    from textbooks.data.engine.executor import run as run_on

    stage = module.from_config(cfg)
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
