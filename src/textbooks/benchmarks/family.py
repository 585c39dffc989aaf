"""A benchmark family and the registry that finds it by name: the one place the rest of the package asks
how a benchmark loads, prompts, turns a completion into code and tests it.

A family (``Family``: HumanEval, MBPP, the EvalPlus sets; evalplus's and bigcode-evaluation-harness's
idea of one task module per benchmark) owns, for each benchmark name it registers:

* ``load``: its problems, by split, from a ``path``, a ``data_dir`` or the copy shipped here (``files``);
* ``formats``: its prompt formats (``PromptFormat``: the stop sequences, and whether a completion
  continues the prompt), the first being the default; ``prompt`` writes one, ``examples`` loads the
  problems a few-shot format shows;
* ``program``: what is executed to test a solution (setup, trusted tests), and ``reference_code``, the
  benchmark's own solution as a whole program (the canonical self-check runs it);
* ``gold_solution``: the text gold-solution bits per byte are measured on, after the prompt;
* ``base`` (the original benchmark a variant derives from), ``statement`` and ``contamination_text``:
  what decontamination compares training data with.

The functions below dispatch on ``Problem.benchmark`` or a benchmark name; nothing else in the package
branches on one. Adding a benchmark is a module with a ``Family`` subclass, ``register(...)`` of it, and a
``conf/benchmark/<name>.yaml`` (``tests/test_benchmark_family.py`` does it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from textbooks.benchmarks.files import DataFile
from textbooks.benchmarks.problems import BenchmarkError, BenchmarkInfo, Problem, ProblemSet
from textbooks.sandbox import Program


@dataclass(frozen=True)
class PromptFormat:
    """How a model is prompted: generation stops at ``stop``; the code a completion stands for is prompt +
    completion, or the completion alone when the prompt is not code (``continues_prompt=False``);
    ``few_shot``: the prompt shows solved problems first (``Family.examples``)."""

    name: str
    stop: tuple[str, ...]
    continues_prompt: bool = True
    few_shot: bool = False


class Family:
    """A benchmark family: subclasses set the class attributes and override what differs."""

    names: tuple[str, ...] = ()  # the benchmarks it loads (``load_benchmark``'s names)
    files: tuple[DataFile, ...] = ()  # each benchmark's file (shipped copies carry their sha256)
    formats: tuple[PromptFormat, ...] = ()  # the prompt formats it takes; the first is the default
    base: str = ""  # the original benchmark (decontamination measures against it): humaneval, mbpp
    id_prefix: str | None = None  # a bare number in a samples file means task f"{id_prefix}/{n}"

    def load(
        self,
        name: str,
        path: str | os.PathLike | None = None,
        split: str | None = None,
        *,
        data_dir: str | os.PathLike | None = None,
        hub: bool = False,
    ) -> ProblemSet:
        """Benchmark ``name``'s problems of ``split``: from ``path``, else ``data_dir``, else the shipped
        copy."""
        raise NotImplementedError

    def data_file(self, name: str) -> DataFile:
        """Benchmark ``name``'s entry in ``files``."""
        return next(f for f in self.files if f.name == name)

    def file(
        self, name: str, path: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None
    ) -> Path:
        """The file ``load`` reads ``name`` from (not from a hub)."""
        return self.data_file(name).find(path, data_dir)

    def prompt(self, problem: Problem, fmt: PromptFormat, examples: Sequence[Problem] = ()) -> str:
        """The prompt a model completes (default: the problem's own prompt)."""
        return problem.prompt

    def examples(
        self,
        name: str,
        fmt: PromptFormat,
        path: str | os.PathLike | None = None,
        *,
        data_dir: str | os.PathLike | None = None,
        hub: bool = False,
    ) -> tuple[Problem, ...]:
        """The solved problems a few-shot ``fmt`` shows (none for a zero-shot one)."""
        return ()

    def completion_code(self, problem: Problem, completion: str, fmt: PromptFormat) -> str:
        """The code a completion stands for."""
        return self.prompt(problem, fmt) + completion if fmt.continues_prompt else completion

    def program(self, problem: Problem, code: str, *, include_challenge: bool = False) -> Program:
        """The program that tests ``code`` (a whole solution) with the problem's own tests."""
        raise NotImplementedError

    def reference_code(self, problem: Problem) -> str:
        """The benchmark's reference solution as a whole program."""
        return problem.canonical_solution

    def gold_solution(self, problem: Problem) -> str:
        """What gold bits per byte score after the prompt: the reference code, ``\\n`` line ends."""
        return problem.canonical_solution.replace("\r\n", "\n")

    def statement(self, problem: Problem) -> str:
        """The problem in words (decontamination's n-gram measure on docstrings)."""
        return problem.text

    def contamination_text(self, problem: Problem) -> str:
        """What the embedding measure compares with a training item: statement and reference code."""
        code = self.reference_code(problem).replace("\r\n", "\n")
        return f"{self.statement(problem)}\n{code}"

    def problem_set(
        self, name: str, split: str, source: str, sha: str | None, problems: list[Problem]
    ) -> ProblemSet:
        """``problems`` in task order, as ``load`` returns them."""
        problems.sort(key=lambda p: p.number)
        info = BenchmarkInfo(name=name, split=split, source=source, sha256=sha, n_problems=len(problems))
        return ProblemSet(info, {p.task_id: p for p in problems}, self.id_prefix)


def no_splits(name: str, split: str | None) -> None:
    """Refuse a split for a benchmark that has none (``None`` and ``all`` are the whole set)."""
    if split not in (None, "all"):
        raise BenchmarkError(f"{name} has no splits (got split={split!r}); leave it unset or use 'all'")


