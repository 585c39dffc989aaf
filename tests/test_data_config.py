"""Every default of the data app is written once: the dataclasses are the schemas of the config groups, and the
command line composes to exactly their defaults (the YAML files only add paths and interpolations)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from textbooks.config import CONF_DIR
from textbooks.data.app import compose, stage_module, stage_names
from textbooks.data.engine.executor import ExecutorConfig
from textbooks.llm.config import LLMConfig


def defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def interpolated(value: Any) -> bool:
    return "${" in yaml.safe_dump(value)


def check(yaml_file: Path, cls: type, composed: dict[str, Any], allowed: tuple[str, ...] = ()) -> None:
    written = yaml.safe_load(yaml_file.read_text()) or {}
    for key, value in defaults(cls).items():
        if key in written and key not in allowed:
            assert interpolated(written[key]), (
                f"{yaml_file.name}: {key} repeats or changes the default of {cls.__name__}"
            )
        elif key not in written:
            got = composed[key]
            got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
            assert got == (dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value), (
                cls.__name__,
                key,
            )


@pytest.mark.parametrize("stage", stage_names())
def test_stage_defaults_are_the_command_line_defaults(stage: str, tmp_path: Path) -> None:
    cls = stage_module(stage).CONFIG
    extra = ["tokenizer=bpe"] if stage == "tokenizer" else []
    cfg = compose([f"stage={stage}", f"paths.data={tmp_path}", *extra])
    node = OmegaConf.to_container(cfg.stage, resolve=True)
    check(Path(CONF_DIR) / "stage" / f"{stage}.yaml", cls, node)
    assert node["name"] == stage


def test_executor_and_llm_defaults_are_written_once(tmp_path: Path) -> None:
    cfg = compose(["stage=ingest", f"paths.data={tmp_path}"])
    check(Path(CONF_DIR) / "executor" / "local.yaml", ExecutorConfig, OmegaConf.to_container(cfg.executor))
    llm = OmegaConf.to_container(cfg.llm, resolve=True)
    check(Path(CONF_DIR) / "llm" / "openai.yaml", LLMConfig, llm)
    for preset in (
        "vllm",
        "llamacpp",
        "ollama",
        "local",
        "openai",
    ):  # every preset composes to a valid config
        LLMConfig.from_dict(compose(["stage=ingest", f"llm={preset}", f"paths.data={tmp_path}"]).llm)
