"""Figure 2.1 end to end at toy scale: the demo, the runs table, the notebook, sweeps that resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from textbooks.report.collect import collect
from textbooks.sandbox.pool import default_workers

pytestmark = pytest.mark.slow  # every test trains the demo's runs or a sweep (minutes)

BIN = Path(sys.executable).parent
PACKAGES = ("json", "email", "logging", "importlib")


def run(cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo(tmp_path_factory, stdlib_dir):
    """textbooks-demo at toy scale: a few stdlib packages, a tiny model, two seeds, 5 HumanEval problems."""
    root = tmp_path_factory.mktemp("demo")
    corpus = ",".join(str(stdlib_dir / p) for p in PACKAGES)
    r = run(
        [
            str(BIN / "textbooks-demo"),
            f"workdir={root / 'demo'}",
            f"corpus=[{corpus}]",
            "vocab_size=512",
            "train.model=cpu_tiny",
            "train.tokens=40K",
            "train.finetune_tokens=10K",
            "train.seeds=[0,1]",
            "annotate_sample=150",
            "eval_limit=5",
            "eval_max_new_tokens=24",
            "decontam_embedder=null",
            "synthetic.llm=local_tiny",  # the pipeline's plumbing; the code model's output: test_llm_stages
            "synthetic.textbook_sections=3",
            "synthetic.exercises=4",
            "synthetic.textbook_max_tokens=160",
            "synthetic.exercise_max_tokens=160",
            'train.overrides=["train.seq_len=64","eval.every_tokens=20K","eval.bpb_problems=10"]',
        ],
        cwd=root,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return root / "demo", r.stdout + r.stderr


def test_demo_table_and_figure_come_from_its_runs(demo):
    work, out = demo
    runs = pd.read_csv(work / "runs.csv")
    assert (work / "figure_2_1.png").stat().st_size > 10_000 and (work / "curves.png").is_file()
    run_dirs = sorted(p.parent for p in (work / "runs" / "demo").glob("*/results.json"))
    assert len(run_dirs) == 6  # {stack_plus, filtered} pretraining + finetune, two seeds
    assert sorted(runs["run_dir"]) == sorted(map(str, run_dirs))
    for d in run_dirs:
        row = runs[runs["run_dir"] == str(d)].iloc[0]
        res = json.loads((d / "results.json").read_text())
        ev = json.loads((d / "eval" / "humaneval" / "results.json").read_text())
        assert row["status"] == "complete" and row["val_loss"] == pytest.approx(res["val_loss"])
        assert row["humaneval_bpb"] == pytest.approx(ev["bpb"]["bpb"])
        assert row["humaneval_pass@1"] == pytest.approx(ev["pass@k"]["pass@1"])
        assert row["run_name"] in out  # the printed table lists every run
    # the local model answered every request; the bars say what survived the checks and decontamination
    data = work / "data"
    written = json.loads((data / "textbooks" / "manifest.json").read_text())
    assert written["requested"] == 3 and written["failed"] == 0 and written["llm"]["requests"] >= 3
    synthetic = json.loads((data / "exercises-synthetic" / "manifest.json").read_text())
    assert synthetic["counts"]["requested"] == 4 and synthetic["source"] == "synthetic"
    sections = (
        json.loads((data / "textbooks-decontaminated" / "manifest.json").read_text())["documents"]
        if written["documents"]
        else 0
    )
    middle = f"Filtered code + {sections} textbook sections" if sections else "Filtered code"
    kept = pd.concat(
        pd.read_parquet(p) for p in sorted((data / "decontaminated-tau0.95").glob("part-*.parquet"))
    )
    n = kept["source"].value_counts()
    assert n.get("synthetic", 0) <= synthetic["documents"] and n["mined"] > 0
    finetune = f"{n['mined']} mined + {n.get('synthetic', 0)} synthetic exercises"
    bars = pd.read_csv(work / "figure_2_1.csv")
    bpb = bars[bars["metric"] == "humaneval_bpb"].set_index("bar")
    assert set(bpb.index) == {"The Stack+", middle, f"{middle} → {finetune}"}
    assert (bpb["n"] == 2).all()
    stack = runs[(runs["dataset"] == "stack_plus")]["humaneval_bpb"]
    assert bpb.loc["The Stack+", "mean"] == pytest.approx(stack.mean())
    assert bpb.loc["The Stack+", "std"] == pytest.approx(stack.std())
    ft = runs[runs["stage"] == "finetune"]
    assert set(ft["base_dataset"]) == {"codetextbook" if sections else "filtered"}
    assert set(ft["base_tokens"]) == {40_000}
    # pass@1 in percent in the figure's table (and axis) as in the printed runs table; runs.csv: fractions
    passk = bars[bars["metric"] == "humaneval_pass@1"].set_index("bar")
    stack_pass = runs[runs["dataset"] == "stack_plus"]["humaneval_pass@1"]
    assert passk.loc["The Stack+", "mean"] == pytest.approx(100 * stack_pass.mean())
    assert "humaneval_pass@1 (%)" in out


def test_demo_prints_what_a_user_can_act_on(demo):
    """One bar per data stage, none of Lightning's hardware lines or epoch counts, a bar in steps."""
    _, out = demo
    for noise in (
        "GPU available",
        "TPU available",
        "Epoch 0/-2",
        "litlogger",
        "LeafSpec",
        "anonymous",
        "v_num",
    ):
        assert noise not in out, noise
    assert "train ━" in out and "39/39" in out  # the pretraining runs' bar, in steps
    for desc in ("ingest", "annotate (heuristic)", "classify: embed annotations", "classify: score"):
        # a bar starts at 0 at 00:00 (the captured output has its \r as line ends; a bar redrawn under a log
        # line is later): one bar for the step, however many tasks and shards (annotate drew one per shard)
        starts = re.findall(rf"^{re.escape(desc)}: +(?:0%\|.*\| 0/\d+ |0[a-z]+ )\[00:00[<,]", out, re.M)
        assert len(starts) == 1, (desc, starts)
    assert re.search(r"eval at step 20 \(20,480 tokens\): humaneval_bpb \d\.\d{3}(,|$)", out, re.M)
    # the LLM stages: one task per core, each with its own server, and one bar counting all of them
    for bar, n in (("textbooks", 3), ("exercises (llm)", 4)):
        k = min(default_workers(), n)
        assert (
            f"stage.n={n} stage.requests_per_part={-(-n // k)} executor.tasks={k} executor.workers={k}" in out
        )
        shown = [line for line in re.split(r"[\r\n]", out) if line.startswith(f"{bar}: 100%")]
        assert shown and f"new={n}," in shown[-1] and (k == 1 or f"tasks={k}/{k}" in shown[-1]), shown[-1:]


