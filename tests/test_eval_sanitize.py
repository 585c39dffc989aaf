"""The sanitizer (EvalPlus's rules on Python's parser): what it keeps of chat answers and base completions,
and a sanitized samples file scored in the real sandbox."""

from __future__ import annotations

import json
import textwrap

import pytest

from textbooks.benchmarks import load_humaneval
from textbooks.eval.verdicts.sanitize import (
    code_extract,
    defines,
    sanitize,
    sanitize_samples,
    sanitized_path,
    solution_code,
)

CHAT_ANSWER = textwrap.dedent(
    '''
    Sure! Here is a solution:

    ```python
    import math
    from typing import List

    SCALE = 3

    def helper(x):
        return x * SCALE

    def unused_helper(x):
        return -x

    def stub(x):
        """Not implemented."""

    @functools.lru_cache(None)
    def cached(x):
        return helper(x)

    def solve(numbers: List[float]) -> float:
        total = 0.0
        for n in numbers:
            total += cached(n) + math.sqrt(abs(n))
        return total

    def solve(numbers):
        return 0

    print(solve([1.0, 4.0]))
    assert solve([]) == 0.0
    ```

    This works by summing. Example:

    ```python
    >>> solve([1])
    ```
    '''
)


def test_a_chat_answer_is_cut_to_the_entry_point_and_what_it_needs():
    code = sanitize(CHAT_ANSWER, "solve")
    assert code.startswith("import math\nfrom typing import List\nSCALE = 3\ndef helper(x):")
    assert "def cached" in code and "@functools.lru_cache(None)" in code  # decorated: kept with decorator
    assert "unused_helper" not in code and "def stub" not in code
    assert "print(" not in code and "assert " not in code and "```" not in code and "Sure" not in code
    assert code.count("def solve") == 1 and "return 0" not in code  # the first definition wins
    namespace = {"functools": __import__("functools")}
    exec(compile(code, "<sanitized>", "exec"), namespace)
    assert namespace["solve"]([1.0, 4.0]) == 3 + 1 + 12 + 2


def test_without_an_entry_point_every_definition_is_kept():
    code = sanitize(CHAT_ANSWER)
    assert "unused_helper" in code and "def solve" in code and "print(" not in code


def test_code_extract_takes_the_longest_parsing_run():
    text = "Intro words here.\n```python\ndef f():\n    return 1\n\n\n```\nmore prose, not code.\nx = (\n"
    assert code_extract(text) == "def f():\n    return 1"
    assert code_extract("no code at all, sorry") == "no code at all, sorry"  # EvalPlus: the first line
    assert sanitize("no code at all, sorry", "f") == "no code at all, sorry"


def test_answers_that_do_not_parse_or_are_huge_are_handled():
    assert sanitize("def f(:\n    return", "f") in ("def f(:", "def f(:\n    return")
    long = "\n".join(f"x{i} = {i}" for i in range(400)) + "\ndef f():\n    return x399\n"
    code = sanitize("prose\n" + long, "f")
    assert code.startswith("x399 = 399\ndef f():")


def test_a_base_model_completion_becomes_prompt_plus_body():
    problem = load_humaneval()["HumanEval/0"]
    body = "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1 :])\n"
    junk = "\n\nprint(has_close_elements([1.0, 2.0], 0.5))\n"
    code = solution_code(problem, body + junk)
    assert defines(code, "has_close_elements") and "print(" not in code
    assert code.startswith("from typing import List\ndef has_close_elements(")


@pytest.mark.slow
def test_chat_answers_score_after_sanitizing_and_not_before(tmp_path):
    """Canonical solutions wrapped as a chat model writes them, scored by ``textbooks-eval samples=``:
    all fail as they are (prose is not code) and all pass sanitized. HumanEval/10, /32 and /38 have
    helper functions in their prompts; the scorer runs prompt + sanitized solution."""
    from hydra import compose, initialize_config_dir

    from textbooks.config import CONF_DIR
    from textbooks.eval.app import run

    problems = load_humaneval()
    tasks = ["HumanEval/0", "HumanEval/10", "HumanEval/32", "HumanEval/38"]
    path = tmp_path / "chat_samples.jsonl"
    with open(path, "w") as f:
        for t in tasks:
            p = problems[t]
            answer = f"Here it is:\n```python\n{p.prompt}{p.canonical_solution}\n```\nHope this helps!"
            f.write(json.dumps({"task_id": t, "completion": answer}) + "\n")
    scores = {}
    for on in ("false", "true"):
        with initialize_config_dir(CONF_DIR, version_base="1.3"):
            cfg = compose(
                "eval",
                overrides=[
                    "progress=false",
                    "sandbox.workers=2",
                    f"samples={path}",
                    "limit=40",
                    f"sanitize={on}",
                    f"out_dir={tmp_path / on}",
                ],
            )
        scores[on] = run(cfg)
    assert scores["false"]["pass@k"] == {"pass@1": 0.0}
    assert scores["true"]["pass@k"] == {"pass@1": 1.0} and scores["true"]["n_samples"] == 4
    assert scores["true"]["sanitized"]["changed"] == 4
    assert scores["true"]["settings"]["sanitize"] is True and "sanitize" not in scores["false"]["settings"]
    sanitized = [json.loads(line) for line in sanitized_path(path).read_text().splitlines()]
    assert all(defines(r["completion"], problems[r["task_id"]].entry_point) for r in sanitized)
    assert all("Hope" in r["raw_completion"] and "Hope" not in r["completion"] for r in sanitized)


def test_sanitize_samples_writes_a_copy_and_keeps_the_raw_answer(tmp_path):
    problems = load_humaneval()
    p0 = problems["HumanEval/0"]
    lines = [
        {"task_id": "HumanEval/0", "completion": f"```python\n{p0.prompt}{p0.canonical_solution}```\nDone."},
        {"task_id": "HumanEval/0", "completion": p0.canonical_solution},
        {"task_id": "HumanEval/0", "completion": "x", "sanitized": True},
        {"task_id": "Unknown/1", "completion": "y"},
    ]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + "not json\n")
    counts = sanitize_samples(path, problems)
    out = sanitized_path(path)
    assert counts["path"] == str(out) and out.name == "samples-sanitized.jsonl"
    assert counts["samples"] == 2 and counts["copied_unchanged"] == 3
    recs = out.read_text().splitlines()
    first, second = json.loads(recs[0]), json.loads(recs[1])
    assert first["raw_completion"] == lines[0]["completion"] and first["sanitized"] is True
    assert defines(first["completion"], "has_close_elements") and "Done" not in first["completion"]
    assert defines(second["completion"], "has_close_elements")
    assert json.loads(recs[2]) == lines[2] and json.loads(recs[3]) == lines[3] and recs[4] == "not json"
    assert path.read_text().count("\n") == 5  # the original is untouched
