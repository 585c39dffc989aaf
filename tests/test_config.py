"""Config values of the wrong type: one line naming the key, the value and the expected type, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from textbooks.config import Count, coerce, dataclass_from, describe, parse_count
from textbooks.errors import ConfigError, ConfigValueError

BIN = Path(sys.executable).parent


@dataclass
class Settings:
    inputs: list[str]
    rate: float = 0.5
    steps: int = 10
    enabled: bool = True
    name: str = "x"
    limit: int | None = None
    every: int | str = "50M"
    pair: tuple[int, ...] = (1, 2)
    weights: dict[str, float] = field(default_factory=dict)


def test_dataclass_from_checks_field_types_and_names_the_key() -> None:
    cfg = OmegaConf.create({"stage": {"name": "s", "inputs": ["a"], "rate": "high"}})
    with pytest.raises(ConfigValueError) as e:
        dataclass_from(Settings, cfg.stage, "stage s")
    assert str(e.value) == "stage.rate=high: expected a number (stage s)"
    bad = {
        "steps": ("ten", "an integer"),
        "steps ": (2.5, "an integer"),
        "enabled": ("maybe", "true or false"),
        "limit": ("all", "an integer or null"),
        "inputs": ({"a": 1}, "a list of strings"),
        "pair": (["x"], "an integer"),
        "weights": ({"a": "heavy"}, "a number"),
        "name": (True, "a string"),
    }
    for key, (value, expected) in bad.items():
        with pytest.raises(ConfigValueError, match=f": expected {expected} \\(settings\\)$"):
            dataclass_from(Settings, {"inputs": ["a"], key.strip(): value}, "settings")
    s = dataclass_from(
        Settings,
        {"inputs": "one", "rate": 1, "steps": 1e6, "name": 2024, "limit": None, "every": 7, "pair": [3, 4]},
        "settings",
    )
    assert (s.inputs, s.rate, s.steps, s.name, s.limit, s.every, s.pair) == (
        "one",
        1.0,
        1_000_000,
        "2024",
        None,
        7,
        (3, 4),
    )
    assert isinstance(s.rate, float) and isinstance(s.steps, int)
    with pytest.raises(ConfigError, match=r"unknown keys \['rte'\]"):
        dataclass_from(Settings, {"inputs": [], "rte": 1}, "settings")


def test_counts_and_descriptions() -> None:
    assert parse_count("1.5M") == 1_500_000 and coerce("26B", Count, "k") == "26B"
    with pytest.raises(ValueError, match="expected a count such as 4096, 2e6, 500M or 26B"):
        parse_count("lots")
    with pytest.raises(ConfigValueError, match=r"^k=lots: expected a count"):
        coerce("lots", Count | None, "k")
    assert describe(list[int] | None) == "a list of integers or null"


def _run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "TEXTBOOKS_TRACEBACK")}
    cmd = [str(BIN / script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


# (console script, arguments, the key=value the line must name, what it expects)
BAD = [
    ("textbooks-train", ["train.tokens=lots"], "train.tokens=lots", "a count such as 4096"),
    ("textbooks-train", ["train.seq_len=abc"], "train.seq_len=abc", "an integer"),
    ("textbooks-train", ["recipe.optimizer.lr=fast"], "recipe.optimizer.lr=fast", "a number"),
    ("textbooks-eval", ["limit=abc"], "limit=abc", "an integer or null"),
    ("textbooks-eval", ["force=maybe"], "force=maybe", "true or false"),
    ("textbooks-eval", ["ks=[1,x]"], "ks[1]=x", "an integer"),
    ("textbooks-data", ["stage=dedup", "stage.threshold=high"], "stage.threshold=high", "a number"),
    (
        "textbooks-data",
        ["stage=decontaminate", "stage.max_embed_distance=far"],
        "stage.max_embed_distance=far",
        "a number or null",
    ),
    (
        "textbooks-data",
        ["stage=pack", "stage.shard_bytes=many"],
        "stage.shard_bytes=many",
        "an integer",
    ),
    ("textbooks-collect", ["out=[a,b]"], "out=[a,b]", "a string or null"),
    ("textbooks-demo", ["vocab_size=big"], "vocab_size=big", "an integer"),
    ("textbooks-demo", ["train.finetune_tokens=lots"], "train.finetune_tokens=lots", "a count such as 4096"),
]


FAST = "stage.threshold=high"  # each line starts an app (~2 s): one of them stays in the fast tier


@pytest.mark.parametrize(
    ("script", "args", "named", "expected"),
    [pytest.param(*b, id=" ".join(b[1]), marks=() if b[2] == FAST else pytest.mark.slow) for b in BAD],
)
def test_a_wrong_typed_value_is_one_line(tmp_path: Path, script, args, named, expected) -> None:
    r = _run(script, f"paths.root={tmp_path}", *args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr[-3000:]
    assert f"{named}: expected {expected}" in r.stderr


@pytest.mark.slow
def test_interpolation_and_unknown_key_errors_are_one_line_naming_the_key(tmp_path: Path) -> None:
    r = _run(
        "textbooks-data", f"paths.root={tmp_path}", "stage=dedup", "stage.threshold=${oops}", cwd=tmp_path
    )
    assert r.returncode == 2 and r.stderr == "error: stage.threshold: Interpolation key 'oops' not found\n"
    r = _run("textbooks-eval", f"paths.root={tmp_path}", "sandbox.tets_cpu_s=5", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "sandbox.tets_cpu_s" in r.stderr, r.stderr
