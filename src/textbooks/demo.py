"""``textbooks-demo``: the main job on a fresh 2-core machine, offline, in a few minutes.

Every step is one of the library's own command lines (printed before it runs), so the demo is also a
transcript of how to use the library.
"""

from __future__ import annotations

import csv
import shlex
import subprocess
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from textbooks.config import CONF_DIR, format_count
from textbooks.errors import TextbooksError, cli_errors


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def sh(args: list[str]) -> None:
    """Run one of the library's commands, echoing it; a failure stops the demo with its exit status."""
    print(f"\n$ {shlex.join([Path(args[0]).name, *args[1:]])}", flush=True)
    t0 = time.time()
    r = subprocess.run(args)
    if r.returncode:
        raise TextbooksError(f"`{Path(args[0]).name}` failed with exit status {r.returncode} (see above)")
    print(f"  ({time.time() - t0:.0f} s)", flush=True)


def loss_curve(metrics_csv: Path, points: int = 8) -> list[dict[str, float]]:
    """Train and validation loss at ~``points`` evenly spaced steps of a run's metrics.csv."""
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    train = [(float(r["train/tokens_seen"]), float(r["train/loss"])) for r in rows if r.get("train/loss")]
    val = {float(r["val/tokens_seen"]): float(r["val/loss"]) for r in rows if r.get("val/loss")}
    if not train:
        return []
    idx = sorted({round(i * (len(train) - 1) / (points - 1)) for i in range(points)})
    out = []
    for i in idx:
        tokens, loss = train[i]
        near = min(val, key=lambda t: abs(t - tokens)) if val else None
        out.append(
            {
                "tokens": tokens,
                "train_loss": loss,
                "val_loss": val[near] if near is not None and abs(near - tokens) <= tokens * 0.1 else None,
            }
        )
    return out


def complete(model_dir: Path, prompt: str, max_new_tokens: int) -> str:
    """Greedy completion of ``prompt`` by the exported model, cut at HumanEval's stop sequences."""
    import torch

    from textbooks.checkpoint import load_pretrained
    from textbooks.eval.prompts import stop_sequences, truncate

    model, enc = load_pretrained(model_dir)
    ids = torch.tensor([enc.encode_ordinary(prompt)])
    out = model.generate(ids, max_new_tokens)[0].tolist()
    return truncate(enc.decode(out), stop_sequences("humaneval"))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="demo")
@cli_errors
def main(cfg: DictConfig) -> None:
    work = Path(cfg.workdir).resolve()
    common = [f"paths.root={work}", "tokenizer=bpe", f"tokenizer.vocab_size={cfg.vocab_size}"]
    t0 = time.time()
    print(f"textbooks demo: everything goes to {work}")
    sh([_bin("textbooks-data"), "stage=tokenizer", *common])
    sh([_bin("textbooks-data"), "stage=pack", "stage.component=stdlib", *common])
    run_name = f"pretrain-stdlib-{cfg.model}-{format_count(cfg.tokens)}-s{cfg.seed}"
    sh(
        [
            _bin("textbooks-train"),
            *common,
            "dataset=stdlib",
            f"model={cfg.model}",
            f"train.tokens={cfg.tokens}",
            f"seed={cfg.seed}",
            "experiment=cpu",
            "logger=[csv,wandb]",
        ]
    )
    run_dir = work / "runs" / run_name

    print(f"\nLoss curve of {run_dir.name} (nats/token):")
    print(f"  {'tokens':>8}  {'train':>6}  {'val':>6}")
    for p in loss_curve(run_dir / "metrics.csv"):
        val = f"{p['val_loss']:6.3f}" if p["val_loss"] is not None else "     -"
        print(f"  {format_count(p['tokens']):>8}  {p['train_loss']:6.3f}  {val}")
    print("\nGreedy completion of a HumanEval-style prompt:")
    print(cfg.prompt + complete(run_dir / "model", cfg.prompt, cfg.max_new_tokens))
    print(f"\nRun directory: {run_dir}  (metrics.csv, checkpoints/, model/, wandb/ offline run)")
    print(f"Demo finished in {time.time() - t0:.0f} s.")


if __name__ == "__main__":
    main()
