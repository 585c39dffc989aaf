"""``textbooks-demo``: Figure 2.1 at CPU scale, on the code of this machine, offline (see conf/demo.yaml).

Every step is one of the library's own command lines, printed before it runs, so the demo is also a
transcript of the workflow a GPU study runs with other configs (experiments/figure_2_1/README.md).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from textbooks.cli import hydra_app
from textbooks.config import Count
from textbooks.errors import TextbooksError

TABLE_COLUMNS = [
    "run_name",
    "stage",
    "dataset",
    "seed",
    "tokens",
    "val_loss",
    "humaneval_bpb",
    "humaneval_pass@1",
]


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


def complete(model_dir: Path, prompt: str, max_new_tokens: int) -> str:
    """Greedy completion of ``prompt`` by an exported model, cut at HumanEval's stop sequences."""
    from textbooks.benchmarks import stop_sequences
    from textbooks.eval.models.decoding import GenerationConfig, TextbooksLM

    lm = TextbooksLM.from_pretrained(model_dir)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, stop=stop_sequences("humaneval"))
    return lm.generate([prompt], cfg)[0][0].text


def table(runs: pd.DataFrame) -> pd.DataFrame:
    """The printed table: one row per run, the Figure 2.1 metrics (pass@k in %, as in the figure; the
    runs table holds fractions)."""
    from textbooks.report.plots import is_percent

    cols = [c for c in TABLE_COLUMNS if c in runs]
    out = runs[cols].sort_values(["stage", "dataset", "seed"], ascending=[False, True, True])
    percent = {c: f"{c} (%)" for c in cols if is_percent(c)}
    out = out.assign(**{c: out[c] * 100.0 for c in percent}).rename(columns=percent)
    return out.reset_index(drop=True)


def run_demo(cfg: DictConfig) -> dict:
    work = Path(cfg.workdir).resolve()
    data, runs = work / "data", work / "runs"
    seeds = ",".join(str(s) for s in cfg.train.seeds)
    common = [f"paths.root={work}", "tokenizer=bpe", f"tokenizer.vocab_size={cfg.vocab_size}"]
    d = [_bin("textbooks-data"), *common]
    dx = list(cfg.data_overrides)
    t = cfg.train
    train = [_bin("textbooks-train"), "-m", *common, f"scale={t.scale}", f"seed={seeds}"]
    tx = [
        *([f"model={t.model}"] if t.model else []),
        *([f"scale.tokens={t.tokens}"] if t.tokens else []),
        *t.overrides,
    ]
    corpus = "[" + ",".join(str(c) for c in cfg.corpus) + "]"
    benchmarks = [f"paths.benchmarks={Path(cfg.benchmarks).resolve()}"] if cfg.benchmarks else []
    print(f"textbooks demo: Figure 2.1 at CPU scale; everything goes to {work}")

    # data: raw code -> dedup -> labels -> token shards of The Stack+
    sh([*d, "stage=ingest", f"stage.inputs={corpus}", *dx])
    sh([*d, "stage=dedup", *dx])
    sh([*d, "stage=tokenizer", f"stage.inputs=[{data / 'dedup'}]", *dx])
    sh([*d, "stage=annotate", "stage.annotator=heuristic", f"stage.sample_size={cfg.annotate_sample}", *dx])
    sh([*d, "stage=pack", "stage.component=stack_plus", *dx])

    middle = synthetic_data(cfg, d, dx, data, benchmarks)

    # pretraining on The Stack+, whose model then embeds the corpus for the quality classifier
    sh([*train, "experiment=demo", "dataset=stack_plus", *tx])
    embedder = cfg.embedder
    if embedder == "pretrained":
        first = [
            *common,
            f"scale={t.scale}",
            f"seed={t.seeds[0]}",
            "experiment=demo",
            "dataset=stack_plus",
            *tx,
        ]
        embedder = f"textbooks:{run_dir(first) / 'model'}"
    sh([*d, "stage=classify", f"stage.embedder={embedder}", *dx])
    sh([*d, "stage=pack", "stage.component=filtered", *dx])
    sh([*train, "experiment=demo", f"dataset={middle}", *tx])
    base = f"pretrain-{middle}-${{model.name}}-${{human:${{scale.tokens}}}}-s${{seed}}"  # per seed, by Hydra
    init = f"train.init_from='${{paths.runs}}/${{sweep_name}}/{base}/model'"
    sh([*train, "experiment=demo_finetune", *tx, f"train.tokens={t.finetune_tokens}", init])

    # evaluation of every model, then one table and the figure
    models = sorted(str(p) for p in (runs / "demo").glob("*/model") if p.is_dir())
    ev = [
        f"paths.root={work}",
        f"benchmark={cfg.eval_benchmark}",
        "bpb=true",
        f"generation.max_new_tokens={cfg.eval_max_new_tokens}",
        f"hydra.sweep.dir={work / 'logs' / 'eval'}",
    ]
    if cfg.eval_limit:
        ev.append(f"limit={cfg.eval_limit}")
    sh([_bin("textbooks-eval"), "-m", f"checkpoint={','.join(models)}", *ev, *cfg.eval_overrides])
    sh([_bin("textbooks-collect"), str(runs / "demo"), f"out={work}"])
    return report(cfg, work)


