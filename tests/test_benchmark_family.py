"""Adding a benchmark is one module and one config: a tiny family written here (four problems, its own prompt
format and reference solutions) is registered and scored through the entries the app uses, with real
verdicts from the sandbox."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from textbooks.benchmarks import (
    DataFile,
    Family,
    Problem,
    ProblemSet,
    PromptFormat,
    build_prompt,
    default_format,
    family_of,
    load_benchmark,
    register,
    stop_sequences,
    unregister,
)
from textbooks.benchmarks.family import no_splits
from textbooks.benchmarks.files import read_jsonl
from textbooks.config import CONF_DIR
from textbooks.eval.app import run
from textbooks.eval.verdicts.score import score_canonical, score_samples
from textbooks.sandbox import Program, Sandbox

# -- the module a new benchmark would be (src/textbooks/benchmarks/arith.py) -----------------------------
ARITH_COMMENT = PromptFormat("arith-comment", stop=("\ndef", "\n#", "\nprint"))


class Arith(Family):
    """Arith: a one-line task as a comment above the signature; the completion is the body; asserts test
    it. Read from ``arith.jsonl`` (``path=`` or a ``data_dir``; no copy is shipped)."""

    names = ("arith",)
    files = (DataFile("arith", "arith.jsonl"),)
    formats = (ARITH_COMMENT,)
    base = "arith"

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
        p, source, sha = self.data_file(name).source(self.file(name, path, data_dir))
        problems = [
            Problem(
                task_id=r["task_id"],
                benchmark=name,
                prompt=r["text"],
                canonical_solution=r["solution"],
                test="\n".join(r["tests"]),
                entry_point=r["entry_point"],
                text=r["text"],
                test_list=tuple(r["tests"]),
            )
            for r in read_jsonl(p)
        ]
        return self.problem_set(name, "all", source, sha, problems)

    def prompt(self, problem: Problem, fmt: PromptFormat, examples: Sequence[Problem] = ()) -> str:
        return f"# {problem.text}\ndef {problem.entry_point}(x):\n"

    def program(self, problem: Problem, code: str, *, include_challenge: bool = False) -> Program:
        return Program(setup=code, tests=problem.test_list, entry_point=problem.entry_point)

    def reference_code(self, problem: Problem) -> str:
        return self.prompt(problem, ARITH_COMMENT) + problem.canonical_solution


# -- its data and config --------------------------------------------------------------------------------
ROWS = [
    {
        "task_id": "Arith/1",
        "text": "Return twice x.",
        "entry_point": "double",
        "solution": "    return 2 * x\n",
        "tests": ["assert double(3) == 6", "assert double(-1) == -2"],
    },
    {
        "task_id": "Arith/2",
        "text": "Return x squared.",
        "entry_point": "square",
        "solution": "    return x * x\n",
        "tests": ["assert square(4) == 16", "assert square(-3) == 9"],
    },
    {
        "task_id": "Arith/3",
        "text": "Return minus x.",
        "entry_point": "negate",
        "solution": "    return -x\n",
        "tests": ["assert negate(5) == -5", "assert negate(0) == 0"],
    },
    {
        "task_id": "Arith/4",
        "text": "Return whether x is even.",
        "entry_point": "is_even",
        "solution": "    return x % 2 == 0\n",
        "tests": ["assert is_even(4)", "assert not is_even(7)"],
    },
]
CONFIG = """\
# Arith (tests/test_benchmark_family.py): four problems, the body completes a commented signature.
name: arith
tag: arith
path: null             # null: arith.jsonl in paths.benchmarks
split: null
prompt_format: arith-comment
hub: false
"""
# per task: a right completion, and a wrong one (the second runs past a stop sequence into junk)
RIGHT = {r["task_id"]: r["solution"] for r in ROWS}
WRONG = {
    "Arith/1": "    return x + 2\n",
    "Arith/2": "    return x * x\n\ndef junk(:\n",  # right until the stop: passes only when cut there
    "Arith/3": "    return x\n",
    "Arith/4": "    raise ValueError(x)\n",
}


@pytest.fixture
def arith(tmp_path: Path) -> Iterator[Path]:
    """The family registered, its data file in a benchmarks directory, its config in a config group."""
    family = register(Arith())
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "arith.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "conf" / "benchmark").mkdir(parents=True)
    (tmp_path / "conf" / "benchmark" / "arith.yaml").write_text(CONFIG)
    try:
        yield tmp_path
    finally:
        unregister(family)


def write_samples(path: Path) -> Path:
    rows = [{"task_id": t, "completion": c} for t in RIGHT for c in (RIGHT[t], WRONG[t])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_registered_family_loads_prompts_and_scores(arith: Path) -> None:
    problems = load_benchmark("arith", data_dir=arith / "bench")
    assert (len(problems), problems.info.label, default_format("arith")) == (4, "arith/all", "arith-comment")
    assert build_prompt(problems["Arith/1"]) == "# Return twice x.\ndef double(x):\n"
    assert stop_sequences("arith-comment") == ("\ndef", "\n#", "\nprint")
    assert family_of("arith").statement(problems["Arith/3"]) == "Return minus x."
    with Sandbox(workers=2) as sb:
        canonical = score_canonical(problems, sandbox=sb)
        assert canonical.summary["failed_tasks"] == [] and canonical.pass_at_k == {"pass@1": 1.0}
        samples = write_samples(arith / "samples.jsonl")
        report = score_samples(samples, problems, sandbox=sb, ks=(1, 2))
        verdicts = [(r["task_id"], r["passed"], r["status"]) for r in report.records]
        assert verdicts == [
            ("Arith/1", True, "passed"),
            ("Arith/1", False, "failed"),
            ("Arith/2", True, "passed"),
            ("Arith/2", False, "error"),  # not cut at the stop: a SyntaxError
            ("Arith/3", True, "passed"),
            ("Arith/3", False, "failed"),
            ("Arith/4", True, "passed"),
            ("Arith/4", False, "error"),
        ]
        assert report.pass_at_k == {"pass@1": 0.5, "pass@2": 1.0}
        cut = score_samples(samples, problems, sandbox=sb, truncate_at_stop=True, write=False)
        assert [r["passed"] for r in cut.records][2:4] == [True, True]  # cut at "\ndef": right
    summary = json.loads((arith / "results.json").read_text())
    assert summary["benchmark"]["name"] == "arith" and summary["prompt_format"] == "arith-comment"
    assert summary["scoring"] == {"rules": "original tests, CPU budgets per test"}


def test_textbooks_eval_scores_a_new_benchmark_from_its_config(arith: Path) -> None:
    """``textbooks-eval benchmark=arith samples=...``: the config group entry and the family are all it
    takes."""
    samples = write_samples(arith / "samples.jsonl")
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose(
            "eval",
            overrides=[
                f"hydra.searchpath=[file://{arith / 'conf'}]",
                "benchmark=arith",
                f"paths.benchmarks={arith / 'bench'}",
                f"samples={samples}",
                "progress=false",
                "sandbox.workers=2",
            ],
        )
    res = run(cfg)
    assert res["benchmark"]["label"] == "arith/all" and res["prompt_format"] == "arith-comment"
    assert res["benchmark"]["source"] == str(arith / "bench" / "arith.jsonl")
    assert res["pass@k"] == {"pass@1": 0.625}  # sandbox.truncate: Arith/2's junk is cut at "\ndef"
    assert res["status_counts"]["passed"] == 5 and res["n_samples"] == 8
