"""MBPP (Austin et al. 2021, google-research ``mbpp.jsonl``, 974 problems) and sanitized MBPP
(``sanitized-mbpp.json``, 427): a task in words and three asserts.

* Loaders: the shipped copies (or ``path``, a ``data_dir``, or the HF hub with ``hub=True``); splits are
  task-id ranges (google-research/mbpp README): ``prompt`` 1-10, ``test`` 11-510, ``validation`` 511-600,
  ``train`` 601-974, ``all``. Task ids are ``Mbpp/<n>`` (evalplus's spelling); a bare number is accepted.
* Prompt formats:

  * ``mbpp-0shot`` (the default): bigcode-evaluation-harness's MBPP prompt (InCoder style), a docstring
    holding the task and its first test, ``\"\"\"\\n{text}\\n{test_list[0]}\\n\"\"\"\\n``; code = prompt +
    completion. Stops are bigcode's: ``\\nclass``, ``\\nassert``, ``\\n\"\"\"``, ``\\nprint``, ``\\nif``,
    ``\\n<|/``, ``\\n```\\```.
  * ``mbpp-3shot``: the original MBPP paper's prompt: tasks 2, 3, 4 as examples, each ``You are an expert
    Python programmer, and here is your task: {text} Your code should pass these tests:\\n\\n{tests}\\n[BEGIN]
    \\n{code}\\n[DONE]``, then the task itself up to ``[BEGIN]\\n``; code = the completion alone. Stops at
    ``[DONE]``.

* Programs (what is executed; see ``textbooks.sandbox.Program``): MBPP: setup = code + ``test_setup_code``,
  tests = the ``test_list`` asserts one by one (+ ``challenge_test_list`` with ``include_challenge=True``);
  sanitized MBPP: setup = code + its ``test_imports``, tests = ``test_list``.
* Reference program: ``canonical_solution`` (the whole code); gold bits per byte score it with ``\\n``
  line ends after the prompt. Decontamination compares the task's text and the code.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
from collections.abc import Sequence
from typing import Any

from textbooks.benchmarks.family import Family, PromptFormat, register
from textbooks.benchmarks.files import DataFile, read_jsonl
from textbooks.benchmarks.problems import BenchmarkError, Problem, ProblemSet
from textbooks.sandbox import Program

MBPP_SPLITS: dict[str, tuple[int, int]] = {
    "prompt": (1, 10),
    "test": (11, 510),
    "validation": (511, 600),
    "train": (601, 974),
    "all": (1, 10**9),
}
HF_MBPP_REPO = "google-research-datasets/mbpp"
MBPP_STOP: tuple[str, ...] = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n<|/", "\n```")
MBPP_FEWSHOT_STOP: tuple[str, ...] = ("[DONE]",)
MBPP_FEWSHOT_IDS: tuple[int, ...] = (2, 3, 4)
MBPP_0SHOT = PromptFormat("mbpp-0shot", MBPP_STOP)
MBPP_3SHOT = PromptFormat("mbpp-3shot", MBPP_FEWSHOT_STOP, continues_prompt=False, few_shot=True)


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


def _fewshot_block(problem: Problem, code: str | None = None) -> str:
    block = (
        f"You are an expert Python programmer, and here is your task: {problem.text} "
        "Your code should pass these tests:\n\n" + "\n".join(problem.test_list) + "\n[BEGIN]\n"
    )
    return block if code is None else block + code.replace("\r\n", "\n").strip("\n") + "\n[DONE]\n"


def mbpp_fewshot_examples(problems: ProblemSet) -> tuple[Problem, ...]:
    """Tasks 2, 3 and 4 from an MBPP set loaded with ``split="prompt"`` (or ``"all"``)."""
    ids = [f"Mbpp/{i}" for i in MBPP_FEWSHOT_IDS]
    missing = [i for i in ids if i not in problems]
    if missing:
        raise BenchmarkError(
            f"3-shot MBPP needs tasks {', '.join(ids)} but {problems.info.label} lacks {', '.join(missing)}; "
            'load the examples with load_mbpp(path, split="prompt")'
        )
    return tuple(problems[i] for i in ids)


def mbpp_fewshot_prompt(problem: Problem, examples: Sequence[Problem]) -> str:
    """The MBPP paper's 3-shot prompt: each example with its code in ``[BEGIN]...[DONE]``, then the task."""
    return "".join(_fewshot_block(e, e.canonical_solution) for e in examples) + _fewshot_block(problem)


