"""textbooks-eval end to end: the canonical self-check, generation + scoring + bpb from a checkpoint into
its run directory, skip and refuse on rerun, a killed generation resuming to the same samples, scoring a
samples file, and one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from models import memorized_humaneval_model, tiny_model

from textbooks.benchmarks import load_humaneval, load_mbpp, shipped_file
from textbooks.checkpoint import save_pretrained
from textbooks.config import CONF_DIR
from textbooks.errors import ConfigError
from textbooks.eval.app import EvalError, run

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: no OpenMP hand-offs

BIN = Path(sys.executable).parent


def cli(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [str(BIN / "textbooks-eval"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        **kw,
    )


def config(*overrides: str):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("eval", overrides=["progress=false", "sandbox.workers=2", *overrides])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def memorized_run(tiny_data, tmp_path_factory) -> Path:
    """A run directory whose model/ knows HumanEval/0, /2 and /4 by heart."""
    run_dir = tmp_path_factory.mktemp("runs") / "pretrain-memorized"
    model = memorized_humaneval_model(tiny_data["tokenizer"])
    save_pretrained(model, run_dir / "model", tokenizer=str(tiny_data["tokenizer"]))
    return run_dir


@pytest.mark.slow
def test_canonical_humaneval_passes_everything(tmp_path):
    r = cli(
        ["completions=canonical", "benchmark=humaneval", f"paths.runs={tmp_path}", "progress=false"], tmp_path
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "eval" / "canonical" / "humaneval"
    res = json.loads((out / "results.json").read_text())
    assert res["pass@k"] == {"pass@1": 1.0} and res["n_samples"] == 164 and res["mode"] == "canonical"
    assert res["status"] == "complete" and res["failed_tasks"] == []
    assert json.loads(r.stdout)["pass@k"] == {"pass@1": 1.0}
    assert (out / ".hydra" / "config.yaml").is_file() and (out / "canonical_results.jsonl").is_file()


@pytest.mark.parametrize(
    ("benchmark", "label", "fmt"),
    [
        ("humaneval_plus", "humaneval+/all", "humaneval"),
        ("mbpp", "mbpp/test", "mbpp-0shot"),
        ("mbpp_3shot", "mbpp/test", "mbpp-3shot"),
        ("mbpp_sanitized", "mbpp-sanitized/test", "mbpp-0shot"),
        ("mbpp_plus", "mbpp+/all", "mbpp-0shot"),
    ],
)
def test_every_benchmark_config_loads_and_its_references_pass(benchmark, label, fmt, tmp_path):

    res = run(
        config(
            "completions=canonical",
            f"benchmark={benchmark}",
            "limit=6",
            f"out_dir={tmp_path}",
        )
    )
    assert res["pass@k"] == {"pass@1": 1.0} and res["n_samples"] == 6
    assert res["benchmark"]["label"] == label and res["prompt_format"] == fmt
    assert res["settings"]["benchmark"]["limit"] == 6


@pytest.mark.slow
def test_checkpoint_generates_scores_and_measures_bpb_into_its_run(memorized_run):
    overrides = [
        f"checkpoint={memorized_run / 'model'}",
        "limit=5",
        "generation.max_new_tokens=160",
        "bpb=true",
    ]
    res = run(config(*overrides))
    out = memorized_run / "eval" / "humaneval"
    assert (
        res["out_dir"] == str(out) and json.loads((out / "results.json").read_text())["status"] == "complete"
    )
    samples = read_jsonl(out / "samples.jsonl")
    tasks = [p.task_id for p in list(load_humaneval())[:5]]
    assert [s["task_id"] for s in samples] == tasks and all(s["sample"] == 0 for s in samples)
    he = load_humaneval()
    by_task = {s["task_id"]: s for s in samples}
    assert by_task["HumanEval/0"]["completion"] == he["HumanEval/0"].canonical_solution + "\n"
    assert (
        by_task["HumanEval/0"]["finish_reason"] == "stop" and by_task["HumanEval/4"]["finish_reason"] == "eos"
    )
    passed = {r["task_id"] for r in read_jsonl(out / "samples.jsonl_results.jsonl") if r["passed"]}
    assert passed == {"HumanEval/0", "HumanEval/2", "HumanEval/4"}  # what it learnt, nothing else
    assert res["pass@k"] == {"pass@1": pytest.approx(0.6)}
    assert res["benchmark"]["label"] == "humaneval/all" and res["prompt_format"] == "humaneval"
    assert res["model"]["kind"] == "textbooks" and res["generation"]["temperature"] == 0.0
    assert res["generation"]["completions"] == 5 and res["generation"]["new_tokens"] > 0
    bpb = {r["task_id"]: r["bpb"] for r in read_jsonl(out / "bpb.jsonl")}
    assert res["bpb"]["n_problems"] == 5 and max(bpb[t] for t in passed) < min(
        bpb["HumanEval/1"], bpb["HumanEval/3"]
    )

    again = run(config(*overrides))
    assert again["skipped"] and again["pass@k"] == res["pass@k"]
    with pytest.raises(EvalError, match=r"other settings \(differs in: generation.temperature"):
        run(config(*overrides, "generation.temperature=0.5"))
    redo = run(config(*overrides, "generation.temperature=0.5", "force=true"))
    assert not redo.get("skipped") and redo["settings"]["generation"]["temperature"] == 0.5


@pytest.mark.slow
def test_killed_generation_resumes_with_the_same_samples(memorized_run, tmp_path):
    args = [
        f"checkpoint={memorized_run / 'model'}",
        "limit=30",
        "generation.max_new_tokens=48",
        "generation.temperature=0.8",
        "generation.n=2",
        "generation.batch_size=2",
        "progress=false",
        "threads=1",
    ]
    out = tmp_path / "killed"
    p = subprocess.Popen(
        [str(BIN / "textbooks-eval"), *args, f"out_dir={out}"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    samples = out / "samples.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if samples.is_file() and len(samples.read_text().splitlines()) >= 6:
            break
        time.sleep(0.02)
    assert p.poll() is None, f"the eval exited with {p.returncode} before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert 6 <= len(samples.read_text().splitlines()) < 60, "the run must be killed mid-generation"
    assert not (out / "results.json").exists()
    with open(samples, "a") as f:
        f.write('{"task_id": "HumanEval/29", "completion": "torn')  # a line cut short by the kill
    resumed = cli([*args, f"out_dir={out}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["generation"]["resumed_problems"] >= 3 and res["generation"]["generated_problems"] <= 27
    reference = run(config(*args[:-1], f"out_dir={tmp_path / 'whole'}"))
    assert reference["generation"]["resumed_problems"] == 0
    assert samples.read_text() == (tmp_path / "whole" / "samples.jsonl").read_text()
    assert res["pass@k"] == reference["pass@k"] and set(res["pass@k"]) == {"pass@1"}


def test_samples_file_from_any_model_is_scored_beside_it(tmp_path):
    he = load_humaneval()
    rows = [{"task_id": t, "completion": he[t].canonical_solution} for t in ("HumanEval/0", "HumanEval/1")]
    rows += [{"task_id": "HumanEval/2", "completion": "    return 0\n\ndef extra():\n    pass\n"}]
    path = tmp_path / "from-elsewhere.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run(config(f"samples={path}", "limit=3"))
    assert res["pass@k"] == {"pass@1": pytest.approx(2 / 3)} and res["mode"] == "samples"
    assert (tmp_path / "results.json").is_file() and (
        tmp_path / "from-elsewhere.jsonl_results.jsonl"
    ).is_file()
    # HumanEval/2's completion was cut at "\ndef" before running (truncate=true): it fails on its merits
    scored = read_jsonl(tmp_path / "from-elsewhere.jsonl_results.jsonl")
    assert scored[2]["completion"] == "    return 0\n" and not scored[2]["passed"]


@pytest.mark.slow
def test_scoring_command_line_reads_the_benchmarks_from_paths_benchmarks(tmp_path):
    """``textbooks-eval samples=`` is the scoring command line: ``paths.benchmarks=`` replaces the shipped
    copies, and a benchmark file missing there is one error line naming it, exit status 2."""
    mbpp = load_mbpp()
    path = tmp_path / "s.jsonl"
    path.write_text(
        json.dumps({"task_id": "Mbpp/11", "completion": mbpp["Mbpp/11"].canonical_solution}) + "\n"
    )
    bench = tmp_path / "bench"
    bench.mkdir()
    shutil.copy(shipped_file("mbpp"), bench / "mbpp.jsonl")
    common = [f"samples={path}", f"paths.benchmarks={bench}", "sandbox.truncate=false", "progress=false"]
    r = cli([*common, "benchmark=mbpp_3shot"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["benchmark"] == "mbpp/test" and out["pass@k"] == {"pass@1": 1.0}
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["benchmark"]["source"] == str(bench / "mbpp.jsonl") and res["prompt_format"] == "mbpp-3shot"
    r = cli([*common, "benchmark=mbpp_plus", f"out_dir={tmp_path / 'plus'}"], tmp_path)  # no MBPP+ there
    assert r.returncode == 2 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: mbpp+: benchmark file not found") and "MbppPlus.jsonl.gz" in last


def test_bad_invocations_are_one_line_errors(tmp_path, memorized_run):
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        run(config())
    with pytest.raises(ConfigError, match="checkpoint= or hf_model=, not both"):
        run(config("checkpoint=a", "hf_model=b"))
    with pytest.raises(ConfigError, match="only choice is completions=canonical"):
        run(config("completions=mine"))
    with pytest.raises(ConfigError, match="limit=0"):
        run(config("completions=canonical", "limit=0", f"out_dir={tmp_path}"))
    with pytest.raises(ConfigError, match="max_new_tokens=512 leaves no room"):
        run(config(f"checkpoint={memorized_run / 'model'}", "limit=1", f"out_dir={tmp_path / 'ctx'}"))
    r = cli(["bpb=true", f"paths.runs={tmp_path}"], tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: bpb=true needs a model")
    assert "Traceback" not in r.stderr


def test_random_model_output_dir_outside_a_run(tmp_path):
    model_dir = tmp_path / "exported"
    save_pretrained(tiny_model(50304, max_seq_len=256), model_dir, tokenizer="p50k_base")
    res = run(
        config(
            f"checkpoint={model_dir}", "limit=2", "generation.max_new_tokens=8", "generate=false", "bpb=true",
            f"paths.runs={tmp_path / 'runs'}",
        )
    )  # fmt: skip
    assert res["out_dir"] == str(tmp_path / "runs" / "eval" / "exported" / "humaneval")
    assert res["mode"] == "bpb" and res["bpb"]["n_problems"] == 2 and "pass@k" not in res
