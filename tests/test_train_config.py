"""The training app's config: every default written once (the schema in textbooks.train.config), the
YAML files holding only what differs, every preset composing into the schema."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import MISSING, OmegaConf

from textbooks.config import CONF_DIR
from textbooks.errors import ConfigError
from textbooks.eval.callback import EvalCallback, InTrainingEvalConfig
from textbooks.model import ModelConfig
from textbooks.train.config import (
    CSVLoggerConfig,
    DatasetConfig,
    LoggerConfig,
    RecipeConfig,
    ScaleConfig,
    TrainAppConfig,
    TrainConfig,
    TrainerConfig,
    TrainEvalConfig,
    WandbConfig,
    load,
)
from textbooks.train.datamodule import Source

CONF = Path(CONF_DIR)
# config group -> the schema of its files; scale and experiment files are @package _global_: they set
# keys of any part (TrainAppConfig), overriding what the other groups chose
SCHEMAS: dict[str, Any] = {
    "model": ModelConfig,
    "recipe": RecipeConfig,
    "trainer": TrainerConfig,
    "logger": LoggerConfig,
    "dataset": DatasetConfig,
}
GROUPS = [*SCHEMAS, "scale", "experiment"]


def composed(*overrides: str) -> TrainAppConfig:
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return load(compose("train", overrides=["paths.root=/r", *overrides]))


def test_python_defaults_are_the_cli_defaults():
    """``textbooks-train`` with no arguments (and the model preset that is the schema's) composes to the
    dataclasses' own defaults, links resolved: nothing is written in YAML that the schema does not say."""
    cli = composed("model=phi1")
    recipe, trainer, model = RecipeConfig(), TrainerConfig(), ModelConfig()
    assert cli.recipe == recipe and cli.trainer == trainer
    d = recipe.dropout
    assert cli.model == dataclasses.replace(
        model, attn_dropout=d.attn, resid_dropout=d.resid, embd_dropout=d.embd
    )
    assert cli.train == TrainConfig(
        seq_len=model.max_seq_len,
        global_batch_size=recipe.global_batch_size,
        micro_batch_size=trainer.micro_batch_size,
    )
    assert cli.logger == LoggerConfig(
        csv=CSVLoggerConfig(), wandb=WandbConfig(group="stdlib-phi1", job_type="pretrain")
    )
    assert cli.eval == TrainEvalConfig(benchmarks_dir=None)  # paths.benchmarks: null unless set
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(TrainAppConfig)
        if f.default not in (dataclasses.MISSING, MISSING)
    }
    assert {k: getattr(cli, k) for k in defaults} == defaults
    assert cli.stage == recipe.name and cli.run_name == "pretrain-stdlib-phi1-2M-s0"
    # the in-training evaluation's defaults from Python (EvalCallback without a config) are the CLI's
    evaluation = {k: v for k, v in dataclasses.asdict(cli.eval).items() if k != "enabled"}
    assert evaluation == dataclasses.asdict(InTrainingEvalConfig())
    assert EvalCallback.__init__.__defaults__ == (None,)  # cfg=None: InTrainingEvalConfig()


def _same_as_default(node: Any, schema: Any, where: str = "") -> list[str]:
    """Keys of a YAML ``node`` whose value is the ``schema``'s default (interpolations are links, not
    values; the items of a list of sources are compared with ``Source``'s defaults)."""
    found = []
    defaults = OmegaConf.structured(schema)
    hints = {f.name: f.type for f in dataclasses.fields(schema)}
    for key in node:
        if key not in defaults or OmegaConf.is_interpolation(node, key):  # defaults lists, hydra; links
            continue
        value, inner = node[key], OmegaConf.get_type(defaults, key)
        if OmegaConf.is_dict(value) and dataclasses.is_dataclass(inner):
            found += _same_as_default(value, inner, f"{where}{key}.")
        elif OmegaConf.is_list(value) and "list[Source]" in str(hints[key]):
            for i, item in enumerate(value):
                found += _same_as_default(item, Source, f"{where}{key}[{i}].")
        else:
            default = defaults._get_node(key)
            if not default._is_missing() and value == default._value():
                found.append(f"{where}{key}")
    return found


@pytest.mark.parametrize("group", sorted(SCHEMAS))
def test_yaml_files_hold_only_what_differs_from_the_schema(group):
    files = sorted((CONF / group).glob("*.yaml"))
    assert files
    repeated = {}
    for f in files:
        node = OmegaConf.load(f) or OmegaConf.create({})
        same = _same_as_default(node, SCHEMAS[group], "")
        if same:
            repeated[f.name] = same
    assert not repeated, f"{group}: keys repeating the schema's default: {repeated}"


@pytest.mark.parametrize("group", GROUPS)
def test_every_preset_composes_into_the_schema(group):
    for f in sorted((CONF / group).glob("*.yaml")):
        choice = f"[{f.stem}]" if group == "logger" else f.stem
        cfg = composed(f"{group}={choice}")
        node = cfg if group == "experiment" else getattr(cfg, group)
        assert dataclasses.is_dataclass(node), (group, f.stem)
        if group == "scale":
            assert isinstance(node, ScaleConfig) and node.name == f.stem


def test_derived_quantities_and_refusals():
    cfg = composed("experiment=demo")
    assert cfg.train.tokens_per_step == 16 * 256 and cfg.train.total_steps == 750_000 // (16 * 256)
    assert cfg.train.accumulation(world_size=1) == 1 and cfg.recipe.checkpoint.interval(366) == 37
    assert cfg.model.attn_dropout == 0.0 and cfg.recipe.optimizer.lr == 2e-3  # the scale's rate
    with pytest.raises(ConfigError, match=r"exceeds model\.max_seq_len"):
        composed("train.seq_len=4096")
    with pytest.raises(ConfigError, match="keep='some'"):
        composed("recipe.checkpoint.keep=some")
    with pytest.raises(Exception, match="n_layers"):
        composed("model.n_layers=3")