def test_the_demo_gives_each_llm_stage_one_task_and_server_per_core():
    from omegaconf import OmegaConf

    from textbooks.demo import servers

    two = OmegaConf.create({"servers": 2})
    assert servers(two, 5) == [
        "stage.n=5",
        "stage.requests_per_part=3",
        "executor.tasks=2",
        "executor.workers=2",
    ]
    assert servers(two, 1)[1:] == ["stage.requests_per_part=1", "executor.tasks=1", "executor.workers=1"]
    cores = default_workers()
    assert f"executor.tasks={cores}" in servers(OmegaConf.create({"servers": None}), 1000)


def test_notebook_redraws_the_figure(demo, repo_root):
    import nbformat
    from nbclient import NotebookClient

    work, _ = demo
    nb = nbformat.read(repo_root / "notebooks" / "figure_2_1.ipynb", as_version=4)
    os.environ["TEXTBOOKS_RUNS"] = str(work)
    try:
        NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(work)}}
        ).execute()
    finally:
        os.environ.pop("TEXTBOOKS_RUNS")
    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    assert len(images) >= 2  # Figure 2.1 and the curves
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "6 runs from" in text


def test_collect_reports_runs_without_results(demo, tmp_path):
    work, _ = demo
    src = next(p for p in (work / "runs" / "demo").glob("pretrain-*-s0") if "stack_plus" not in p.name)
    dataset = json.loads((src / "run.json").read_text())["dataset"]
    assert dataset in ("codetextbook", "filtered")
    broken = tmp_path / "sweep" / src.name
    broken.mkdir(parents=True)
    (broken / ".hydra").mkdir()
    (broken / ".hydra" / "config.yaml").write_text((src / ".hydra" / "config.yaml").read_text())
    (broken / "run.json").write_text((src / "run.json").read_text())
    _, rows = collect([tmp_path / "sweep"])
    assert [r["status"] for r in rows] == ["missing"] and rows[0]["dataset"] == dataset
    r = run([str(BIN / "textbooks-collect"), str(tmp_path / "sweep")], cwd=tmp_path)
    assert r.returncode == 0 and "missing" in r.stdout and str(broken) in r.stdout


def test_killed_sweep_finishes_only_the_missing_runs(tiny_data, tmp_path):
    args = [
        str(BIN / "textbooks-train"),
        "-m",
        *tiny_data["overrides"],
        "logger=[csv]",
        "train.seq_len=64",
        "recipe.global_batch_size=8",
        "trainer.micro_batch_size=8",
        "train.export=false",
        f"paths.runs={tmp_path}",
        "sweep_name=grid",
        "train.tokens=12K,60K",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen(
        args, cwd=tiny_data["root"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    second = tmp_path / "grid" / "pretrain-stdlib-cpu_tiny-60K-s0"
    deadline = time.time() + 300
    while not (second / "checkpoints" / "last.ckpt").is_file() and time.time() < deadline:
        time.sleep(0.1)
    p.send_signal(signal.SIGKILL)
    p.wait()
    first = tmp_path / "grid" / "pretrain-stdlib-cpu_tiny-12K-s0" / "results.json"
    assert first.is_file() and not (second / "results.json").exists()
    before = first.stat().st_mtime_ns
    r = run(args, cwd=tiny_data["root"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert first.stat().st_mtime_ns == before  # the finished run was skipped
    assert "is complete" in r.stdout + r.stderr and "Restored all states" in r.stdout + r.stderr
    assert json.loads((second / "results.json").read_text())["status"] == "complete"
