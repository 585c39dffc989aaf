"""Every LLM stage against a real model: ``textbooks-data stage=annotate|textbooks|exercises llm=local`` starts
llama.cpp's server with the default local model (Qwen2.5-Coder-0.5B-Instruct) per task, asks a handful of short requests, parses and caches the
answers, and stops the server; the same commands again (a fresh output) ask nothing new."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SRC = Path(__file__).resolve().parents[1] / "src"


def cli() -> list[str]:
    script = Path(sys.executable).with_name("textbooks-data")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "textbooks.data.app"]


def data(root: Path, *args: str) -> dict:
    common = [f"paths.root={root}", f"paths.data={root}/data", f"paths.cache={root}/.cache", "progress=false"]
    env = dict(os.environ, PYTHONPATH=str(SRC))
    r = subprocess.run([*cli(), *common, "llm=local", "llm.local.parallel=2", "llm.local.ctx_size=2048", *args],
                       capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    out = next(a.split("=", 1)[1] for a in args if a.startswith("stage.out_dir="))
    return json.loads((Path(out) / "manifest.json").read_text())


def test_llm_stages_run_against_a_real_model_and_rerun_from_the_cache(
    tmp_path: Path, stdlib_dir: Path
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("bisect.py", "colorsys.py", "fnmatch.py", "glob.py"):
        (corpus / name).write_text((stdlib_dir / name).read_text())
    runs = {
        "annotate": ["stage=annotate", f"stage.input={corpus}", "stage.sample_size=3", "stage.max_chars=600",
                     "stage.max_failed_fraction=1.0", "stage.sampling.max_tokens=48"],
        "textbooks": ["stage=textbooks", "stage.n=3", "stage.min_chars=20", "stage.sampling.max_tokens=48"],
        "exercises": ["stage=exercises", "stage.n=3", "stage.max_failed_fraction=1.0", "stage.sampling.max_tokens=96"],
    }  # fmt: skip
    first = {k: data(tmp_path, *v, f"stage.out_dir={tmp_path / k}") for k, v in runs.items()}
    for name, m in first.items():
        llm = m["llm"]
        n = 3 + m.get("counts", {}).get("rederive_requested", 0)  # exercises: values asked for again
        assert llm["requests"] == n and llm["succeeded"] + llm["failed"] == n and llm["succeeded"] >= 2, (
            name,
            llm,
        )
        assert llm["cache_hits"] == 0 and llm["completion_tokens"] > 0, (name, llm)
    # what the model's answers became: scores parsed (or counted unparseable), sections kept, exercises checked
    a = first["annotate"]
    assert a["documents"] + a["failed"] == 3 and a["sampled"] == 3
    t = first["textbooks"]
    assert (
        t["requested"] == 3
        and sum(
            t[k]
            for k in ("documents", "short", "no_code", "syntax", "fails", "exact_dups", "near_dups", "failed")
        )
        == 3
        and t["documents"] == t["ran"] + t["unrun"]
    )
    assert t["diversity"]["all"]["count"] == t["answered"]
    e = first["exercises"]
    assert sum(e["counts"].get(k, 0) for k in ("requested",)) == 3 and e["source"] == "synthetic"
    # a fresh output of the same commands: every answer from the cache, no request reaches a server
    for name, args in runs.items():
        again = data(tmp_path, *args, f"stage.out_dir={tmp_path / (name + '-again')}")
        n = 3 + again.get("counts", {}).get("rederive_requested", 0)
        assert again["llm"]["cache_hits"] == n and again["llm"]["http_requests"] == 0, (name, again["llm"])
        assert again["documents"] == first[name]["documents"]
