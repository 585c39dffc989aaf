"""Heuristic vs LLM educational-value labels on the same sample: how often they agree, and what each does to the
quality classifier trained on it.

The demo labels its sample with the offline heuristic (``stage.annotator=heuristic``) because the models that
install here (``llm=local``: Qwen2.5-Coder-0.5B-Instruct; ``local_large``: 1.5B; ``local_tiny``: SmolLM2-135M)
are small. This script measures that choice instead of assuming it: it runs the library's own commands on the demo's corpus (the standard library, deduplicated),

1. ``stage=annotate`` twice on the same seeded sample: the heuristic, and the rubric prompt answered by the
   local model (each answer must end with ``Educational score: N``; unparseable answers are counted);
2. ``stage=classify`` once per labelling (MiniLM embeddings, the random forest, its held-out split);

and prints one Markdown table: label agreement and Cohen's kappa on the documents both labelled, the rank
correlation of the 0-5 scores, each classifier's held-out F1 against its own labels, the fraction of the
corpus each keeps, and how much the two kept sets overlap.

Usage: ``python experiments/annotation/measure.py [--llm local] [--sample 300] [--workdir DIR]`` (about 10 minutes
on 2 cores with the 0.5B model).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import cohen_kappa_score

from textbooks.data.engine.manifest import read_manifest
from textbooks.data.engine.parquet import read_table


def data(work: Path, *args: str) -> dict:
    """One ``textbooks-data`` call (echoed); returns the stage's manifest."""
    cmd = [sys.executable, "-m", "textbooks.data.app", f"paths.root={work}", "progress=false", *args]
    print("$ textbooks-data " + " ".join(cmd[4:]), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    out = next(a.split("=", 1)[1] for a in args if a.startswith("stage.out_dir="))
    print(f"  ({time.time() - t0:.0f} s)", flush=True)
    manifest = read_manifest(out)
    if manifest is None:
        raise SystemExit(f"{out}: the stage finished without a readable manifest.json; rerun this script")
    return manifest


def parts(out_dir: Path, columns: list[str]) -> pd.DataFrame:
    """A stage output's rows (its part files; the manifest and failures.jsonl beside them are not data)."""
    return read_table(out_dir, columns=columns).to_pandas()


def labels(out_dir: Path) -> pd.DataFrame:
    return parts(out_dir, ["id", "score", "label"]).set_index("id")


def kept_ids(out_dir: Path) -> set[str]:
    """Documents the classifier kept (its output parts; what it dropped is in dropped/)."""
    return set(parts(out_dir, ["id"])["id"])


MIN_LABELS = 20  # fewer parsed labels than this (or one class only): no classifier is trained on them


def trainable(manifest: dict) -> bool:
    scores = manifest["documents"], manifest.get("labelled_positive", 0)
    return scores[0] >= MIN_LABELS and 0 < scores[1] < scores[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sample", type=int, default=300, help="documents labelled by each annotator")
    ap.add_argument("--max-chars", type=int, default=1500, help="characters of each document the model reads")
    ap.add_argument(
        "--max-tokens", type=int, default=160, help="tokens of each answer (reasoning, then the score)"
    )
    ap.add_argument("--llm", default="local", help="the llm preset (conf/llm) that answers the rubric prompt")
    ap.add_argument("--workdir", type=Path, default=None)
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="annotation-"))
    d = work / "data"
    data(work, "stage=ingest", f"stage.out_dir={d / 'corpus'}")
    data(work, "stage=dedup", f"stage.out_dir={d / 'dedup'}")
    sample = [f"stage.sample_size={a.sample}", f"stage.max_chars={a.max_chars}"]
    runs = {
        "heuristic": ["stage.annotator=heuristic"],
        "llm": [f"llm={a.llm}", "stage.max_failed_fraction=1.0", f"stage.sampling.max_tokens={a.max_tokens}"],
    }
    manifests, classified = {}, {}
    for name, extra in runs.items():
        out = d / f"annotate-{name}-{a.llm}-{a.max_tokens}" if name == "llm" else d / f"annotate-{name}"
        manifests[name] = data(work, "stage=annotate", *sample, *extra, f"stage.out_dir={out}")
        if trainable(manifests[name]):
            classified[name] = data(
                work,
                "stage=classify",
                f"stage.annotations={out}",
                f"stage.out_dir={d / ('filtered-' + name)}",
            )
        runs[name] = out

    h, m = labels(runs["heuristic"]), labels(runs["llm"])
    both = h.merge(m, left_index=True, right_index=True, suffixes=("_h", "_m"))
    summary: dict = {"both": len(both), "max_tokens": a.max_tokens, "llm_stats": manifests["llm"]["llm"]}
    if len(both) >= MIN_LABELS:
        summary |= {
            "agreement": float((both["label_h"] == both["label_m"]).mean()),
            "kappa": float(cohen_kappa_score(both["label_h"], both["label_m"])),
            "spearman": float(spearmanr(both["score_h"], both["score_m"]).statistic),
        }
    if len(classified) == 2:
        kh, km = kept_ids(d / "filtered-heuristic"), kept_ids(d / "filtered-llm")
        summary["kept_jaccard"] = len(kh & km) / max(len(kh | km), 1)

    def clf(key: str, fmt: str) -> list[str]:
        return [format(_get(classified[k], key), fmt) if k in classified else "no classifier" for k in runs]

    mh, mm = manifests["heuristic"], manifests["llm"]
    rows = [
        ("documents sampled", mh["sampled"], mm["sampled"]),
        ("parsed labels", mh["documents"], mm["documents"]),
        ("unparseable answers", mh["failed"], mm["failed"]),
        ("positive labels", mh.get("labelled_positive", 0), mm.get("labelled_positive", 0)),
        ("classifier held-out F1", *clf("held_out.f1", ".3f")),
        ("F1 of labelling all positive", *clf("held_out.baseline.f1_all_positive", ".3f")),
        ("corpus kept", *clf("kept_fraction", ".1%")),
    ]
    summary["rows"] = rows
    model = f"{mm['llm'].get('model') or 'the model'} (llm={a.llm})"
    print(f"\nHeuristic vs the local model's labels (rubric prompt, {a.max_tokens} tokens per answer):")
    if "agreement" in summary:
        print(
            f"on {len(both)} documents both labelled: agreement {summary['agreement']:.1%}, Cohen's kappa "
            f"{summary['kappa']:.3f}, Spearman rho of scores {summary['spearman']:.3f}"
        )
    else:
        print(f"only {len(both)} documents got a label from both (< {MIN_LABELS}): no agreement measured")
    if "kept_jaccard" in summary:
        print(f"kept sets overlap (Jaccard) {summary['kept_jaccard']:.1%}")
    print(f"\n| | heuristic | {model} |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    summary["workdir"] = str(work)
    (work / f"annotation-{a.max_tokens}.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"\n(everything is in {work})")


def _get(manifest: dict, dotted: str) -> float:
    for k in dotted.split("."):
        manifest = manifest[k]
    return float(manifest)


if __name__ == "__main__":
    main()
