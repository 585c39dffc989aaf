"""The contamination report: per-item scores, per-problem closest items, and ``report.md``.

``scores.parquet`` holds, per item, its best score of each measure and the problem it was measured against;
``closest.parquet``/``closest.csv`` list each problem's closest items by each measure with all three scores;
``report.md`` gives the items and problems at the paper's τ values, what was pruned and why, and the closest
pairs by AST match, docstring n-grams and embedding.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from textbooks.data.engine.parquet import write_table
from textbooks.data.text.contamination import BENCHMARKS, PAPER_TAUS, Problem, Scores
from textbooks.io import write_bytes_atomic

SCORE_COLUMNS = [
    ("ast_match", pa.float32()),
    ("ast_problem", pa.string()),
    ("embed_distance", pa.float32()),
    ("embed_problem", pa.string()),
    ("ngram_doc", pa.int32()),
    ("ngram_doc_frac", pa.float32()),
    ("ngram_code", pa.int32()),
    ("ngram_code_frac", pa.float32()),
    ("ngram_problem", pa.string()),
]
CLOSEST_SCHEMA = pa.schema(
    [
        ("benchmark", pa.string()),
        ("task_id", pa.string()),
        ("item_id", pa.string()),
        ("item_source", pa.string()),
        ("selected_by", pa.string()),
        ("ast_match", pa.float32()),
        ("embed_distance", pa.float32()),
        ("ngram_doc", pa.int32()),
        ("ngram_doc_frac", pa.float32()),
        ("ngram_code", pa.int32()),
        ("ngram_code_frac", pa.float32()),
    ]
)


def scores_table(s: Scores, ids: list[str], sources: list[str], problems: list[Problem]) -> pa.Table:
    """Per item: its best score of each measure and the problem it was measured against."""

    def name(idx: np.ndarray) -> list[str | None]:
        return [problems[i].task_id if i >= 0 else None for i in idx]

    def opt(a: np.ndarray) -> list[float | None]:
        return [None if np.isnan(x) else float(x) for x in a]

    return pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "source": pa.array(sources, pa.string()),
            "ast_match": pa.array(opt(s.ast_match), pa.float32()),
            "ast_problem": pa.array(name(s.ast_problem), pa.string()),
            "embed_distance": pa.array(opt(s.embed_distance), pa.float32()),
            "embed_problem": pa.array(name(s.embed_problem), pa.string()),
            "ngram_doc": pa.array(s.ngram_doc, pa.int32()),
            "ngram_doc_frac": pa.array(s.ngram_doc_frac, pa.float32()),
            "ngram_code": pa.array(s.ngram_code, pa.int32()),
            "ngram_code_frac": pa.array(s.ngram_code_frac, pa.float32()),
            "ngram_problem": pa.array(name(s.ngram_problem), pa.string()),
        }
    )


def closest_table(s: Scores, ids: list[str], sources: list[str]) -> pa.Table:
    rows = [
        {k: r[k] for k in CLOSEST_SCHEMA.names if k in r}
        | {"item_id": ids[r["item"]], "item_source": sources[r["item"]]}
        for r in s.closest
    ]
    return pa.Table.from_pylist(rows, schema=CLOSEST_SCHEMA)


def pair_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| problem | item | source | τ | embedding L2 | docstring n-grams | code n-grams |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        emb = "" if r["embed_distance"] is None else f"{r['embed_distance']:.3f}"
        tau = "" if r["ast_match"] is None else f"{r['ast_match']:.3f}"
        src = str(r["item_source"])
        src = src if len(src) <= 48 else "…" + src[-47:]
        lines.append(
            f"| {r['task_id']} | {r['item_id']} | {src} | {tau} | {emb} | {r['ngram_doc']} "
            f"({r['ngram_doc_frac']:.0%}) | {r['ngram_code']} ({r['ngram_code_frac']:.0%}) |"
        )
    return lines


def markdown(
    cfg: Any,
    problems: list[Problem],
    scores: pa.Table,
    closest: pa.Table,
    counts: dict,
    notes: list[str],
) -> str:
    """``report.md``: items and problems at the paper's τ values, what was pruned, the closest pairs."""
    tau = np.array([-1.0 if x is None else x for x in scores.column("ast_match").to_pylist()])
    pairs = closest.to_pylist()
    best_of_problem: dict[str, float] = {}
    for r in pairs:
        best_of_problem[r["task_id"]] = max(best_of_problem.get(r["task_id"], 0.0), r["ast_match"] or 0.0)
    per_bench = ", ".join(
        f"{b} ({n} problems)" for b in BENCHMARKS if (n := sum(p.benchmark == b for p in problems))
    )
    lines = [
        "# Contamination report",
        "",
        f"Training items: {counts['items']} from {', '.join(map(str, cfg.inputs))}.",
        f"Benchmarks: {per_bench}.",
        f"Measures: {cfg.ngram}-gram overlap, embedding distance ({counts.get('embedder') or 'off'}), "
        f"AST match rate τ (unit: {cfg.ast_unit}; τ below {cfg.ast_min_report} reported as 0).",
        *(f"Note: {n}" for n in notes),
        "",
        "## Items and problems at each τ",
        "",
        "| τ | items with AST match ≥ τ | problems with such an item |",
        "| --- | --- | --- |",
    ]
    for t in sorted({*PAPER_TAUS, *([cfg.tau] if cfg.tau is not None else [])}, reverse=True):
        n_problems = sum(v >= t for v in best_of_problem.values())
        lines.append(f"| {t} | {int(np.sum(tau >= t))} | {n_problems} |")
    lines += [
        "",
        f"Pruned: {counts['removed']} items ({counts['removed_tokens']} of {counts['tokens']} tokens, counted "
        f"with {counts['token_counter']}); by reason: {counts['removed_by']}. Rules: τ ≥ {cfg.tau}, embedding "
        f"distance ≤ {cfg.max_embed_distance}, docstring {cfg.ngram}-grams ≥ {cfg.min_ngram_overlap}.",
        "",
        "## Closest pairs by AST match",
        "",
        *pair_table(sorted(pairs, key=lambda r: (-(r["ast_match"] or 0), r["task_id"]))[:20]),
    ]
    shared = [r for r in pairs if r["ngram_doc"] > 0]
    lines += ["", f"## Docstring {cfg.ngram}-gram overlaps ({len(shared)} pairs)", ""]
    lines += (
        pair_table(sorted(shared, key=lambda r: (-r["ngram_doc_frac"], r["task_id"]))[:20]) if shared else []
    )
    near = [r for r in pairs if r["embed_distance"] is not None]
    if near:
        lines += ["", "## Closest pairs by embedding", ""]
        lines += pair_table(sorted(near, key=lambda r: (r["embed_distance"], r["task_id"]))[:20])
    lines += [
        "",
        "Every problem's closest items: closest.csv / closest.parquet; every item: scores.parquet.",
        "",
    ]
    return "\n".join(lines)


def write_report(
    report: Path,
    cfg: Any,
    problems: list[Problem],
    scores: pa.Table,
    closest: pa.Table,
    counts: dict[str, Any],
    notes: list[str],
) -> None:
    """``report/``: scores.parquet, closest.parquet, closest.csv and report.md."""
    write_table(report / "scores.parquet", scores)
    write_table(report / "closest.parquet", closest)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CLOSEST_SCHEMA.names)
    w.writeheader()
    w.writerows(closest.to_pylist())
    write_bytes_atomic(report / "closest.csv", buf.getvalue().encode())
    write_bytes_atomic(report / "report.md", markdown(cfg, problems, scores, closest, counts, notes).encode())
