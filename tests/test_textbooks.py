"""Stage ``textbooks``: diversified prompts, filtering of short and duplicate answers, cache reruns and a
Ctrl-C'd run, against a local OpenAI-compatible server with canned answers keyed off the prompt."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from openai_server import OpenAIServer, last_user_message

from textbooks.data.app import compose, run
from textbooks.data.engine.parquet import read_table
from textbooks.data.stages.textbooks import TextbooksConfig, duplicates, synthesize
from textbooks.data.stages.textbooks_plan import plan_requests, request_seed
from textbooks.data.text.minhash import Duplicates, deduplicate
from textbooks.errors import ConfigError
from textbooks.llm.config import Backoff, LLMConfig

SRC = Path(__file__).resolve().parents[1] / "src"
TOPICS = ["recursion", "dictionaries", "sets", "loops", "functions", "strings"]
AUDIENCES = ["beginners", "students", "analysts"]
PROMPT = 'Write a textbook section on "{topic}" for {audience}.{snippet}'

WORDS = [
    "python",
    "list",
    "value",
    "loop",
    "index",
    "function",
    "return",
    "string",
    "number",
    "key",
    "print",
    "result",
    "example",
    "step",
]
SHARED = " ".join(WORDS[i % len(WORDS)] + str(i % 7) for i in range(150))


def canned_section(messages: list[dict], body: dict) -> str:
    """Deterministic sections: recursion is too short, dictionaries are always the same text, sets
    differ only in their last word (near-duplicates); the rest are unique, with code that runs except for
    loops for beginners (no code), functions (a syntax error for students, code that needs earlier context
    for analysts) and strings for analysts (code that fails)."""
    prompt = last_user_message(messages)
    topic, audience = re.search(r'on "([^"]+)" for ([^.]+)\.', prompt).groups()
    if topic == "recursion":
        return "Recursion: see recursion."
    if topic == "dictionaries":
        return f"# Dictionaries\n\n{SHARED}\n\n```python\nd = {{'a': 1}}\nprint(d['a'])\n```"
    if topic == "sets":
        return f"# Sets\n\n```python\nprint(len({{1, 2}}))\n```\n\n{SHARED} for {audience}"
    h = hashlib.sha256(f"{prompt}|{body.get('seed')}".encode()).digest()
    text = " ".join(WORDS[b % len(WORDS)] + str(b) for b in h * 6)
    code = CODE.get((topic, audience), f"print({h[0]})")
    return f"# {topic.title()} for {audience}\n\n{text}" + (f"\n\n```python\n{code}\n```" if code else "")


CODE = {  # the code of a section by (topic, audience) when it is not a print that runs
    ("loops", "beginners"): "",
    ("functions", "students"): "def f(:\n    pass",
    ("functions", "analysts"): "print(total)",
    ("strings", "analysts"): "assert 'a'.upper() == 'a'",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, stdlib_dir) -> Path:
    """30 real standard-library modules (under 40 kB each) to draw snippets from."""
    root = tmp_path_factory.mktemp("corpus")
    for p in [p for p in sorted(stdlib_dir.glob("*.py")) if p.stat().st_size < 40_000][:30]:
        (root / p.name).write_bytes(p.read_bytes())
    return root


def make(tmp_path: Path, out: str = "textbooks", **kw) -> TextbooksConfig:
    defaults = {"n": 36, "topics": TOPICS, "audiences": AUDIENCES, "prompt": PROMPT, "min_chars": 200}
    return TextbooksConfig(out_dir=str(tmp_path / out), sampling={"temperature": 1.0}, **{**defaults, **kw})


def llm_config(url: str, cache: Path) -> LLMConfig:
    return LLMConfig(
        base_url=url, model="fake-model", cache=str(cache), progress=False, backoff=Backoff(base=0.01)
    )


def test_plans_are_diverse_seeded_and_stable_per_index():
    plans = plan_requests(make(Path("/x"), n=60), [])
    assert len({p.topic for p in plans}) == len(TOPICS) and len({p.audience for p in plans}) == len(AUDIENCES)
    assert len({p.seed for p in plans}) == 60 and plans[5].seed == request_seed(0, 5)
    assert plans == plan_requests(make(Path("/x"), n=60), [])
    assert plans[:20] == plan_requests(make(Path("/x"), n=20), [])  # more requests never change earlier ones
    other = plan_requests(make(Path("/x"), n=60, seed=1), [])
    assert [(p.topic, p.audience) for p in other] != [(p.topic, p.audience) for p in plans]
    assert all(p.prompt == PROMPT.format(topic=p.topic, audience=p.audience, snippet="") for p in plans)


def test_sections_are_duplicates_as_the_dedup_stage_defines_them():
    def verdicts(cfg: TextbooksConfig, texts: list[str]) -> list[str | None]:
        return [v.reason for v in deduplicate(texts, duplicates(cfg))]

    loops = canned_section([{"role": "user", "content": 'on "loops" for x.'}], {})
    texts = [SHARED, "\n" + SHARED + "  \n\n", SHARED + " extra", loops]
    assert verdicts(make(Path("/x")), texts) == [None, "exact", "near", None]
    assert verdicts(make(Path("/x"), near_dup_threshold=None), texts) == [None, "exact", None, None]
    definition = duplicates(make(Path("/x"), near_dup_threshold=0.9))
    assert definition == Duplicates(threshold=0.9)  # the dedup stage's shingles, permutations and seed


@pytest.mark.slow
def test_stage_keeps_long_unique_sections_with_their_provenance(tmp_path):
    cfg = make(tmp_path)
    plans = plan_requests(cfg, [])
    with OpenAIServer(canned_section) as server:
        manifest = synthesize(cfg, llm_config(server.url, tmp_path / "c.sqlite"), progress=False)
        assert server.received == 36
    rows = read_table(cfg.out_dir).to_pylist()
    by_topic = {t: sum(p.topic == t for p in plans) for t in TOPICS}
    assert manifest["short"] == by_topic["recursion"]
    # sets: the same text per audience; the first is kept, its repeats are exact duplicates of it and every
    # other audience's (a near duplicate of it, whose own repeats are near duplicates again)
    sets = [p.audience for p in plans if p.topic == "sets"]
    first_sets = sets.count(sets[0])
    assert manifest["exact_dups"] == by_topic["dictionaries"] - 1 + first_sets - 1
    assert manifest["near_dups"] == len(sets) - first_sets >= 1
    assert manifest["failed"] == 0 and manifest["requested"] == manifest["answered"] == 36
    by_pair = {pair: sum((p.topic, p.audience) == pair for p in plans) for pair in CODE}
    assert manifest["no_code"] == by_pair["loops", "beginners"] >= 1
    assert manifest["syntax"] == by_pair["functions", "students"] >= 1
    assert manifest["fails"] == by_pair["strings", "analysts"] >= 1
    assert manifest["unrun"] == by_pair["functions", "analysts"] >= 1
    kept = 36 - by_topic["recursion"] - (by_topic["dictionaries"] - 1) - (by_topic["sets"] - 1)
    kept -= manifest["no_code"] + manifest["syntax"] + manifest["fails"]
    assert len(rows) == manifest["documents"] == kept == manifest["ran"] + manifest["unrun"]
    assert manifest["topics"] == dict(sorted(by_topic.items()))
    div = manifest["diversity"]  # of every answer: dictionaries always the same text, loops never repeated
    n = by_topic["dictionaries"]
    assert div["topic"]["dictionaries"]["near_duplicate_rate"] == round((n - 1) / n, 4)
    assert div["topic"]["loops"]["near_duplicate_rate"] == 0.0
    assert div["topic"]["loops"]["distinct_4"] > div["topic"]["dictionaries"]["distinct_4"]
    assert div["all"]["count"] == 36 and set(div["audience"]) == set(AUDIENCES)
    first = rows[0]
    plan = plans[int(first["id"].split("-")[1])]
    assert (first["topic"], first["audience"], first["prompt"]) == (plan.topic, plan.audience, plan.prompt)
    assert json.loads(first["params"]) == {"temperature": 1.0, "max_tokens": 1024, "seed": plan.seed}
    assert first["source"] == "synthetic-textbook" and first["model"] == "fake-model"
    assert first["text"] == canned_section([{"role": "user", "content": plan.prompt}], {"seed": plan.seed})
    assert all(r["snippet"] is None for r in rows)


def test_snippets_come_from_the_seed_corpus(tmp_path, corpus):
    cfg = make(
        tmp_path,
        n=12,
        seed_input=str(corpus),
        snippet_fraction=0.5,
        snippet_lines=15,
        snippet_template="\n\nUse this code:\n{code}",
    )
    with OpenAIServer(canned_section) as server:
        manifest = synthesize(cfg, llm_config(server.url, tmp_path / "c.sqlite"), progress=False)
    assert 1 <= manifest["with_snippet"] < 12 and manifest["snippet_pool"] > 30
    assert manifest["inputs"][0]["path"] == str(corpus)
    with_snippet = [p for p in plan_requests(cfg, _pool(cfg)) if p.snippet is not None]
    assert len(with_snippet) == manifest["with_snippet"]
    for p in with_snippet:
        assert p.snippet.code in Path(p.snippet.source).read_text()
        assert len(p.snippet.code.splitlines()) <= 15 and p.prompt.endswith(
            "Use this code:\n" + p.snippet.code
        )


def _pool(cfg: TextbooksConfig):
    from textbooks.data.engine.reader import ReadStats
    from textbooks.data.stages.textbooks_plan import snippet_pool

    return snippet_pool(cfg, ReadStats())


@pytest.mark.slow
def test_rerun_is_skipped_and_a_fresh_output_costs_no_requests(tmp_path):
    cache = tmp_path / "c.sqlite"
    with OpenAIServer(canned_section) as server:
        first = synthesize(make(tmp_path), llm_config(server.url, cache), progress=False)
        assert synthesize(make(tmp_path), llm_config(server.url, cache), progress=False) == first  # skipped
        second = synthesize(make(tmp_path, out="again"), llm_config(server.url, cache), progress=False)
        assert server.received == 36 and second["llm"]["cache_hits"] == 36
    assert read_table(tmp_path / "again").equals(read_table(tmp_path / "textbooks"))


def test_bad_configs_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="topic"):
        make(tmp_path, topics=[])
    with pytest.raises(ConfigError, match="snippet"):
        TextbooksConfig(
            out_dir="x", topics=["a"], audiences=["b"], prompt="{topic} {audience}", seed_input="corpus"
        )


def _app(tmp_path: Path, url: str, out: str, cache: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "textbooks.data.app",
        "stage=textbooks",
        f"paths.data={tmp_path}",
        f"paths.cache={tmp_path / cache}",
        f"stage.out_dir={tmp_path / out}",
        "stage.n=40",
        "stage.min_chars=200",
        f"stage.topics=[{','.join(TOPICS)}]",
        f"stage.audiences=[{','.join(AUDIENCES)}]",
        f"stage.prompt='{PROMPT}'",
        f"llm.base_url={url}",
        "llm.model=fake-model",
        "llm.concurrency=2",
        "progress=false",
    ]


@pytest.mark.slow
def test_interrupted_stage_reruns_to_the_same_output(tmp_path):
    """Ctrl-C (SIGINT) `textbooks-data stage=textbooks` midway; the rerun asks only for the rest and writes
    exactly what an uninterrupted run writes."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    interrupted = threading.Event()

    def held_back(messages: list[dict], body: dict) -> str:
        # past 12 answers, hold every request until just after the signal: the stage cannot finish first
        if server.answered >= 12:
            interrupted.wait(60)
        return canned_section(messages, body)

    with OpenAIServer(held_back, delay=0.04) as server:
        proc = subprocess.Popen(
            _app(tmp_path, server.url, "textbooks", "cache"), env=env, stderr=subprocess.PIPE
        )
        try:
            deadline = time.monotonic() + 60
            while server.answered < 12 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.01)
            proc.send_signal(signal.SIGINT)
            # let the held requests go a second later: a thread of the stage waiting on one would keep the
            # interrupted process from exiting (a terminal's Ctrl-C reaches every process of the group)
            threading.Timer(1.0, interrupted.set).start()
            _, stderr = proc.communicate(timeout=30)
            answered_before = server.answered
        finally:
            interrupted.set()
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode != 0 and b"KeyboardInterrupt" in stderr, stderr.decode()[-2000:]
        assert not (tmp_path / "textbooks" / "manifest.json").exists()
        server.reset_counts()
        done = subprocess.run(
            _app(tmp_path, server.url, "textbooks", "cache"),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert 40 - answered_before <= server.received <= 40 - answered_before + 2
        reference = run(compose(_app(tmp_path, server.url, "reference", "fresh")[3:]))
        assert reference["llm"]["cache_hits"] == 0
    assert read_table(tmp_path / "textbooks").equals(read_table(tmp_path / "reference"))
    manifest = json.loads((tmp_path / "textbooks" / "manifest.json").read_text())
    assert {k: manifest[k] for k in ("documents", "short", "exact_dups", "near_dups")} == {
        k: reference[k] for k in ("documents", "short", "exact_dups", "near_dups")
    }