def documents(stage_dir: Path) -> int:
    """Documents a finished stage wrote (its manifest's count)."""
    from textbooks.data.engine.manifest import read_manifest

    manifest = read_manifest(stage_dir)
    if manifest is None:
        raise TextbooksError(
            f"{stage_dir} has no readable manifest.json: rerun `make demo` to finish that stage"
        )
    return int(manifest["documents"])


def bar_labels(data: Path) -> dict[str, str]:
    """The demo's datasets named by what they hold: how many synthetic sections, mined and synthetic exercises
    survived their checks and decontamination (read from the stage outputs, so a rerun labels the same)."""
    from textbooks.data.engine.parquet import part_files, read_table
    from textbooks.data.stages.decontaminate import DecontaminateConfig

    labels = {}
    textbooks = data / "textbooks-decontaminated"
    if (textbooks / "manifest.json").is_file():
        labels["codetextbook"] = f"Filtered code + {documents(textbooks)} textbook sections"
    exercises = data / f"decontaminated-tau{DecontaminateConfig.tau}"
    if part_files(exercises):
        n = read_table(exercises, columns=["source"]).column("source").to_pandas().value_counts()
        labels["codeexercises"] = f"{n.get('mined', 0)} mined + {n.get('synthetic', 0)} synthetic exercises"
    return labels


def servers(syn: DictConfig, n: int) -> list[str]:
    """``stage.n=n`` split into one part per server, each a task of its own running at once: a local model's
    task starts its own server, so this is one server per core (each decodes on one thread, and two such
    servers make twice the tokens of one, where one server on two threads stalls whenever a thread loses its
    core: benchmarks/README.md)."""
    from textbooks.sandbox.pool import default_workers

    k = max(1, min(int(syn.servers or default_workers()), n))
    return [
        f"stage.n={n}",
        f"stage.requests_per_part={-(-n // k)}",
        f"executor.tasks={k}",
        f"executor.workers={k}",
    ]


def synthetic_data(cfg: DictConfig, d: list[str], dx: list[str], data: Path, benchmarks: list[str]) -> str:
    """Textbook sections and exercises from a real model, checked in the sandbox, exercises mined from the
    corpus, all decontaminated and packed; returns the middle bar's dataset (``codetextbook``, or
    ``filtered`` when no section survived)."""
    syn = cfg.synthetic
    llm = [f"llm={syn.llm}"]
    exercises = [data / "exercises"]
    if syn.textbook_sections:
        n, tokens = syn.textbook_sections, syn.textbook_max_tokens
        sh([*d, "stage=textbooks", *llm, *servers(syn, n), f"stage.sampling.max_tokens={tokens}", *dx])
    if syn.exercises:
        exercises.append(data / "exercises-synthetic")
        sh(
            [
                *d,
                "stage=exercises",
                "stage.source=synthetic",
                *llm,
                *servers(syn, syn.exercises),
                f"stage.sampling.max_tokens={syn.exercise_max_tokens}",
                f"stage.rederive={str(bool(syn.rederive)).lower()}",
                f"stage.out_dir={exercises[-1]}",
                *dx,
            ]
        )
    sh([*d, "stage=exercises", "stage.source=mined", f"stage.input={data / 'dedup'}", *dx])
    decontam = [*d, "stage=decontaminate", *benchmarks]
    measure = f"stage.embedder={cfg.decontam_embedder or 'null'}"
    sh([*decontam, measure, f"stage.inputs=[{','.join(map(str, exercises))}]", *dx])
    sh([*d, "stage=pack", "stage.component=exercises", *dx])
    sections = documents(data / "textbooks") if syn.textbook_sections else 0
    if sections:  # the sections' code against the benchmarks' solutions: AST match and 13-grams
        clean = data / "textbooks-decontaminated"
        sh(
            [
                *decontam,
                "stage.embedder=null",
                f"stage.inputs=[{data / 'textbooks'}]",
                f"stage.out_dir={clean}",
                *dx,
            ]
        )
        sections = documents(clean)
    if sections:
        sh([*d, "stage=pack", "stage.component=textbooks", f"stage.components.textbooks=[{clean}]", *dx])
    middle = "codetextbook" if sections else "filtered"
    if syn.textbook_sections and not sections:
        print("\nNo textbook section passed its checks: the middle bar is filtered code only.", flush=True)

    return middle


