"""What a benchmark is made of: problems, the set of them a split holds, and where it was read from."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from textbooks.errors import TextbooksError


class BenchmarkError(TextbooksError):
    """A benchmark cannot be loaded (missing file, bad name or split, unknown task id)."""


@dataclass(frozen=True)
class Problem:
    """One benchmark problem. HumanEval fields keep their meaning; MBPP fills the MBPP ones too.

    ``prompt`` is the benchmark's own prompt: HumanEval's code prompt, MBPP+'s docstring prompt, the task
    description for MBPP and sanitized MBPP (``build_prompt`` makes the model prompts, by the family's rules).
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

    name: str  # a registered benchmark (``family.benchmark_names``)
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
    """Problems of one benchmark split, by task id, in task order; ``id_prefix`` (MBPP: ``Mbpp``) lets a
    samples file name a task by its number."""

    info: BenchmarkInfo
    problems: dict[str, Problem]
    id_prefix: str | None = None

    def __len__(self) -> int:
        return len(self.problems)

    def __iter__(self) -> Iterator[Problem]:
        return iter(self.problems.values())

    def __getitem__(self, task_id: str) -> Problem:
        return self.problems[task_id]

    def __contains__(self, task_id: object) -> bool:
        return task_id in self.problems

    def resolve(self, task_id: Any) -> str | None:
        """The task id a samples file means (MBPP: ``11``, ``"11"``, ``"MBPP/11"`` → ``"Mbpp/11"``), or
        None."""
        if isinstance(task_id, str) and task_id in self.problems:
            return task_id
        if self.id_prefix is not None:
            s = str(task_id).rsplit("/", 1)[-1].strip()
            if s.isdigit() and f"{self.id_prefix}/{int(s)}" in self.problems:
                return f"{self.id_prefix}/{int(s)}"
        return None
