"""Stage ``exercises``: mining HumanEval-shaped exercises from real code with ``ast`` (offline proxy), and
synthetic exercises from a local OpenAI-compatible server with canned answers keyed off the prompt."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import textwrap
from pathlib import Path

import pytest
from openai_server import OpenAIServer, last_user_message

from textbooks.data.engine.parquet import part_files, read_table
from textbooks.data.stages.exercises import ExercisesConfig, build_exercises, plan_exercises
from textbooks.data.stages.exercises_functions import exercise_from_answer, free_names, signature
from textbooks.errors import ConfigError, DataError
from textbooks.io import stdlib_dir
from textbooks.llm.config import Backoff, LLMConfig, LLMUnreachableError

GEOMETRY = textwrap.dedent(
    '''
    """Geometry helpers."""
    import functools
    import math
    from collections import Counter as C

    SCALE = 3


    def distance(p, q):
        """Return the Euclidean distance between the points p and q.

        >>> distance((0, 0), (3, 4))
        5.0
        """
        dx = p[0] - q[0]
        dy = p[1] - q[1]
        return math.sqrt(dx * dx + dy * dy)  # Pythagoras


    def most_common_letter(text):
        """Return the letter that occurs most often in text (ties: the first seen)."""
        counts = C(ch for ch in text if ch.isalpha())
        letter, _ = counts.most_common(1)[0]
        return letter


    def scaled(x):
        """Multiply x by the module-level scale factor SCALE."""
        y = x * SCALE
        return y


    def _private(x):
        """A private helper, which should not become an exercise."""
        a = x + 1
        return a


    @functools.lru_cache
    def cached(x):
        """Decorated functions are skipped: decorators change what they do."""
        a = x
        return a


    def undocumented(x):
        a = x
        return a


    class Box:
        def area(self, w, h):
            """Return the area of a w-by-h rectangle, in square units."""
            result = w * h
            return result

        def volume(self, d):
            """Return the volume of this box given its depth d, in units."""
            v = self.area(1, 2) * d
            return v

        @staticmethod
        def perimeter(w, h=1):
            """Return the perimeter of a w-by-h rectangle, in units."""
            total = 2 * (w + h)
            return total


    def midpoint(p, q):
        """Return the midpoint of the points p and q (its doctest is wrong, so it is dropped).

        >>> midpoint((0, 0), (2, 4))
        (1.0, 3.0)
        """
        x = (p[0] + q[0]) / 2
        return (x, (p[1] + q[1]) / 2)
    '''
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, stdlib_dir) -> Path:
    """geometry.py plus 40 real standard-library modules (under 40 kB each)."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "geometry.py").write_text(GEOMETRY)
    for p in [p for p in sorted(stdlib_dir.glob("*.py")) if p.stat().st_size < 40_000][:40]:
        (root / p.name).write_bytes(p.read_bytes())
    return root


def mined(tmp_path: Path, corpus: Path, out: str = "exercises", **kw) -> ExercisesConfig:
    return ExercisesConfig(out_dir=str(tmp_path / out), source="mined", input=str(corpus), **kw)


def run_exec(text: str, name: str):
    scope: dict = {}
    exec(compile(text, "<exercise>", "exec"), scope)
    return scope[name]


def test_mined_exercises_are_split_with_the_imports_they_use(tmp_path, corpus):
    manifest = build_exercises(mined(tmp_path, corpus), progress=False)
    rows = {r["id"]: r for r in read_table(tmp_path / "exercises").to_pylist()}
    assert "geometry.py::distance" in rows and "geometry.py::most_common_letter" in rows
    for rejected in ("scaled", "_private", "cached", "undocumented", "Box.area", "midpoint"):
        assert f"geometry.py::{rejected}" not in rows
    d = rows["geometry.py::distance"]
    assert d["prompt"].startswith("import math\n\n\ndef distance(p, q):\n") and d["prompt"].endswith(
        '    """\n'
    )
    assert d["solution"].startswith("    dx = p[0] - q[0]\n") and "# Pythagoras" in d["solution"]
    assert d["text"] == d["prompt"] + d["solution"] and d["entry_point"] == "distance"
    assert (d["source"], d["model"], d["params"]) == ("mined", None, None)
    assert d["origin"].endswith("geometry.py:10")
    assert run_exec(d["text"], "distance")((0, 0), (3, 4)) == 5.0
    letter = rows["geometry.py::most_common_letter"]
    assert letter["prompt"].startswith("from collections import Counter as C\n")
    assert run_exec(letter["text"], "most_common_letter")("a bb ccc") == "c"
    for r in rows.values():
        ast.parse(r["text"])
        assert ast.get_docstring(ast.parse(r["prompt"]).body[-1]) is not None
    counts = manifest["counts"]
    assert manifest["documents"] == len(rows) > 10 and manifest["source"] == "mined"
    assert counts["uses_module_names"] >= 1 and counts["private"] >= 1 and counts["decorated"] >= 1
    assert counts["no_docstring"] >= 1 and manifest["read"]["documents"] == 41
    assert counts["passed"] >= 1 and counts["fails"] >= 1 and counts["unchecked"] >= 1  # doctests ran


