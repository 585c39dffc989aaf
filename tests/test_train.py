"""textbooks-train end to end: outputs, W&B offline, exact resume after a kill, sweeps, finetuning,
strategies, and the refusals that happen before training starts."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException

from textbooks.checkpoint import load_pretrained
from textbooks.config import CONF_DIR
from textbooks.errors import ConfigError, DataError
from textbooks.train.app import train
from textbooks.train.config import load

BIN = Path(sys.executable).parent
FAST = [
    "train.seq_len=64",
    "recipe.global_batch_size=8",
    "trainer.micro_batch_size=4",
    "recipe.schedule.warmup_steps=5",
    "train.log_every_steps=1",
]


def cli(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [str(BIN / "textbooks-train"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        **kw,
    )


def losses(run_dir: Path, key: str = "train/loss") -> list[tuple[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    step = "val/step" if key.startswith("val") else "train/step"
    return [(r[step], r[key]) for r in rows if r.get(key)]


def config(tiny_data, *overrides: str):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("train", overrides=[*tiny_data["overrides"], "logger=[csv]", *FAST, *overrides])


@pytest.mark.slow
def test_train_cli_writes_a_complete_run_and_skips_it_after(tiny_data):
    root = tiny_data["root"]
    evals = [
        "eval.enabled=true",
        "eval.every_tokens=30K",
        "eval.bpb_problems=8",
        "eval.pass_problems=2",
        "eval.max_new_tokens=16",
    ]
    r = cli([*tiny_data["overrides"], *FAST, "train.tokens=60K", "logger=[csv,wandb]", *evals], cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = root / "runs" / "pretrain-stdlib-cpu_tiny-60K-s0"
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "complete" and res["steps"] == res["total_steps"] == 60_000 // (8 * 64)
    assert res["tokens_seen"] == res["steps"] * 8 * 64 and res["tokens_per_sec"] > 0 and 0 < res["mfu"] < 1
    train = [float(v) for _, v in losses(run_dir)]
    assert len(train) == res["steps"] and train[-1] < train[0] - 0.5
    assert len(losses(run_dir, "val/loss")) >= 10
    with open(run_dir / "metrics.csv", newline="") as f:
        header = next(csv.reader(f))
    assert {"train/lr", "train/tokens_seen", "perf/tokens_per_sec", "perf/mfu", "val/loss"} <= set(header)
    rss = [float(v) for _, v in losses(run_dir, "perf/peak_rss_gib")]  # a CPU run: no device memory column
    assert "perf/peak_mem_gib" not in header and len(rss) == res["steps"] and 0.1 < rss[0] <= rss[-1] < 64
    bpb = losses(run_dir, "eval/humaneval_bpb")  # in-training eval at 30K tokens and at the end
    assert len(bpb) == 2 and all(float(v) > 0 for _, v in bpb) and "eval/humaneval_pass@1" in header
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (
        run_dir / "checkpoints" / "last.ckpt"
    ).is_file()
    from wandb_records import summarize

    offline = list((run_dir / "wandb").glob("offline-run-*"))
    wb = summarize(next(offline[0].rglob("run-*.wandb")))
    assert wb["run"].display_name == run_dir.name and wb["run"].run_group == "stdlib-cpu_tiny"
    assert set(wb["run"].tags) == {"pretrain", "stdlib", "cpu_tiny"} and wb["run"].project == "textbooks"
    assert ("*", "train/tokens_seen") in wb["metrics"]  # every metric plotted against tokens seen
    assert {"train/loss", "val/loss", "eval/humaneval_bpb", "train/tokens_seen"} <= wb["history_keys"]
    assert float(wb["summary"]["final/steps"]) == res["steps"]
    model, enc = load_pretrained(run_dir / "model")
    assert model.config.vocab_size == 512 and enc.n_vocab == 512 and not model.training
    again = cli([*tiny_data["overrides"], *FAST, "train.tokens=60K", "logger=[csv]"], cwd=root)
    assert again.returncode == 0 and "is complete" in again.stdout + again.stderr


@pytest.mark.slow
def test_killed_run_resumes_with_identical_losses(tiny_data, tmp_path):
    args = [*tiny_data["overrides"], *FAST, "train.tokens=60K", "logger=[csv]", "train.export=false"]
    ref = cli([*args, f"paths.runs={tmp_path / 'a'}"], cwd=tiny_data["root"])
    assert ref.returncode == 0, ref.stderr[-3000:]
    run_b = tmp_path / "b" / "pretrain-stdlib-cpu_tiny-60K-s0"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen(
        [str(BIN / "textbooks-train"), *args, f"paths.runs={tmp_path / 'b'}"],
        cwd=tiny_data["root"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not list((run_b / "checkpoints").glob("step0000036.ckpt")) and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # let it run past the checkpoint, so the resumed run redoes some steps
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (run_b / "results.json").exists()
    resumed = cli([*args, f"paths.runs={tmp_path / 'b'}"], cwd=tiny_data["root"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restored all states" in resumed.stdout + resumed.stderr
    run_a = tmp_path / "a" / "pretrain-stdlib-cpu_tiny-60K-s0"
    a, b = losses(run_a), losses(run_b)
    assert len(a) == 117 and a == b  # every step's loss, bit for bit (dropout 0.1 included)
    assert losses(run_a, "val/loss") == losses(run_b, "val/loss")


@pytest.mark.slow
def test_multirun_sweep_over_models_and_tokens(tiny_data):
    root = tiny_data["root"]
    r = cli(
        [
            "-m",
            *tiny_data["overrides"],
            *FAST,
            "logger=[csv,wandb]",
            "sweep_name=grid",
            "model=cpu_tiny,cpu_small",
            "train.tokens=10K,15K",
            "train.export=false",
        ],
        cwd=root,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    done = sorted(p.parent.name for p in (root / "runs" / "grid").glob("*/results.json"))
    assert done == [f"pretrain-stdlib-{m}-{t}-s0" for m in ("cpu_small", "cpu_tiny") for t in ("10K", "15K")]
    from wandb_records import summarize

    # one W&B run per job of the sweep (all jobs share one process), each named and grouped after its run
    runs = [
        summarize(next((root / "runs" / "grid" / d).glob("wandb/offline-run-*/run-*.wandb"))) for d in done
    ]
    assert [w["run"].display_name for w in runs] == done
    assert len({w["run"].run_id for w in runs}) == 4
    assert [w["run"].run_group for w in runs] == ["stdlib-cpu_small"] * 2 + ["stdlib-cpu_tiny"] * 2
    assert all("final/val_loss" in w["summary"] for w in runs)


@pytest.mark.slow
def test_finetune_from_exported_weights_keeps_the_best(tiny_data, tmp_path):
    pre = train(config(tiny_data, "train.tokens=30K"), tmp_path / "pre")
    ft_cfg = config(
        tiny_data,
        "recipe=finetune",
        "train.tokens=20K",
        f"train.init_from={pre['model_dir']}",
        "recipe.global_batch_size=8",
        "recipe.schedule.warmup_steps=2",
    )
    res = train(ft_cfg, tmp_path / "ft")
    assert res["stage"] == "finetune" and res["status"] == "complete"
    assert res["init_from"] == pre["model_dir"] and res["exported_step"] <= res["steps"]
    assert list((tmp_path / "ft" / "checkpoints").glob("best-step*.ckpt"))
    # the exported weights are those of the best validation step
    model, _ = load_pretrained(tmp_path / "ft" / "model")
    best = min(float(v) for _, v in losses(tmp_path / "ft", "val/loss"))
    assert res["val_loss"] >= best - 1e-6
    start, _ = load_pretrained(pre["model_dir"])
    assert not torch.equal(model.lm_head.weight, start.lm_head.weight)


def test_unknown_preset_and_key_are_hydra_errors(tiny_data):
    with pytest.raises(MissingConfigException, match="cpu_tiny"):  # lists the available choices
        config(tiny_data, "model=gpt9")
    with pytest.raises(Exception, match="n_layers"):
        config(tiny_data, "model.n_layers=3")


def test_refusals_before_training(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="below one global batch"):
        train(config(tiny_data, "train.tokens=100"), tmp_path / "r1")
    with pytest.raises(ConfigError, match="embeds only"):
        train(config(tiny_data, "model.vocab_size=256"), tmp_path / "r2")
    with pytest.raises(DataError, match=re.escape("textbooks-data stage=pack stage.component=filtered")):
        train(config(tiny_data, "dataset=codetextbook"), tmp_path / "r3")
    with pytest.raises(ConfigError, match="multiple of micro_batch_size"):
        train(config(tiny_data, "trainer.micro_batch_size=3"), tmp_path / "r4")
    assert not any((tmp_path / d / "checkpoints").exists() for d in ("r1", "r2", "r3", "r4"))


def test_shards_from_another_tokenizer_are_refused(tiny_data, tmp_path):
    from textbooks.data.engine.reader import read_texts
    from textbooks.tokenizer import train_bpe

    root = tmp_path / "root"
    train_bpe(
        read_texts(tiny_data["inputs"][:1]),
        400,
        root / "data" / "tokenizer" / "bpe-400.tiktoken",
        show_progress=False,
    )
    (root / "data" / "tokens" / "bpe400").mkdir(parents=True)
    shutil.copytree(tiny_data["shards"], root / "data" / "tokens" / "bpe400" / "stdlib")
    with pytest.raises(DataError, match="were written with tokenizer"):
        train(config(tiny_data, f"paths.root={root}", "tokenizer.vocab_size=400"), tmp_path / "r")


@pytest.mark.parametrize("trainer", ["deepspeed", "fsdp", "ddp", "fully_shard"])
def test_distributed_strategies_build_from_configs(tiny_data, tmp_path, trainer):
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy

    from textbooks.train.app import make_trainer

    cfg = config(tiny_data, f"trainer={trainer}", "trainer.accelerator=cpu", "trainer.devices=1")
    if trainer == "fsdp":  # Lightning refuses FSDP on CPU at Trainer construction: check the strategy itself
        import hydra

        from textbooks.model import Block

        strategy = hydra.utils.instantiate(cfg.trainer.strategy)
        assert isinstance(strategy, FSDPStrategy) and cfg.trainer.precision == "bf16-mixed"
        assert strategy.kwargs["auto_wrap_policy"]._module_classes == {Block}
        return
    t = make_trainer(load(cfg), tmp_path, [], [], max_steps=10)
    if trainer == "deepspeed":  # the paper's settings: ZeRO-1, fp16 with loss scale 2^12
        assert isinstance(t.strategy, DeepSpeedStrategy) and cfg.trainer.precision == "16-mixed"
        t.strategy._format_config()
        assert t.strategy.config["zero_optimization"]["stage"] == 1
        assert t.strategy.config["fp16"] == {
            "enabled": True,
            "loss_scale": 0,
            "initial_scale_power": 12,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        }
    elif trainer == "fully_shard":  # FSDP2 through ModelParallelStrategy: whole-state checkpoint files
        from textbooks.train.strategies import FullyShardStrategy

        assert isinstance(t.strategy, FullyShardStrategy) and not t.strategy._save_distributed_checkpoint
    else:
        assert isinstance(t.strategy, DDPStrategy)


def test_peak_memory_is_the_process_peak_in_gib_on_a_cpu():
    """On a CPU only the host figure is logged: the kernel's high-water mark of the resident set (VmHWM), in
    GiB, never less after more memory is touched."""
    from textbooks.train.throughput import peak_memory

    def vm_hwm_gib() -> float:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 2**20  # kB

    first = peak_memory(torch.device("cpu"))
    assert set(first) == {"perf/peak_rss_gib"}
    assert first["perf/peak_rss_gib"] == pytest.approx(vm_hwm_gib(), 0.05)
    block = torch.ones(256 * 2**20 // 4)  # 256 MiB touched
    second = peak_memory(torch.device("cpu"))["perf/peak_rss_gib"]
    del block
    assert second >= first["perf/peak_rss_gib"] and second == pytest.approx(vm_hwm_gib(), 0.05)


def test_a_run_resumes_from_the_newest_readable_checkpoint(tmp_path):
    from textbooks.train.rundir import resume_checkpoint

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    assert resume_checkpoint(ckpts) is None
    for step in (10, 20):
        torch.save({"global_step": step}, ckpts / f"step{step:07d}.ckpt")
    good = (ckpts / "step0000020.ckpt").read_bytes()
    (ckpts / "last.ckpt").write_bytes(good[: len(good) // 2])  # killed while writing
    assert resume_checkpoint(ckpts) == ckpts / "step0000020.ckpt"
    (ckpts / "last.ckpt").write_bytes(good)
    assert resume_checkpoint(ckpts) == ckpts / "last.ckpt"
    # killed between the periodic save and last.ckpt's: the periodic one is newer
    torch.save({"global_step": 30}, ckpts / "step0000030.ckpt")
    assert resume_checkpoint(ckpts) == ckpts / "step0000030.ckpt"
    (ckpts / "step0000030.ckpt").write_bytes(b"PK")  # ... and cut short: last.ckpt
    assert resume_checkpoint(ckpts) == ckpts / "last.ckpt"


def test_a_training_run_prints_nothing_the_user_cannot_act_on(tmp_path, caplog) -> None:
    """Lightning's litlogger advertisement, its accelerator lines, the planned end of a run and the LeafSpec
    deprecation are dropped; other lines stay."""
    import warnings

    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    from textbooks.train.logging import quiet_third_party

    quiet_third_party()
    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: try installing [litlogger](https://pypi.org/project/litlogger/)")
        rank_zero_info("GPU available: False, used: False")
        rank_zero_info("TPU available: False, using: 0 TPU cores")
        rank_zero_info("`Trainer.fit` stopped: `max_steps=39` reached.")
        rank_zero_info("Restoring states from the checkpoint path at /x/last.ckpt")
    assert "litlogger" not in caplog.text and "available" not in caplog.text and "stopped" not in caplog.text
    assert "Restoring states" in caplog.text
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        quiet_third_party()  # catch_warnings reset the filters: the run's own set-up sets them again
        from torch.utils._pytree import LeafSpec

        LeafSpec()  # what Lightning's _tree_flatten does on every batch transfer
        from lightning.fabric.utilities.rank_zero import rank_zero_warn

        rank_zero_warn("The `srun` command is available on your system but is not used. HINT: ...")
    assert not [w for w in seen if "LeafSpec" in str(w.message) or "srun" in str(w.message)]


def test_a_metrics_file_cut_short_by_a_kill_resumes_without_the_cut_row(tmp_path):
    """A kill while metrics.csv is flushed leaves a row cut short: the resume drops it with the rows after the
    checkpoint, and a rewrite for new columns never leaves the file truncated."""
    from textbooks.train.logging import METRICS, RunCSVLogger

    path = tmp_path / METRICS
    rows = "step,train/step,train/loss,val/step,val/loss\n0,1,6.5,,\n1,2,6.25,,\n2,3,6.0,3,6.1\n3,4,5.9,,\n4,5,5."
    path.write_text(rows)
    writer = RunCSVLogger(tmp_path).experiment
    assert writer.truncate(3) == 2  # step 4's row (after the checkpoint) and step 5's (cut short)
    with open(path, newline="") as f:
        assert [r["train/step"] for r in csv.DictReader(f)] == ["1", "2", "3"]
    writer.truncate(4)  # still whole
    path.write_text(rows[: rows.index("\n3,4")] + "\n3,4,5.9,,,extra\n")  # more fields than the header
    assert writer.truncate(10) == 1
    writer.log_metrics({"train/step": 4, "train/loss": 5.9, "train/lr": 1e-3}, step=3)
    writer.save()  # a new column: the file is rewritten beside itself, then moved over it
    with open(path, newline="") as f:
        got = list(csv.DictReader(f))
    assert [r["train/step"] for r in got] == ["1", "2", "3", "4"] and got[-1]["train/lr"] == "0.001"
    assert not path.with_suffix(".tmp").exists()


def test_the_progress_bar_counts_the_runs_steps(capfd) -> None:
    """Over 5 steps of 3 batches an epoch, the bar reads "train 5/5": steps of the run, through the passes
    over the data, where Lightning's reads "Epoch 1/-2" (max_epochs=-1) and restarts with each pass. The
    validation bar goes when validation ends, also after ``trainer.validate`` (a run's final validation)."""
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
    from torch.utils.data import DataLoader

    from textbooks.train.logging import quiet_third_party, step_progress_bar

    quiet_third_party()  # as a run's trainer does (pytest resets warning filters per test)

    class Model(BoringModel):
        def train_dataloader(self) -> DataLoader:
            return DataLoader(RandomDataset(32, 3), batch_size=1)

    trainer = L.Trainer(max_steps=5, max_epochs=-1, callbacks=[step_progress_bar()], logger=False,
                        enable_checkpointing=False, enable_model_summary=False, limit_val_batches=2,
                        val_check_interval=5, check_val_every_n_epoch=None, accelerator="cpu")  # fmt: skip
    trainer.fit(Model())
    trainer.validate(Model(), verbose=False)
    out = capfd.readouterr().out
    assert re.search(r"train\b.*\b5/5\b", out) and "Epoch" not in out and "v_num" not in out, out
    assert "Validation" not in out, out


BAR_AND_LOG = """
import logging, sys, time
import lightning as L
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
from torch.utils.data import DataLoader
from textbooks.train.logging import quiet_third_party, step_progress_bar
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
class Model(BoringModel):
    def train_dataloader(self):
        return DataLoader(RandomDataset(32, 3), batch_size=1)
    def training_step(self, batch, i):
        time.sleep(0.1)
        if self.global_step == 3:
            logging.getLogger("x").info("LOGGED at step 3")
        return super().training_step(batch, i)
quiet_third_party()
L.Trainer(max_steps=6, max_epochs=-1, callbacks=[step_progress_bar()], logger=False, enable_checkpointing=False,
          enable_model_summary=False, limit_val_batches=0, accelerator="cpu").fit(Model())
"""


def test_a_log_line_during_training_prints_above_the_bar_in_a_terminal(tmp_path) -> None:
    """In a terminal (a pseudo-terminal here), a log line written while the bar is live starts on a cleared
    line of its own, not after the bar's text on its line."""
    import fcntl
    import pty
    import struct
    import termios

    script = tmp_path / "bar_and_log.py"
    script.write_text(BAR_AND_LOG)
    ours, theirs = pty.openpty()
    fcntl.ioctl(theirs, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, str(script)], stdin=theirs, stdout=theirs, stderr=theirs)
    os.close(theirs)
    out = b""
    while True:
        try:
            chunk = os.read(ours, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(ours)
    assert proc.wait(60) == 0, out.decode(errors="replace")[-2000:]
    text = out.decode(errors="replace")
    before = text[: text.index("LOGGED at step 3")]
    assert before.endswith("\x1b[2K") or before.endswith("\n"), repr(before[-200:])
