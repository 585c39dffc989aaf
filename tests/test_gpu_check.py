"""benchmarks/gpu_check.py: the command lines of its GPU runs are valid configs of the paper's recipes, and
its CPU smoke mode runs end to end (what CI can run of the command meant for a GPU day).

The smoke mode's real subprocess trains the BPE, packs the shards and runs ``textbooks-train`` as on a GPU, with the
CPU's stand-ins for DeepSpeed and FSDP. The deepspeed part's stand-in (``trainer=cpu``) is skipped: it is
the same code path with another trainer config, and each ``textbooks-train`` start costs ~10 s here.
"""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hydra import compose, initialize_config_dir

from textbooks.config import CONF_DIR
from textbooks.train.config import load

ROOT = Path(__file__).resolve().parents[1]


def gpu_check() -> ModuleType:
    """The script as a module (it imports its neighbour ``throughput`` as the script run from benchmarks/)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module("gpu_check")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


@pytest.mark.parametrize("part", ["deepspeed", "fsdp"])
def test_the_gpu_runs_are_50_steps_of_the_recipe_on_the_350m_model(tmp_path, part):
    """What no CPU can run is checked as far as a CPU can: the command line composes, and into what."""
    g = gpu_check()
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = load(compose("train", overrides=g.train_overrides(g.GPU, part, tmp_path, 50)))
    assert cfg.model.name == "phi1_small" and cfg.model.vocab_size == 51200 and cfg.train.seq_len == 2048
    assert cfg.train.total_steps == 50 and cfg.train.accumulation(world_size=1) == 2
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.devices == 1
    assert cfg.trainer.strategy["_target_"] == f"textbooks.train.strategies.{part}"
    if part == "deepspeed":  # the paper's: ZeRO-1, fp16
        assert cfg.trainer.precision == "16-mixed" and cfg.trainer.strategy["stage"] == 1
    else:
        assert cfg.trainer.precision == "bf16-mixed"
    data = tmp_path / "data"  # where build_data writes them
    assert cfg.tokenizer["name"] == str(data / "tokenizer" / "bpe-4096.tiktoken")
    assert [s.path for s in cfg.dataset.sources] == [str(data / "tokens" / "bpe4096" / "stdlib")]
    assert cfg.recipe.checkpoint.keep == "last" and cfg.run_name == f"gpu_check-{part}"


def test_a_failed_part_is_a_row_and_a_run_that_does_not_learn_is_a_problem():
    g = gpu_check()
    ok = {"what": "phi1_small", "steps": 3, "losses": {1: 6.0, 2: 5.5, 3: 5.0}, "tokens_per_sec": 9e4,
          "mfu": 0.5, "peak_mem_gib": 10.0, "peak_rss_gib": 2.0, "wall_s": 12.0}  # fmt: skip
    lines = g.table(
        {"deepspeed": {"error": "RuntimeError: exited with 1\nlog tail", "wall_s": 3.0}, "fsdp": ok}
    )
    rows = lines.splitlines()
    assert rows[1].split()[:4] == ["deepspeed", "FAILED:", "RuntimeError:", "exited"] and "tail" not in lines
    assert rows[2].split()[2:] == ["3", "6.000", "->", "5.000", "90,000", "50.0%", "10.0", "2.0", "12"]
    assert g.check("fsdp", ok, steps=3) is None
    assert "did not decrease" in g.check("fsdp", {**ok, "losses": {1: 5.0, 2: 5.5, 3: 6.0}}, steps=3)
    assert "not finite" in g.check("fsdp", {**ok, "losses": {1: 6.0, 2: math.nan, 3: 5.0}}, steps=3)
    assert "2 of 3 steps" in g.check("fsdp", {**ok, "losses": {1: 6.0, 2: 5.0}}, steps=3)


@pytest.mark.slow
def test_cpu_smoke_mode_prints_the_table_with_losses_that_fall(tmp_path):
    out = tmp_path / "results.json"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_check.py"),
            "--device=cpu",
            "--skip=deepspeed",
            f"--workdir={tmp_path / 'work'}",
            f"--json={out}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    text = r.stdout
    assert text.startswith("device: CPU") and "CPU smoke mode" in text and "total wall time" in text
    table = text[text.index("\npart ") + 1 :].splitlines()
    rows = {line.split()[0]: line for line in table[1:3]}
    assert set(rows) == {"throughput", "fsdp"} and "FSDP2 on gloo" in rows["fsdp"]
    assert "fsdp loss by step: 1: " in text and "PROBLEM" not in text
    res = json.loads(out.read_text())
    assert res["problems"] == [] and set(res["results"]) == {"throughput", "fsdp"}
    bench, run = res["results"]["throughput"], res["results"]["fsdp"]
    assert bench["tokens_per_sec"] > 0 and 0 < bench["mfu"] < 1
    losses = list(run["losses"].values())
    assert len(losses) == run["steps"] == 8 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] and run["tokens_per_sec"] > 0 and 0 < run["peak_rss_gib"] < 64
    assert math.isnan(run["peak_mem_gib"])  # no device memory on a CPU: nothing is made up
    assert not (tmp_path / "work" / "runs" / "gpu_check-fsdp" / "checkpoints").exists()