def test_methods_that_never_use_self_become_functions(tmp_path, corpus):
    one = tmp_path / "one"
    one.mkdir()
    (one / "geometry.py").write_text(GEOMETRY)
    manifest = build_exercises(mined(tmp_path, one, include_methods=True), progress=False)
    rows = {r["id"]: r for r in read_table(tmp_path / "exercises").to_pylist()}
    assert set(rows) == {
        "geometry.py::distance",
        "geometry.py::most_common_letter",
        "geometry.py::Box.area",
        "geometry.py::Box.perimeter",
    }
    area = rows["geometry.py::Box.area"]
    assert area["prompt"].startswith('def area(w, h):\n    """Return the area')
    assert run_exec(area["text"], "area")(2, 3) == 6
    assert run_exec(rows["geometry.py::Box.perimeter"]["text"], "perimeter")(2) == 6
    assert manifest["counts"]["uses_self"] == 1  # Box.volume


@pytest.mark.slow
def test_mining_is_deterministic_and_reruns_are_skipped(tmp_path, corpus):
    first = build_exercises(mined(tmp_path, corpus), progress=False)
    assert build_exercises(mined(tmp_path, corpus), progress=False) == first  # skipped: manifest current
    second = build_exercises(mined(tmp_path, corpus, out="again"), progress=False)
    assert read_table(tmp_path / "again").equals(read_table(tmp_path / "exercises"))
    assert second["counts"] == first["counts"]
    # a smaller rerun (new config) leaves no stale parts of the bigger one behind
    build_exercises(mined(tmp_path, corpus, shard_bytes=20_000), progress=False)
    assert len(part_files(tmp_path / "exercises")) > 3
    capped = build_exercises(mined(tmp_path, corpus, max_exercises=7), progress=False)
    assert len(part_files(tmp_path / "exercises")) == 1 and capped["documents"] == 7
    ids = read_table(tmp_path / "exercises").column("id").to_pylist()
    assert ids == read_table(tmp_path / "again").column("id").to_pylist()[:7]


def test_the_configured_stage_mines_offline(tmp_path, corpus):
    from textbooks.data.app import compose, run  # the app's compose registers the stages' schemas

    overrides = ["stage=exercises", "stage.source=mined", f"stage.input={corpus}", f"paths.data={tmp_path}"]
    manifest = run(compose([*overrides, "progress=false"]))
    assert manifest["source"] == "mined" and manifest["documents"] > 10
    assert "n" not in manifest["config"] and manifest["config"]["self_contained"] is True
    assert read_table(tmp_path / "exercises").num_rows == manifest["documents"]


def test_free_names_and_signatures():
    tree = ast.parse(
        textwrap.dedent(
            """
            def f(a, *args, key=None, **kw):
                global COUNTER
                total = sum(x for x in args if x)
                try:
                    import json
                except ImportError as err:
                    raise err
                def inner(y):
                    return y + a
                return [inner(v) for v in kw.values()] + [json, total, helper(a), math.pi]

            class C:
                def m(self, x, y=2, *, z):
                    return x
            """
        )
    )
    f, c = tree.body
    assert free_names(f) - {"sum", "ImportError"} == {"COUNTER", "helper", "math"}  # (builtins are free too)
    assert signature(f) == "def f(a, *args, key=None, **kw):"
    assert signature(c.body[0], drop_first_arg=True) == "def m(x, y=2, *, z):"


def test_mined_default_input_is_the_standard_library(tmp_path):
    assert ExercisesConfig(out_dir="x", source="mined").inputs == [str(stdlib_dir())]


@pytest.mark.slow
def test_malformed_jsonl_records_are_counted_then_fatal_over_the_limit(tmp_path):
    records = [json.dumps({"id": f"doc{i}", "text": GEOMETRY}) for i in range(30)]
    records[3] = '{"id": "broken"'
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(records) + "\n")
    manifest = build_exercises(mined(tmp_path, src, max_bad_fraction=0.05), progress=False)
    assert manifest["read"]["bad"] == 1 and manifest["read"]["documents"] == 29
    assert (
        manifest["documents"] == 2 and manifest["counts"]["duplicates"] == 2 * 28
    )  # the same module 29 times
    with pytest.raises(DataError, match="1 of 30 records are malformed"):
        build_exercises(mined(tmp_path, src, out="strict"), progress=False)