# -- the registry ----------------------------------------------------------------------------------------
_FAMILIES: dict[str, Family] = {}  # benchmark name -> its family
_FORMATS: dict[str, PromptFormat] = {}  # prompt format name -> format


def register(family: Family) -> Family:
    """Make ``family``'s benchmarks and prompt formats known by name (a name taken by another family, or a
    format of the same name with other stops, is refused)."""
    taken = [n for n in family.names if _FAMILIES.get(n, family) is not family]
    clash = [f.name for f in family.formats if _FORMATS.get(f.name, f) != f]
    if taken or clash:
        raise BenchmarkError(f"{type(family).__name__}: names already registered: {', '.join(taken + clash)}")
    for n in family.names:
        _FAMILIES[n] = family
    for f in family.formats:
        _FORMATS[f.name] = f
    return family


def unregister(family: Family) -> None:
    """Forget ``family``'s benchmarks, and the prompt formats no other family uses."""
    for n in family.names:
        if _FAMILIES.get(n) is family:
            del _FAMILIES[n]
    used = {f.name for fam in _FAMILIES.values() for f in fam.formats}
    for f in family.formats:
        if f.name not in used:
            _FORMATS.pop(f.name, None)


def benchmark_names() -> tuple[str, ...]:
    """The registered benchmarks, in registration order."""
    return tuple(_FAMILIES)


def family_of(name: str) -> Family:
    """The family of benchmark ``name``."""
    if name not in _FAMILIES:
        raise BenchmarkError(f"unknown benchmark {name!r}; use one of {', '.join(_FAMILIES)}")
    return _FAMILIES[name]


def prompt_formats() -> tuple[str, ...]:
    """The registered prompt formats."""
    return tuple(_FORMATS)


def prompt_format(name: str) -> PromptFormat:
    if name not in _FORMATS:
        raise BenchmarkError(f"unknown prompt format {name!r}; use one of {', '.join(_FORMATS)}")
    return _FORMATS[name]


# -- dispatch -------------------------------------------------------------------------------------------
def load_benchmark(
    name: str,
    path: str | os.PathLike | None = None,
    split: str | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    hub: bool = False,
) -> ProblemSet:
    """Load ``name`` from ``path``, else ``data_dir``/its usual file name, else the shipped copy (see
    ``textbooks.benchmarks``); ``split`` as the family takes it (MBPP: ``test`` by default)."""
    return family_of(name).load(name, path, split, data_dir=data_dir, hub=hub)


def benchmark_file(
    name: str, path: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None
) -> Path:
    """The file ``load_benchmark`` reads ``name`` from (not from the hub)."""
    return family_of(name).file(name, path, data_dir)


def default_format(benchmark: str) -> str:
    """The prompt format a benchmark is scored with unless told otherwise."""
    return family_of(benchmark).formats[0].name


def stop_sequences(fmt: str) -> tuple[str, ...]:
    """Where generation stops for prompt format ``fmt``."""
    return prompt_format(fmt).stop


def truncate(completion: str, stops: Sequence[str]) -> str:
    """``completion`` cut at the earliest occurrence of any stop sequence (unchanged if none occurs)."""
    cut = min((i for s in stops if s and (i := completion.find(s)) >= 0), default=len(completion))
    return completion[:cut]


def _applied(benchmark: str, fmt: str | None, task: str = "") -> tuple[Family, PromptFormat]:
    family = family_of(benchmark)
    chosen = prompt_format(fmt) if fmt is not None else family.formats[0]
    if chosen not in family.formats:
        where = f" ({task})" if task else ""
        raise BenchmarkError(f"prompt format {chosen.name!r} does not apply to {benchmark}{where}")
    return family, chosen


def few_shot_examples(
    name: str,
    fmt: str,
    path: str | os.PathLike | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    hub: bool = False,
) -> tuple[Problem, ...]:
    """The problems prompt format ``fmt`` shows before each of benchmark ``name``'s (none if zero-shot)."""
    family, chosen = _applied(name, fmt)
    if not chosen.few_shot:
        return ()
    return family.examples(name, chosen, path, data_dir=data_dir, hub=hub)


def build_prompt(problem: Problem, fmt: str | None = None, examples: Sequence[Problem] = ()) -> str:
    """The prompt a model completes, in format ``fmt`` (default: ``default_format`` of the benchmark)."""
    family, chosen = _applied(problem.benchmark, fmt, problem.task_id)
    return family.prompt(problem, chosen, examples)


def completion_code(problem: Problem, completion: str, fmt: str | None = None) -> str:
    """The code a completion stands for: prompt + completion, or the completion alone (few-shot)."""
    family, chosen = _applied(problem.benchmark, fmt, problem.task_id)
    return family.completion_code(problem, completion, chosen)


def program_for_code(problem: Problem, code: str, *, include_challenge: bool = False) -> Program:
    """The program that tests ``code`` (a full solution) against ``problem``'s own tests."""
    return family_of(problem.benchmark).program(problem, code, include_challenge=include_challenge)


def build_program(
    problem: Problem, completion: str, fmt: str | None = None, *, include_challenge: bool = False
) -> Program:
    """The program that tests a model completion written after the prompt in format ``fmt``."""
    code = completion_code(problem, completion, fmt)
    return program_for_code(problem, code, include_challenge=include_challenge)


def reference_code(problem: Problem) -> str:
    """The benchmark's reference solution as a whole program."""
    return family_of(problem.benchmark).reference_code(problem)


def reference_program(problem: Problem, *, include_challenge: bool = False) -> Program:
    """The program that tests the benchmark's own reference solution (the canonical self-check)."""
    return program_for_code(problem, reference_code(problem), include_challenge=include_challenge)


def gold_solution(problem: Problem) -> str:
    """The reference solution gold bits per byte score after the prompt."""
    return family_of(problem.benchmark).gold_solution(problem)
