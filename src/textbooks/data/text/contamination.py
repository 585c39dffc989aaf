"""How close a training item is to a benchmark problem: the paper's three measures, per (item, problem) pair.

* **13-gram overlap**: word n-grams (``\\w+`` tokens, lower-cased) of the problem's docstring (its family's
  ``statement``: HumanEval's entry-point docstring, MBPP's text) and, separately, of its code, found in the
  item's text.
  Reported as counts of distinct shared n-grams and as fractions of the problem's n-grams.
* **embedding distance**: L2 distance between normalised embeddings (``textbooks.data.text.embeddings``), in [0, 2].
* **AST match rate** τ = 1 − normalised edit distance between the two programs' syntax trees with names,
  comments and docstrings removed (``textbooks.data.text.similarity``); an item is compared as a whole and,
  with ``ast_unit=functions``, function by function (max over its units).

``Scorer`` reduces the pairs of a batch of items to per-item bests and per-problem top-k candidates, which
merge across batches and across shards (``merge_tops``, ``closest_rows``) into the same result.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from textbooks.benchmarks import Problem as BenchmarkProblem
from textbooks.benchmarks import family_of, load_benchmark
from textbooks.data.engine.reader import batched
from textbooks.data.text.similarity import NgramIndex, ast_match_matrix, ast_units
from textbooks.errors import ConfigError

MEASURES = ("ast", "embedding", "ngram")
PAPER_TAUS = (0.95, 0.9, 0.85, 0.8)
BENCHMARKS = ("humaneval", "mbpp")  # what decontamination measures against (the families' ``base``)


# -- benchmark problems ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One benchmark problem as the measures see it (its family says what each field holds)."""

    benchmark: str  # the original benchmark: humaneval, mbpp
    task_id: str
    docstring: str  # natural-language statement: HumanEval's docstring, MBPP's text
    code: str  # the whole reference program (HumanEval: prompt + canonical solution)
    text: str  # what gets embedded: the program (HumanEval, whose prompt holds the docstring), or text + code


def measured(problems: Iterable[BenchmarkProblem]) -> list[Problem]:
    """Benchmark problems (``textbooks.benchmarks``) as the measures see them."""
    out = []
    for p in problems:
        family = family_of(p.benchmark)
        code = family.reference_code(p).replace("\r\n", "\n")
        out.append(Problem(family.base, p.task_id, family.statement(p), code, family.contamination_text(p)))
    return out


def benchmark_problems(
    name: str,
    path: str | Path | None = None,
    task_ids: list[int] | None = None,
    data_dir: str | Path | None = None,
) -> list[Problem]:
    """Benchmark ``name``'s problems whose task number is in ``task_ids``, an inclusive [first, last] (all
    if null), from ``path``, else ``data_dir``'s file, else the copy shipped in ``textbooks.benchmarks``."""
    if task_ids and len(task_ids) != 2:
        raise ConfigError(f"{name}_task_ids={task_ids}: give an inclusive range [first, last] or null")
    problems = list(load_benchmark(name, path, "all", data_dir=data_dir))
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
        problem_embeddings: np.ndarray | None = None,
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
        self.prob_emb = (
            None
            if embedder is None
            else problem_embeddings
            if problem_embeddings is not None
            else embedder.embed([p.text for p in problems])
        )
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
            from textbooks.data.text.embeddings import l2_distances

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
        return Scores(**arrays, closest=closest_rows(self.problems, self.top_lists()))

    def top_lists(self) -> dict[str, list[list[tuple[float, int, dict[str, Any]]]]]:
        """Per measure, per problem: the k best ``(score, item, pair scores)`` (JSON-able)."""
        return {m: self.tops[m].best for m in MEASURES}


def merge_tops(
    parts: Iterable[tuple[int, dict[str, list[list[Any]]]]], n_problems: int, k: int
) -> dict[str, list[list[tuple[float, int, dict[str, Any]]]]]:
    """Top lists of several batches (``(item offset, top lists)``) as one: the k best by score, then item."""
    merged: dict[str, list[list[tuple[float, int, dict[str, Any]]]]] = {
        m: [[] for _ in range(n_problems)] for m in MEASURES
    }
    for offset, tops in parts:
        for m in MEASURES:
            for p, best in enumerate(tops[m]):
                merged[m][p].extend((float(s), offset + int(i), pair) for s, i, pair in best)
    for m in MEASURES:
        merged[m] = [sorted(b, key=lambda t: (-t[0], t[1]))[:k] for b in merged[m]]
    return merged


def closest_rows(
    problems: list[Problem], tops: dict[str, list[list[tuple[float, int, dict[str, Any]]]]]
) -> list[dict[str, Any]]:
    """Per problem, the items any measure ranks in its top k, with all pair scores and which measures."""
    closest = []
    for p, prob in enumerate(problems):
        picked: dict[int, dict[str, Any]] = {}
        for measure in MEASURES:
            for _, item, scores in tops[measure][p]:
                row = picked.setdefault(
                    item,
                    {"benchmark": prob.benchmark, "task_id": prob.task_id, "item": item, "selected_by": []}
                    | scores,
                )
                row["selected_by"].append(measure)
        for row in sorted(picked.values(), key=lambda r: (-(r["ast_match"] or 0), r["item"])):
            closest.append(row | {"selected_by": ",".join(row["selected_by"])})
    return closest


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