def test_bad_configs_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="synthetic or mined"):
        ExercisesConfig(out_dir="x", source="llm")
    with pytest.raises(ConfigError, match="topics"):
        ExercisesConfig(out_dir="x", source="synthetic", topics=[])
    with pytest.raises(DataError, match="does not exist"):
        build_exercises(mined(tmp_path, tmp_path / "nope"), progress=False)


# -- synthetic --------------------------------------------------------------------------------------------

PROMPT = 'Exercise on "{topic}": write `{name}`.'


REDERIVED: list[list[dict]] = []  # the conversations asking for a second solution


def canned_exercise(messages: list[dict], body: dict) -> str:
    """Deterministic answers keyed off the prompt: 1 in 10 names the wrong function, 1 in 10 is not valid
    Python, 1 in 10 has no docstring, 1 in 10 fails its doctest, 1 in 10 has no doctest, 1 in 10 never
    ends, 1 in 10 has no code fence, 1 in 10 has an assert with a wrong expected value; the rest are good
    (with a test after the function, which is not part of the exercise). Asked for a second solution, the
    answer is right (with tests and a print after it, which are not part of it), but for a `find_*` function
    it gives 7 for 3 (it agrees with the wrong value) and for a `sum_*` one 6 for 3 and 0 otherwise (it agrees
    with the solution on the failing call only)."""
    prompt = last_user_message(messages)
    if prompt.startswith("Complete this Python function"):
        REDERIVED.append(messages)
        name = re.search(r"def (\w+)\(x: int\) -> int:", prompt).group(1)
        body = {"find": "return 7 if x == 3 else 2 * x", "sum": "return 6 if x == 3 else 0"}
        return (
            f'```python\nSCALE = 2\n\n\ndef {name}(x: int) -> int:\n    """Doubled."""\n'
            f"    {body.get(name.split('_')[0], 'return SCALE * x')}\n\n\nassert {name}(0) == 1\nprint({name}(4))\n```"
        )
    topic, name = re.search(r'on "([^"]+)": write `(\w+)`', prompt).groups()
    kind = _kind(prompt)
    if kind == "wrong_value":
        return (
            f'```python\ndef {name}(x: int) -> int:\n    """Return x doubled ({topic})."""\n    return 2 * x\n\n\n'
            f"assert {name}(1) == 2\nassert {name}(3) == 7\nassert {name}(5) == 10\n```"
        )
    if kind == "wrong_name":
        return f"```python\ndef something_else(x):\n    '''Double {topic}.'''\n    return 2 * x\n```"
    if kind == "syntax":
        return f"```python\ndef {name}(x)\n    return x\n```"
    if kind == "no_docstring":
        return f"```python\ndef {name}(x):\n    return x\n```"
    if kind in ("fails", "no_tests", "timeout"):
        example = {
            "fails": f">>> {name}(2)\n    5\n    >>> {name}(0)\n    1",
            "no_tests": "Add one.",
            "timeout": f">>> {name}(2)\n    3\n    >>> {name}(0)\n    1",
        }
        body = "while True:\n        pass" if kind == "timeout" else "return x + 1"
        return f'```python\ndef {name}(x):\n    """Add one.\n\n    {example[kind]}\n    """\n    {body}\n```'
    code = textwrap.dedent(
        f'''
        import math


        def {name}(values: list[int]) -> int:
            """Return the sum of the square roots of values, rounded down ({topic}).

            >>> {name}([1, 4, 9])
            6
            """
            total = 0.0
            for v in values:
                total += math.sqrt(v)
            return int(total)


        assert {name}([16]) == 4
        '''
    )
    return code if kind == "bare" else f"Here is the exercise:\n\n```python{code}```\n\nIt uses a loop."


def _kind(prompt: str) -> str:
    h = int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 10
    kinds = {
        0: "wrong_name",
        1: "syntax",
        2: "no_docstring",
        3: "bare",
        4: "fails",
        5: "no_tests",
        6: "timeout",
        7: "wrong_value",
    }
    return kinds.get(h, "good")