class Mbpp(Family):
    """MBPP and sanitized MBPP: see the module docstring."""

    names = ("mbpp", "mbpp-sanitized")
    files = (
        DataFile("mbpp", "mbpp.jsonl", "ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f"),
        DataFile(
            "mbpp-sanitized",
            "sanitized-mbpp.json",
            "8ac32b2799150228e2d745aed09c870b7e4444246d4727d1004576207ef40769",
        ),
    )
    formats = (MBPP_0SHOT, MBPP_3SHOT)
    base = "mbpp"
    id_prefix = "Mbpp"

    def load(
        self,
        name: str,
        path: str | os.PathLike | None = None,
        split: str | None = None,
        *,
        data_dir: str | os.PathLike | None = None,
        hub: bool = False,
    ) -> ProblemSet:
        if path is None and data_dir is not None and not hub:
            path = self.file(name, data_dir=data_dir)
        loader = load_mbpp if name == "mbpp" else load_mbpp_sanitized
        return loader(path, split or "test", hub=hub)

    def zero_shot_prompt(self, problem: Problem) -> str:
        """bigcode's 0-shot MBPP prompt."""
        return f'"""\n{problem.text}\n{problem.test_list[0]}\n"""\n'

    def prompt(self, problem: Problem, fmt: PromptFormat, examples: Sequence[Problem] = ()) -> str:
        if fmt == MBPP_0SHOT:
            return self.zero_shot_prompt(problem)
        if len(examples) == 0:
            raise BenchmarkError(
                "mbpp-3shot: pass examples=mbpp_fewshot_examples(load_mbpp(path, split='prompt'))"
            )
        return mbpp_fewshot_prompt(problem, examples)

    def examples(
        self,
        name: str,
        fmt: PromptFormat,
        path: str | os.PathLike | None = None,
        *,
        data_dir: str | os.PathLike | None = None,
        hub: bool = False,
    ) -> tuple[Problem, ...]:
        """Tasks 2, 3 and 4 of the benchmark's ``prompt`` split (3-shot)."""
        return mbpp_fewshot_examples(self.load(name, path, "prompt", data_dir=data_dir, hub=hub))

    def program(self, problem: Problem, code: str, *, include_challenge: bool = False) -> Program:
        parts = [code]
        if problem.test_setup_code.strip():
            parts.append(problem.test_setup_code)
        if problem.test_imports:
            parts.append("\n".join(problem.test_imports))
        tests = problem.test_list + (problem.challenge_test_list if include_challenge else ())
        return Program(setup="\n".join(parts) + "\n", tests=tests, entry_point=problem.entry_point or None)


FAMILY = register(Mbpp())


def load_mbpp(path: str | os.PathLike | None = None, split: str = "test", *, hub: bool = False) -> ProblemSet:
    """Original MBPP (google-research ``mbpp.jsonl``: ``path``, else the HF hub with ``hub``, else the
    shipped copy); ``split`` by task-id range (test = 11-510)."""
    lo, hi = _check_split(split)
    sha: str | None
    if path is None and hub:
        rows, source = _mbpp_rows_from_hub("full", split)
        sha = None
    else:
        p, source, sha = FAMILY.data_file("mbpp").source(path)
        rows = read_jsonl(p)
    problems = [_mbpp_problem(r, "mbpp") for r in rows if lo <= int(r["task_id"]) <= hi]
    return FAMILY.problem_set("mbpp", split, source, sha, problems)


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
        p, source, sha = FAMILY.data_file("mbpp-sanitized").source(path)
        try:
            rows = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BenchmarkError(f"cannot read benchmark file {p}: {e}") from e
    problems = [_mbpp_problem(r, "mbpp-sanitized") for r in rows if lo <= int(r["task_id"]) <= hi]
    return FAMILY.problem_set("mbpp-sanitized", split, source, sha, problems)
