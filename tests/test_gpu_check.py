"""benchmarks/gpu_check.py's CPU smoke mode, end to end: what CI can run of the command meant for a GPU day.

Its real subprocess trains the BPE, packs the shards and runs ``textbooks-train`` as on a GPU, with the
CPU's stand-ins for DeepSpeed and FSDP. The deepspeed part's stand-in (``trainer=cpu``) is skipped: it is
the same code path with another trainer config, and each ``textbooks-train`` start costs ~10 s here.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