def synthetic(tmp_path: Path, out: str = "exercises", **kw) -> ExercisesConfig:
    return ExercisesConfig(
        out_dir=str(tmp_path / out),
        source="synthetic",
        n=kw.pop("n", 40),
        topics=["strings", "lists", "numbers"],
        name_verbs=["count", "find", "sum", "merge"],
        name_nouns=["digits", "words", "pairs", "primes", "gaps"],
        prompt=PROMPT,
        near_dup_threshold=kw.pop("near_dup_threshold", None),  # the canned bodies differ only in the name
        **kw,
    )


def llm_config(url: str, cache: Path, **kw) -> LLMConfig:
    return LLMConfig(
        base_url=url, model="fake-model", cache=str(cache), progress=False, backoff=Backoff(base=0.01), **kw
    )


def test_function_names_are_constrained_per_request():
    plans = plan_exercises(synthetic(Path("/x"), n=60))
    assert len({p.name for p in plans}) > 12 and len({p.topic for p in plans}) == 3
    assert all(f"`{p.name}`" in p.prompt and f'"{p.topic}"' in p.prompt for p in plans)
    assert plans == plan_exercises(synthetic(Path("/x"), n=60))
    assert plans[:10] == plan_exercises(synthetic(Path("/x"), n=10))


def test_answers_are_parsed_into_exercises_or_rejected():
    prompt = next(p for p in (f'on "t{i}": write `f`' for i in range(100)) if _kind(p) == "good")
    good = exercise_from_answer(canned_exercise([{"role": "user", "content": prompt}], {}), "f")
    assert good.prompt.startswith("import math\n\n\ndef f(values: list[int]) -> int:\n")
    assert "assert" not in good.text and run_exec(good.text, "f")([1, 4, 9]) == 6
    for answer, reason in [
        ("```python\ndef g(x):\n    '''Doc.'''\n    return x\n```", "wrong_name"),
        ("```python\ndef f(x)\n    return x\n```", "syntax"),
        ("```python\ndef f(x):\n    return x\n```", "no_docstring"),
        ("```python\ndef f(x):\n    '''Only a docstring.'''\n```", "no_body"),
    ]:
        with pytest.raises(ValueError, match=reason):
            exercise_from_answer(answer, "f")


@pytest.mark.slow
def test_synthetic_stage_keeps_checked_exercises_and_reruns_from_the_cache(tmp_path):
    cfg = synthetic(tmp_path, check_cpu_s=1.0, n=50)
    plans = plan_exercises(cfg)
    kinds = [_kind(p.prompt) for p in plans]
    reasons = ("wrong_name", "syntax", "no_docstring", "fails", "no_tests", "timeout")
    assert all(k in kinds for k in (*reasons, "bare", "good", "wrong_value"))
    wrong = [p for p, k in zip(plans, kinds) if k == "wrong_value"]  # solved again
    unsettled = [p for p in wrong if p.name.startswith(("find_", "sum_"))]  # the second solution disagrees
    assert 0 < len(unsettled) < len(wrong)
    cache = tmp_path / "c.sqlite"
    REDERIVED.clear()
    with OpenAIServer(canned_exercise) as server:
        manifest = build_exercises(cfg, llm_config(server.url, cache), progress=False)
        assert server.received == cfg.n + len(wrong)
        again = build_exercises(
            synthetic(tmp_path, out="again", check_cpu_s=1.0, n=cfg.n),
            llm_config(server.url, cache),
            progress=False,
        )
        assert server.received == cfg.n + len(wrong) and again["llm"]["cache_hits"] == cfg.n + len(wrong)
    counts = manifest["counts"]
    for reason in reasons:
        want = kinds.count("fails") + len(unsettled) if reason == "fails" else kinds.count(reason)
        assert counts.get(reason, 0) == want, reason
    assert counts["rederive_requested"] == len(wrong) and counts["rederived"] == len(wrong) - len(unsettled)
    assert counts["passed"] == kinds.count("good") + kinds.count("bare") + counts["rederived"]
    verdicts = {k: v for k, v in counts.items() if not k.startswith("rederive") and k != "duplicates"}
    assert sum(verdicts.values()) == 2 * cfg.n  # requested, and one verdict per request
    # solved again: a fresh conversation with the signature and docstring only, never the body or the asserts
    assert len(REDERIVED) == len(wrong)
    for messages in REDERIVED:
        assert [m["role"] for m in messages] == ["user"]
        assert re.search(r"def \w+\(x: int\) -> int:", messages[0]["content"])
        assert "2 * x" not in messages[0]["content"] and "assert" not in messages[0]["content"]
    good = [p for p, k in zip(plans, kinds) if k in ("good", "bare")]
    repaired = [p for p in wrong if p not in unsettled]
    rows = read_table(cfg.out_dir).to_pylist()
    # the canned body is the same for every name, but the names differ, so only repeated names are duplicates
    assert len(rows) + counts.get("duplicates", 0) == len(good) + len(repaired)
    assert len(rows) == manifest["documents"] >= 5
    by_id = {p.index: p for p in good + repaired}
    for r in rows:
        plan = by_id[int(r["id"].split("-")[1])]
        assert r["entry_point"] == plan.name and r["topic"] == plan.topic and r["source"] == "synthetic"
        assert json.loads(r["params"])["seed"] == plan.seed and r["model"] == "fake-model"
        if plan in repaired:
            assert r["origin"].endswith(", values re-derived") and run_exec(r["text"], plan.name)(3) == 6
            assert (
                r["tests"]
                == f"assert {plan.name}(1) == 2\nassert {plan.name}(3) == 6\nassert {plan.name}(5) == 10\n"
            )
        else:
            assert "repair" not in r["origin"] and run_exec(r["text"], plan.name)([16, 9]) == 7
    assert read_table(tmp_path / "again").equals(read_table(cfg.out_dir))
    div = manifest["diversity"]  # the canned bodies differ only in the name: n-grams repeat across names
    assert div["all"]["count"] == len(good) + len(repaired) and div["all"]["distinct_4"] < 0.5
    assert set(div["name"]) == {p.name for p in good + repaired}
    assert set(div["topic"]) == {"strings", "lists", "numbers"}


