"""Every LLM stage against a real model: ``textbooks-data stage=annotate|textbooks|exercises llm=local`` starts
llama.cpp's server with the default local model (Qwen2.5-Coder-0.5B-Instruct) per task, asks a handful of short requests, parses and caches the
answers, and stops the server; the same commands again (a fresh output) ask nothing new."""

from __future__ import annotations

import contextlib
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


def data(root: Path, runs: dict[str, list[str]]) -> dict[str, dict]:
    """The commands at once (each server decodes on one thread, so together they use both cores of a 2-core
    machine instead of one; they share the response cache as a machine's tasks do); each one's manifest.

    One slot per server: a stage's requests share a long prefix (the rubric, the exercise template), which the
    second and third request then take from the slot's prompt cache (two slots each processed it; on one
    thread two slots decode no faster than one)."""
    common = [f"paths.root={root}", f"paths.data={root}/data", f"paths.cache={root}/.cache", "progress=false"]
    env = dict(os.environ, PYTHONPATH=str(SRC))
    manifests = {}
    with contextlib.ExitStack() as files:
        procs = {}
        for name, args in runs.items():
            err = files.enter_context(open(root / f"{name}.stderr", "w+"))
            cmd = [*cli(), *common, "llm=local", "llm.local.parallel=1", "llm.local.ctx_size=2048", *args]
            procs[name] = (subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env), err, args)
            files.callback(procs[name][0].kill)  # none left running when one fails
        for name, (p, err, args) in procs.items():
            p.wait(timeout=600)
            err.seek(0)
            assert p.returncode == 0, (name, err.read()[-3000:])
            out = next(a.split("=", 1)[1] for a in args if a.startswith("stage.out_dir="))
            manifests[name] = json.loads((Path(out) / "manifest.json").read_text())
    return manifests


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
    first = data(tmp_path, {k: [*v, f"stage.out_dir={tmp_path / k}"] for k, v in runs.items()})
    for name, m in first.items():
        llm = m["llm"]
        n = 3 + m.get("counts", {}).get("rederive_requested", 0)  # exercises: those solved again
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
    rerun = data(tmp_path, {k: [*v, f"stage.out_dir={tmp_path / (k + '-again')}"] for k, v in runs.items()})
    for name, again in rerun.items():
        n = 3 + again.get("counts", {}).get("rederive_requested", 0)
        assert again["llm"]["cache_hits"] == n and again["llm"]["http_requests"] == 0, (name, again["llm"])
        assert again["documents"] == first[name]["documents"]