def run_dir(overrides: list[str]) -> Path:
    """Where ``textbooks-train -m <overrides>`` puts its run (the run name composed by Hydra itself)."""
    from hydra import compose

    from textbooks.train.config import register

    register()  # the schema conf/train.yaml starts with
    c = compose("train", overrides=overrides)
    return Path(c.paths.runs) / c.sweep_name / c.run_name


def report(cfg: DictConfig, work: Path) -> dict:
    """Print the runs table, draw Figure 2.1 and the loss curves, from the tables textbooks-collect wrote."""
    from textbooks.report.plots import bars_table, plot_curves, plot_figure_2_1

    runs = pd.read_parquet(work / "runs.parquet")
    curves = pd.read_parquet(work / "curves.parquet")
    metrics = tuple(m for m in (f"{cfg.eval_benchmark}_pass@1", f"{cfg.eval_benchmark}_bpb") if m in runs)
    labels = bar_labels(work / "data")
    models = ", ".join(dict.fromkeys(runs["model"].dropna().astype(str)))  # what ran (train.model overrides)
    fig = plot_figure_2_1(runs, metrics, title=f"Figure 2.1 at CPU scale ({models})", labels=labels)
    fig.savefig(work / "figure_2_1.png", dpi=120)
    plot_curves(curves, runs, ("train/loss", "val/loss", "eval/humaneval_bpb")).savefig(
        work / "curves.png", dpi=110
    )
    bars = pd.concat([bars_table(runs, m, labels).assign(metric=m) for m in metrics], ignore_index=True)
    bars.to_csv(work / "figure_2_1.csv", index=False)

    pd.set_option("display.width", 160)
    pd.set_option("display.max_columns", 20)
    print(f"\nRuns (from {work / 'runs.csv'}):")
    print(table(runs).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print("\nFigure 2.1 bars (pass@1 in %, bits/byte: lower is better):")
    print(
        bars[["metric", "group", "bar", "mean", "std", "n"]].to_string(
            index=False, float_format=lambda v: f"{v:.4g}"
        )
    )
    finetuned = runs[(runs["stage"] == "finetune") & (runs["status"] == "complete")]
    if len(finetuned):
        model_dir = Path(finetuned.iloc[0]["run_dir"]) / "model"
        print(f"\nGreedy completion by {finetuned.iloc[0]['run_name']}:")
        print(cfg.prompt + complete(model_dir, cfg.prompt, 96).rstrip())
    print(f"\nFigure: {work / 'figure_2_1.png'}   curves: {work / 'curves.png'}")
    print(
        "At this scale the bars measure a few million tokens of training; the paper's effect (filtered and\n"
        "synthetic data >> raw code, then a large jump from CodeExercises) needs the GPU runs of\n"
        "experiments/figure_2_1. Read the bits/byte panel first: pass@1 of tiny models is mostly 0."
    )
    return {"runs": runs, "bars": bars}


@hydra_app(
    "demo",
    types={
        "eval_limit": int | None,
        "train.tokens": Count | None,
        "train.finetune_tokens": Count,
        "train.model": str | None,
        "synthetic.servers": int | None,
    },
)
def main(cfg: DictConfig) -> None:
    t0 = time.time()
    run_demo(cfg)
    print(f"Demo finished in {time.time() - t0:.0f} s.")


if __name__ == "__main__":
    main()
