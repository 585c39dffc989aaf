"""``textbooks-eval`` with a served model: the real local llama.cpp server (protocol, resume; not the
model's accuracy) and the fault-injection server (protocol errors, sanitized answers scored for real)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from openai_server import OpenAIServer, closed_port, last_user_message

from textbooks.benchmarks import load_humaneval
from textbooks.config import CONF_DIR
from textbooks.errors import ConfigError
from textbooks.eval.app import EvalError, run
from textbooks.llm.config import LocalServerConfig
from textbooks.llm.server import local_server

TINY = "smollm2-135m-instruct-q4_1"  # the server's mechanics: the fastest model to start and answer

MODEL = "SmolLM2-135M-Instruct-Q4_1"
FAST = ["llm.backoff.base=0.02", "llm.backoff.max=0.05", "llm.max_attempts=2"]


def config(tmp_path: Path, *overrides: str):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose(
            "eval",
            overrides=[
                "progress=false",
                "sandbox.workers=2",
                f"paths.runs={tmp_path / 'runs'}",
                f"paths.cache={tmp_path / 'cache'}",
                *overrides,
            ],
        )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("llama-server")
    with local_server(
        LocalServerConfig(model=TINY, parallel=2, ctx_size=4096, log_dir=str(log_dir)), alias=MODEL
    ) as s:
        yield s


# -- the real local server -------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_served_chat_model_generates_sanitized_samples_and_resumes(served, tmp_path):
    overrides = [
        f"endpoint={served.base_url}",
        f"llm.model={MODEL}",
        "limit=3",
        "generation.max_new_tokens=48",
    ]
    before = served.metrics()["llamacpp:tokens_predicted_total"]
    res = run(config(tmp_path, *overrides))
    out = Path(res["out_dir"])
    assert out == tmp_path / "runs" / "eval" / MODEL / "humaneval"
    assert res["status"] == "complete" and res["n_samples"] == 3 and "pass@1" in res["pass@k"]
    assert res["model"]["kind"] == "served" and res["model"]["api"] == "chat"
    assert res["settings"]["model"] == {
        "kind": "served",
        "name": MODEL,
        "api": "chat",
        "instruction": res["model"]["instruction"],
        "sanitize": True,
    }
    samples = read_jsonl(out / "samples.jsonl")
    assert [s["task_id"] for s in samples] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert all(s["sanitized"] and s["raw_completion"] for s in samples)
    assert all(0 < s["n_tokens"] <= 48 and s["prompt_tokens"] > 50 for s in samples)
    assert all(s["finish_reason"] in ("eos", "length") for s in samples)
    generated = served.metrics()["llamacpp:tokens_predicted_total"] - before
    assert generated == sum(s["n_tokens"] for s in samples)

    # a killed run: one problem written, state running; a fresh cache, so the server must be asked
    (out / "samples.jsonl").write_text(json.dumps(samples[0]) + "\n")
    state = json.loads((out / "generation.json").read_text())
    (out / "generation.json").write_text(json.dumps({**state, "status": "running"}))
    (out / "results.json").unlink()
    before = served.metrics()["llamacpp:tokens_predicted_total"]
    again = run(config(tmp_path, *overrides, f"paths.cache={tmp_path / 'cache2'}"))
    assert again["generation"]["resumed_problems"] == 1 and again["generation"]["generated_problems"] == 2
    generated = served.metrics()["llamacpp:tokens_predicted_total"] - before
    resumed = read_jsonl(out / "samples.jsonl")
    assert generated == sum(s["n_tokens"] for s in resumed[1:])  # only the two unfinished problems
    assert resumed[0] == samples[0] and [s["task_id"] for s in resumed] == [s["task_id"] for s in samples]
    # and a finished evaluation is skipped without a request
    before = served.metrics()["llamacpp:tokens_predicted_total"]
    assert run(config(tmp_path, *overrides))["skipped"] is True
    assert served.metrics()["llamacpp:tokens_predicted_total"] == before


def test_a_served_base_model_through_the_completions_api(served, tmp_path):
    res = run(
        config(
            tmp_path,
            f"endpoint={served.base_url}",
            f"llm.model={MODEL}",
            "api=completions",
            "limit=2",
            "generation.max_new_tokens=24",
        )
    )
    samples = read_jsonl(Path(res["out_dir"]) / "samples.jsonl")
    assert len(samples) == 2 and res["settings"]["model"]["api"] == "completions"
    assert all("raw_completion" not in s for s in samples)  # base completions are scored as written
    stops = ("\nclass", "\ndef", "\n#", "\nif", "\nprint", "\n@")
    assert all(not any(stop in s["completion"] for stop in stops) for s in samples)
    assert all(s["finish_reason"] in ("stop", "eos", "length") and s["n_tokens"] <= 24 for s in samples)


def test_llm_local_starts_the_server_for_the_generation_only(tmp_path):
    res = run(config(tmp_path, "llm=local", "limit=1", "generation.max_new_tokens=8", "llm.local.parallel=1"))
    assert res["status"] == "complete" and res["model"]["name"] == LocalServerConfig().model  # the default
    port = int(re.search(r":(\d+)/v1", res["model"]["endpoint"]).group(1))
    [log] = (tmp_path / "cache" / "llm").glob("llama-server-*.log")
    assert log.name == f"llama-server-{port}.log"
    import socket

    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # stopped before scoring


# -- protocol errors (fault-injection server) --------------------------------------------------------------


def canonical_chat_answer(messages, body) -> str:
    """A chat model that knows HumanEval: the canonical solution, in prose and a fence."""
    prompt = last_user_message(messages)
    problems = load_humaneval()
    for p in problems:
        if p.prompt.strip() in prompt:
            return f"Sure.\n```python\n{p.prompt}{p.canonical_solution}```\nThis passes the tests."
    return "I do not know."


def test_garbage_replies_stop_with_one_error_and_the_rerun_asks_only_for_the_rest(tmp_path):
    problems = load_humaneval()
    bad = problems["HumanEval/1"].prompt.strip()
    with OpenAIServer(canonical_chat_answer) as server:
        server.fault_fn = lambda prompt, attempt: "odd:not_json" if bad in prompt else None
        overrides = [f"endpoint={server.url}", "llm.model=fake-chat", "limit=4", *FAST]
        with pytest.raises(EvalError) as err:
            run(config(tmp_path, *overrides))
        message = str(err.value)
        assert "1 of 4 requests" in message and server.url in message and "rerun" in message
        assert "malformed" in message and "\n" not in message
        out = tmp_path / "runs" / "eval" / "fake-chat" / "humaneval"
        assert {s["task_id"] for s in read_jsonl(out / "samples.jsonl")} == {
            "HumanEval/0",
            "HumanEval/2",
            "HumanEval/3",
        }
        server.fault_fn = None
        server.reset_counts()
        res = run(config(tmp_path, *overrides))
        assert server.received == 1  # the other answers came from the samples file and the cache
    assert res["pass@k"] == {"pass@1": 1.0} and res["n_samples"] == 4  # sanitized answers pass for real
    assert res["generation"]["resumed_problems"] == 3


def test_an_endpoint_that_is_down_is_one_clear_error(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    with pytest.raises(EvalError) as err:
        run(config(tmp_path, f"endpoint={url}", "llm.model=m", "limit=2", *FAST))
    message = str(err.value)
    assert url in message and "endpoint=" in message and "\n" not in message


def test_sampling_sends_per_sample_seeds_and_the_completions_api_sends_stops(tmp_path):
    bodies = []

    def record(messages, body):
        bodies.append(body)
        return "    return 0\n\ndef extra():\n    pass"

    with OpenAIServer(record) as server:
        res = run(
            config(
                tmp_path,
                f"endpoint={server.url}",
                "llm.model=base",
                "api=completions",
                "limit=2",
                "generation.n=3",
                "generation.temperature=0.8",
                "ks=[1]",
            )
        )
    assert len(bodies) == 6 and len({b["seed"] for b in bodies}) == 6
    assert all(b["stop"] == ["\nclass", "\ndef", "\n#", "\nif", "\nprint", "\n@"] for b in bodies)
    assert all(b["temperature"] == 0.8 and b["top_p"] == 0.95 for b in bodies)
    samples = read_jsonl(Path(res["out_dir"]) / "samples.jsonl")
    assert [s["completion"] for s in samples] == ["    return 0\n"] * 6  # cut at "\ndef" here too
    assert all(s["finish_reason"] == "stop" for s in samples)


def test_served_and_local_models_do_not_mix(tmp_path):
    with pytest.raises(ConfigError, match="not both"):
        run(config(tmp_path, "endpoint=http://127.0.0.1:1/v1", "llm.model=m", "hf_model=x"))
    with pytest.raises(ConfigError, match="api="):
        run(config(tmp_path, "endpoint=http://127.0.0.1:1/v1", "llm.model=m", "api=chatty"))
    with pytest.raises(ConfigError, match="bpb"):
        run(config(tmp_path, "endpoint=http://127.0.0.1:1/v1", "llm.model=m", "bpb=true"))


@pytest.mark.slow
def test_a_served_models_samples_score_the_same_when_scored_again(tmp_path):
    """The default local code model's chat answers, sanitized into whole programs (most start with ``from
    typing import List``), then the samples file alone: the same verdict for every sample, the default
    ``sandbox.truncate=true`` notwithstanding, and the file says how it was made."""
    first = run(
        config(tmp_path, "llm=local", "limit=4", "generation.max_new_tokens=256", "llm.local.parallel=2")
    )
    samples = Path(first["out_dir"]) / "samples.jsonl"
    records = read_jsonl(samples)
    assert all(r["sanitized"] is True and r["prompt_format"] == "humaneval" for r in records)
    assert all(r["model"] == LocalServerConfig().model for r in records)
    assert any("\ndef " in r["completion"] and not r["completion"].startswith("def ") for r in records)
    again = run(config(tmp_path, f"samples={samples}", f"out_dir={tmp_path / 'again'}"))
    before = read_jsonl(Path(first["results_file"]))
    after = read_jsonl(Path(again["results_file"]))
    assert [(r["task_id"], r["passed"]) for r in after] == [(r["task_id"], r["passed"]) for r in before]
    assert again["pass@k"]["pass@1"] == first["pass@k"]["pass@1"] > 0  # a code model solves some of these


def test_a_served_chat_model_gets_room_for_its_prose_and_a_completion_model_the_usual_budget(tmp_path):
    from textbooks.eval.settings import CHAT_MAX_NEW_TOKENS, generation_config

    served = ["endpoint=http://127.0.0.1:1/v1", "llm.model=m"]
    assert (
        generation_config(config(tmp_path, *served), "humaneval").max_new_tokens
        == CHAT_MAX_NEW_TOKENS
        == 1024
    )
    completions = config(tmp_path, *served, "api=completions")
    assert generation_config(completions, "humaneval").max_new_tokens == 512
    assert generation_config(config(tmp_path, "checkpoint=x"), "humaneval").max_new_tokens == 512
    given = config(tmp_path, *served, "generation.max_new_tokens=300")
    assert generation_config(given, "humaneval").max_new_tokens == 300
