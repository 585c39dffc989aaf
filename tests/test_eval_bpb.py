"""Gold-solution bits per byte: equal to a per-token computation by hand, windows for long solutions,
and a model that has learnt a solution by heart scores it far below the others."""

from __future__ import annotations

import math

import pytest
import torch
from models import memorize, tiny_model

from textbooks.benchmarks import build_prompt, load_humaneval, load_mbpp, mbpp_fewshot_examples
from textbooks.errors import ConfigError
from textbooks.eval.bpb import gold_bpb, gold_pair, gold_solution, move_whitespace, sequence_nats
from textbooks.eval.models.decoding import TextbooksLM
from textbooks.tokenizer import load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: no OpenMP hand-offs


@pytest.fixture(scope="module")
def p50k_lm() -> TextbooksLM:
    return TextbooksLM(tiny_model(50304).double(), load_tokenizer("p50k_base"))


def by_hand(lm: TextbooksLM, context: str, solution: str) -> tuple[float, int]:
    """-sum ln p of the solution's tokens, one unpadded forward over the whole text; and its bytes."""
    stripped = context.rstrip()
    scored = context[len(stripped) :] + solution
    ctx = lm.encode(stripped)
    whole = lm.encode(stripped + scored)
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(torch.tensor([whole]))[0].double(), -1)
    nats = -sum(float(logp[t - 1, whole[t]]) for t in range(len(ctx), len(whole)))
    return nats, len(scored.encode())


def test_bpb_equals_a_per_token_computation(p50k_lm):
    he = list(load_humaneval())[:5]
    mbpp = list(load_mbpp(split="test"))[:4]
    for problems in (he, mbpp):
        report = gold_bpb(p50k_lm, problems, batch_size=3)
        for p, r in zip(problems, report.problems):
            nats, n_bytes = by_hand(p50k_lm, *gold_pair(p))
            assert r.task_id == p.task_id and r.bytes == n_bytes
            assert r.nats == pytest.approx(nats, rel=1e-9)
            assert r.bpb == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-9)
            assert r.context_dropped == 0
        total_bits = sum(r.nats for r in report.problems) / math.log(2)
        assert report.bpb == pytest.approx(total_bits / sum(r.bytes for r in report.problems))
        assert report.mean_bpb == pytest.approx(sum(r.bpb for r in report.problems) / len(problems))
        per_byte = sum(r.tokens for r in report.problems) / sum(r.bytes for r in report.problems)
        assert report.bpb == pytest.approx(math.log2(50304) * per_byte, rel=0.05)  # a random model
    # the batch does not change the numbers
    one = gold_bpb(p50k_lm, he, batch_size=1)
    assert [r.nats for r in one.problems] == pytest.approx([r.nats for r in gold_bpb(p50k_lm, he).problems])


def test_what_is_scored_for_each_benchmark():
    p = load_humaneval()["HumanEval/0"]
    context, solution = gold_pair(p)
    assert context == p.prompt and solution == p.canonical_solution
    assert move_whitespace(context, solution) == (p.prompt.rstrip(), "\n" + p.canonical_solution)
    mbpp = load_mbpp(split="test")["Mbpp/11"]
    assert "\r\n" in mbpp.canonical_solution and "\r" not in gold_solution(mbpp)
    assert gold_pair(mbpp)[0] == build_prompt(mbpp, "mbpp-0shot")
    examples = mbpp_fewshot_examples(load_mbpp(split="prompt"))
    assert gold_pair(mbpp, "mbpp-3shot", examples)[0].endswith("[BEGIN]\n")


def test_solutions_longer_than_the_context_are_scored_in_windows():
    enc = load_tokenizer("p50k_base")
    lm = TextbooksLM(tiny_model(50304, max_seq_len=32).double(), enc)
    problems = [load_humaneval()[t] for t in ("HumanEval/0", "HumanEval/12")]
    report = gold_bpb(lm, problems, batch_size=4)
    for p, r in zip(problems, report.problems):
        ctx = enc.encode_ordinary(p.prompt.rstrip())
        whole = enc.encode_ordinary(p.prompt.rstrip() + "\n" + p.canonical_solution)
        P, S, C, h = len(ctx), len(whole) - len(ctx), 32, 16
        assert S > C  # several windows
        nats = 0.0
        for t in range(P, P + S):  # target t's window: chunks of h = C / 2 targets from P, C tokens before
            t1 = min(P + S, P + ((t - P) // h + 1) * h)
            start = max(0, t1 - 1 - C)
            assert t - start >= h
            with torch.no_grad():
                logits = lm.model(torch.tensor([whole[start:t]]))[0, -1].double()
            nats -= float(torch.log_softmax(logits, -1)[whole[t]])
        assert r.nats == pytest.approx(nats, rel=1e-9) and r.tokens == S
        assert r.context_dropped == P + h - 1 - C and r.context_tokens == C - h + 1


def test_a_memorized_solution_gets_a_much_lower_bpb(tiny_data):
    enc = load_tokenizer(tiny_data["tokenizer"])
    problems = list(load_humaneval())[:12]
    target = problems[3]
    lm = TextbooksLM(tiny_model(512), enc)
    before = {r.task_id: r.bpb for r in gold_bpb(lm, problems).problems}
    # train on the text as it appears in data: prompt and solution tokenized together
    memorize(lm.model, [enc.encode_ordinary(target.prompt + target.canonical_solution)])
    after = {r.task_id: r.bpb for r in gold_bpb(lm, problems).problems}
    others = sorted(v for k, v in after.items() if k != target.task_id)
    assert after[target.task_id] < 0.1 < others[0]
    assert after[target.task_id] < others[len(others) // 2] / 20
    assert before[target.task_id] > 0.5 * sorted(before.values())[len(before) // 2]  # not special before


def test_bad_batch_size_is_named(p50k_lm):
    with pytest.raises(ConfigError, match="batch_size"):
        sequence_nats(p50k_lm, [("a", "b")], batch_size=0)