def test_synthetic_without_an_endpoint_points_to_mining(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    s.close()
    with pytest.raises(LLMUnreachableError, match=r"stage\.source=mined"):
        build_exercises(synthetic(tmp_path, n=3), llm_config(url, tmp_path / "c.sqlite", max_attempts=1))


def test_examples_are_earlier_turns_on_other_topics_and_cut_answers_keep_their_complete_lines():
    cfg = ExercisesConfig(out_dir="x", n=30)  # the default prompt: the model names the function
    plans = plan_exercises(cfg)
    # the instructions and format are the system prompt, the same for every request (a server's prompt cache
    # holds them); each request is one line
    assert "```python\ndef function_name(" in cfg.system_prompt and "{" not in cfg.system_prompt
    for p in plans:
        assert p.name is None and len(p.history) == 1 and f'"{p.topic}"' in p.prompt
        assert "\n" not in p.prompt and "\n" not in p.history[0][0]
        example = next(e for e in cfg.examples if e["answer"] == p.history[0][1])
        assert example["topic"] != p.topic and f'"{example["topic"]}"' in p.history[0][0]
    cut = '```python\ndef f(x: int) -> int:\n    """Double."""\n    return 2 * x\n\n\nassert f(1) == 2\nassert f(2) == 4\nassert f(3'
    ex = exercise_from_answer(cut, None)
    assert ex.entry_point == "f" and ex.tests == "assert f(1) == 2\nassert f(2) == 4\n"


@pytest.mark.slow
def test_the_default_local_model_settles_a_wrong_expected_value_blind(tmp_path):
    """The real default model (``llm=local``), shown only the signature and docstring, writes a second solution;
    it returns what the first did on the call whose assert was wrong and passes the other asserts, so that
    assert is corrected."""
    from collections import Counter

    from textbooks.data.app import compose
    from textbooks.data.stages.exercises import rederive_rows
    from textbooks.llm.client import LLMClient
    from textbooks.llm.server import llm_endpoint

    overrides = ["stage=exercises", "llm=local", f"paths.cache={tmp_path}", "llm.local.parallel=1"]
    llm = LLMConfig.from_dict(compose([*overrides, "llm.local.ctx_size=1024"]).llm)
    cfg = ExercisesConfig(out_dir=str(tmp_path / "out"), source="synthetic", n=1)
    answer = (
        '```python\ndef add(a: int, b: int) -> int:\n    """Return the sum of a and b."""\n    return a + b\n\n\n'
        "assert add(1, 1) == 2\nassert add(2, 3) == 6\nassert add(10, 5) == 15\n```"
    )
    ex = exercise_from_answer(answer, None)
    row = {"prompt": ex.prompt, "text": ex.text, "entry_point": ex.entry_point, "tests": ex.tests,
           "origin": "request 0", "_plan": plan_exercises(cfg)[0]}  # fmt: skip
    reasons: Counter = Counter()
    with llm_endpoint(llm) as served, LLMClient(served) as client:
        [fixed] = rederive_rows([row], cfg, client, reasons)
    assert reasons["rederive_requested"] == 1 and fixed is not None
    assert fixed["tests"] == "assert add(1, 1) == 2\nassert add(2, 3) == 5\nassert add(10, 5) == 15\n"
