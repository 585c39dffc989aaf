"""Scoring: reference solutions pass, pass@k from real executions, determinism, bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from textbooks.benchmarks import ProblemSet, load_benchmark, load_humaneval, load_mbpp
from textbooks.errors import TextbooksError
from textbooks.eval.verdicts.passk import aggregate_pass_at_k
from textbooks.eval.verdicts.plus import sample_program
from textbooks.eval.verdicts.plus_references import References
from textbooks.eval.verdicts.plus_rules import inputs
from textbooks.eval.verdicts.samples import SamplesError
from textbooks.eval.verdicts.score import TIMING_FIELDS, score_canonical, score_samples
from textbooks.sandbox import Limits, Sandbox


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as sb:  # default limits: the ones the reference solutions must pass under
        yield sb


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def assert_all_pass(problems: ProblemSet, sandbox: Sandbox, out: Path, **kw: Any) -> dict:
    report = score_canonical(problems, out_dir=out, sandbox=sandbox, **kw)
    s = report.summary
    assert s["failed_tasks"] == [], [r for r in report.records if not r["passed"]][:3]
    assert s["status_counts"]["passed"] == s["n_samples"] == len(problems)
    assert json.loads((out / "results.json").read_text())["benchmark"]["label"] == problems.info.label
    assert len((out / "canonical_results.jsonl").read_text().splitlines()) == len(problems)
    return s


# ------------------------------------------------------------------------------- reference solutions


def test_humaneval_reference_solutions_all_pass(sandbox: Sandbox, tmp_path: Path) -> None:
    s = assert_all_pass(load_humaneval(), sandbox, tmp_path)
    assert s["n_samples"] == 164 and s["pass@k"] == {"pass@1": 1.0}
    assert s["sandbox"]["workers"] == sandbox.workers


@pytest.mark.slow
def test_mbpp_test_split_reference_solutions_all_pass(sandbox: Sandbox, tmp_path: Path) -> None:
    problems = load_mbpp(split="test")
    s = assert_all_pass(problems, sandbox, tmp_path)
    assert s["n_samples"] == 500 and s["benchmark"]["label"] == "mbpp/test"
    slow = json.loads(
        next(line for line in (tmp_path / "canonical_results.jsonl").open() if '"Mbpp/123"' in line)
    )
    assert slow["passed"] and slow["cpu_s"] > 1.0  # the ~4 s reference passes under the default limits


def test_mbpp_challenge_tests_pass_too(sandbox: Sandbox, tmp_path: Path) -> None:
    every = load_mbpp(split="all")
    subset = ProblemSet(every.info, {k: p for k, p in every.problems.items() if p.challenge_test_list})
    assert len(subset) == 11
    assert_all_pass(subset, sandbox, tmp_path, include_challenge=True)


@pytest.mark.slow
def test_sanitized_mbpp_reference_solutions_all_pass(sandbox: Sandbox, tmp_path: Path) -> None:
    s = assert_all_pass(load_benchmark("mbpp-sanitized", split="all"), sandbox, tmp_path)
    assert s["n_samples"] == 427


@pytest.mark.slow
def test_humaneval_plus_reference_solutions_pass_base_and_differential_tests(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    problems = load_benchmark("humaneval+")
    s = assert_all_pass(problems, sandbox, tmp_path)
    assert s["n_samples"] == 164 and s["pass@k"] == s["pass@k_base"] == {"pass@1": 1.0}
    p = problems["HumanEval/0"]
    refs = References()
    refs.ensure(sandbox, [p])
    code = p.prompt + "    return False\n"
    base, extra = (sample_program(p, code, refs[p.task_id], which) for which in ("base", "plus"))
    assert (base.n_calls, extra.n_calls) == (len(p.extra["base_input"]), len(p.extra["plus_input"]))
    assert p.canonical_solution.strip() not in base.setup + extra.setup  # no reference in a sample's program


@pytest.mark.slow
def test_mbpp_plus_reference_solutions_pass_their_base_tests(sandbox: Sandbox, tmp_path: Path) -> None:
    s = assert_all_pass(load_benchmark("mbpp+"), sandbox, tmp_path, plus=False)
    assert s["n_samples"] == 378 and "pass@k_base" not in s and s["plus_tests"] is False


# MBPP+ tasks whose inputs need their types back (tuples, nested tuples, sets, complex numbers stored as
# strings, dicts of tuples) or whose outputs are compared by a special rule (sets, not-None, alternatives)
MBPP_PLUS_SPECIAL = [
    2,
    63,
    70,
    75,
    94,
    106,
    116,
    124,
    252,
    259,
    278,
    558,
    580,
    581,
    596,
    615,
    722,
    737,
    750,
    787,
    791,
]


def test_mbpp_plus_differential_tests_pass_for_the_references(sandbox: Sandbox, tmp_path: Path) -> None:
    every = load_benchmark("mbpp+")
    ids = [f"Mbpp/{n}" for n in MBPP_PLUS_SPECIAL]
    subset = ProblemSet(every.info, {t: every[t] for t in ids})
    s = assert_all_pass(subset, sandbox, tmp_path)
    assert s["pass@k"] == s["pass@k_base"] == {"pass@1": 1.0}
    assert inputs(every["Mbpp/2"], "base")[0] == [(3, 4, 5, 6), (5, 7, 4, 10)]  # tuples back
    assert [type(x) for x in inputs(every["Mbpp/124"], "base")[0]] == [float, complex]  # stored as "0", "1j"


def test_humaneval_plus_catches_what_the_base_tests_miss(sandbox: Sandbox, tmp_path: Path) -> None:
    problems = load_benchmark("humaneval+")
    body0 = problems["HumanEval/0"].canonical_solution
    rows = [
        {"task_id": "HumanEval/0", "completion": body0},
        # right on the base tests (lists of at most 6 numbers), wrong on longer ones
        {"task_id": "HumanEval/0", "completion": "    if len(numbers) > 6:\n        return False\n" + body0},
        {  # the same, trying to switch the differential tests off
            "task_id": "HumanEval/0",
            "completion": "    if len(numbers) > 6:\n        return False\n"
            + body0
            + "__textbooks_plus_run = print\n",
        },
        {
            "task_id": "HumanEval/2",
            "completion": "    return (number * 10 - int(number) * 10) / 10\n",
        },  # off by < 1e-6
        {"task_id": "HumanEval/2", "completion": "    return round(number % 1.0, 3)\n"},  # base tests pass
    ]
    report = score_samples(write_jsonl(tmp_path / "s.jsonl", rows), problems, sandbox=sandbox)
    got = [(r["passed"], r["base_passed"], r["status"]) for r in report.records]
    assert got == [
        (True, True, "passed"),
        (False, True, "failed"),
        (False, True, "failed"),
        (True, True, "passed"),
        (False, True, "failed"),
    ]
    assert report.records[1]["phase"] >= 1 and "plus input" in report.records[1]["message"]
    assert report.summary["pass@k"]["pass@1"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert report.summary["pass@k_base"]["pass@1"] == 1.0
    assert report.records[2]["phase"] >= 1


# ------------------------------------------------------------------------------- samples


def test_scoring_samples_writes_results_and_pass_at_k(sandbox: Sandbox, tmp_path: Path) -> None:
    problems = load_humaneval()
    correct = {"HumanEval/0": 10, "HumanEval/1": 3, "HumanEval/2": 1, "HumanEval/3": 0}
    rows = []
    for tid, c in correct.items():
        for i in range(10):
            good = i < c
            rows.append(
                {"task_id": tid, "completion": problems[tid].canonical_solution if good else "    pass\n"}
            )
    rows.append({"task_id": "HumanEval/4", "completion": "    while True:\n        pass\n", "note": "kept"})
    samples = write_jsonl(tmp_path / "samples.jsonl", rows)
    report = score_samples(samples, problems, sandbox=sandbox, limits=Limits(test_cpu_s=1.0))
    assert report.results_path == tmp_path / "samples.jsonl_results.jsonl"
    assert report.summary_path == tmp_path / "results.json"
    lines = [json.loads(x) for x in report.results_path.read_text().splitlines()]
    assert [x["task_id"] for x in lines] == [r["task_id"] for r in rows]  # file order
    assert [x["completion_id"] for x in lines[:10]] == list(range(10))
    assert sum(x["passed"] for x in lines) == 14
    assert {x["result"] for x in lines} >= {"passed", "timed out"}
    assert lines[-1]["note"] == "kept" and lines[-1]["status"] == "timeout"
    summary = json.loads(report.summary_path.read_text())
    expected = aggregate_pass_at_k({**{t: (10, c) for t, c in correct.items()}, "HumanEval/4": (1, 0)}, (1,))
    assert summary["pass@k"] == expected  # k=10 and 100 need 10 samples of every task: not reported
    assert summary["samples_per_task"] == {"min": 1, "max": 10}
    assert summary["n_tasks_scored"] == 5 and summary["n_tasks_missing"] == 159
    assert summary["status_counts"] == {"passed": 14, "failed": 26, "timeout": 1, "error": 0}
    assert summary["benchmark"]["label"] == "humaneval/all" and summary["prompt_format"] == "humaneval"
    assert summary["limits"]["test_cpu_s"] == 1.0 and "network" in summary["sandbox"]


def test_pass_at_10_with_ten_samples_each(sandbox: Sandbox, tmp_path: Path) -> None:
    problems = load_mbpp()
    rows = []
    for tid, c in {"Mbpp/11": 2, "Mbpp/12": 0}.items():
        p = problems[tid]
        for i in range(10):
            completion = p.canonical_solution if i < c else f"def {p.entry_point}(*a):\n    return None\n"
            rows.append(
                {"task_id": int(tid.split("/")[1]), "completion": completion}
            )  # bare numbers are fine
    report = score_samples(
        write_jsonl(tmp_path / "s.jsonl", rows), problems, sandbox=sandbox, prompt_format="mbpp-3shot"
    )
    assert report.pass_at_k == aggregate_pass_at_k({"a": (10, 2), "b": (10, 0)}, (1, 10))
    assert report.pass_at_k["pass@10"] == pytest.approx(0.5)


def test_scoring_twice_gives_identical_results(sandbox: Sandbox, tmp_path: Path) -> None:
    problems = load_humaneval()
    body = problems["HumanEval/0"].canonical_solution
    rows = [  # pass or fail depends on string hashing: identical only with a fixed hash seed
        {"task_id": "HumanEval/0", "completion": f"    if hash('seed-{i}') % 2:\n        return None\n{body}"}
        for i in range(8)
    ]
    rows += [
        {"task_id": "HumanEval/1", "completion": "    return sorted({'b', 'a', 'c', 'd'})\n"},
        {"task_id": "HumanEval/2", "completion": "    return number - int(number)\n"},
        {"task_id": "HumanEval/3", "completion": "    return undefined_name\n"},
        {"task_id": "HumanEval/4", "completion": "    x = \n"},
    ]
    samples = write_jsonl(tmp_path / "samples.jsonl", rows)
    runs = []
    for i in range(2):
        r = score_samples(samples, problems, sandbox=sandbox, results_path=tmp_path / f"r{i}.jsonl")
        records = [{k: v for k, v in x.items() if k not in TIMING_FIELDS} for x in r.records]
        summary = {k: v for k, v in r.summary.items() if k not in ("timing", "results_file")}
        runs.append((records, summary))
    assert runs[0] == runs[1]
    statuses = {x["status"] for x in runs[0][0]}
    assert {"passed", "error"} <= statuses


def test_truncating_at_stop_sequences(sandbox: Sandbox, tmp_path: Path) -> None:
    problems = load_humaneval()
    p = problems["HumanEval/2"]
    samples = write_jsonl(
        tmp_path / "s.jsonl", [{"task_id": p.task_id, "completion": p.canonical_solution + "\nif (\n"}]
    )
    raw = score_samples(samples, problems, sandbox=sandbox, write=False)
    cut = score_samples(samples, problems, sandbox=sandbox, write=False, truncate_at_stop=True)
    assert raw.records[0]["error_type"] == "SyntaxError"
    assert cut.records[0]["passed"] and cut.summary["truncated_at_stop"]
    assert raw.results_path is None and not (tmp_path / "results.json").exists()


# ------------------------------------------------------------------------------- bad input


def test_malformed_lines_are_counted_then_refused_over_the_fraction(sandbox: Sandbox, tmp_path: Path) -> None:
    problems = load_humaneval()
    good = [{"task_id": "HumanEval/0", "completion": "    return False\n"}] * 99
    samples = write_jsonl(tmp_path / "s.jsonl", [*good[:50], "{not json", *good[50:]])
    report = score_samples(samples, problems, sandbox=sandbox)
    assert report.summary["n_samples"] == 99
    assert report.summary["malformed_lines"]["count"] == 1
    assert report.summary["malformed_lines"]["lines"][0]["line"] == 51
    bad = write_jsonl(tmp_path / "bad.jsonl", [*good[:10], "[1, 2]", {"task_id": "HumanEval/0"}, "null"])
    with pytest.raises(SamplesError, match=r"3 of 13 lines are malformed .*max_malformed_fraction=0\.01"):
        score_samples(bad, problems, sandbox=sandbox)
    assert (
        score_samples(bad, problems, sandbox=sandbox, max_malformed_fraction=0.5, write=False).summary[
            "malformed_lines"
        ]["count"]
        == 3
    )


def test_unknown_task_id_is_one_clear_error(sandbox: Sandbox, tmp_path: Path) -> None:
    rows = [
        {"task_id": "HumanEval/0", "completion": "    pass\n"},
        {"task_id": "HumanEval/999", "completion": ""},
    ]
    samples = write_jsonl(tmp_path / "s.jsonl", rows)
    with pytest.raises(
        TextbooksError, match=r"line 2: task_id 'HumanEval/999' is not in humaneval/all \(164 problems"
    ):
        score_samples(samples, load_humaneval(), sandbox=sandbox)
    assert not (tmp_path / "s.jsonl_results.jsonl").exists()


def test_missing_or_empty_samples_file(tmp_path: Path) -> None:
    with pytest.raises(SamplesError, match=r"samples file not found: .*nothing\.jsonl"):
        score_samples(tmp_path / "nothing.jsonl", load_humaneval())
    with pytest.raises(SamplesError, match="no valid samples"):
        score_samples(write_jsonl(tmp_path / "empty.jsonl", []), load_humaneval())


def test_a_sanitized_whole_program_is_never_cut_and_the_records_format_is_kept(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """A served chat model's answer made a whole solution starts with its imports (``from typing import
    List\\ndef ...``): cutting it at HumanEval's stop sequence ``\\ndef`` would leave the import alone."""
    problems = load_humaneval()
    p = problems["HumanEval/0"]
    whole = p.prompt + p.canonical_solution
    assert whole.startswith("from typing import List\n\n\ndef ")
    rows = [
        {"task_id": p.task_id, "completion": whole, "sanitized": True, "prompt_format": "humaneval"},
        {"task_id": p.task_id, "completion": whole, "prompt_format": "humaneval"},  # not marked: cut
    ]
    samples = write_jsonl(tmp_path / "samples.jsonl", rows)
    report = score_samples(samples, problems, sandbox=sandbox, write=False, truncate_at_stop=True)
    assert [r["passed"] for r in report.records] == [True, False]
    assert report.records[1]["completion"] == "from typing import List\n\n"  # what the cut would do to both
    with pytest.raises(SamplesError, match="generated with prompt format humaneval, not mbpp-0shot"):
        score_samples(samples, problems, sandbox=sandbox, write=False, prompt_format="mbpp-0shot")
