"""The one decoding loop: greedy decoding equal to full recomputation and independent of the batch size,
reproducible sampling, end-of-text, stop sequences, prompt truncation, and a transformers model loaded by
path giving what the textbooks model gives."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from models import memorized_humaneval_model, tiny_model

from textbooks.benchmarks import HUMANEVAL_STOP, Problem, load_humaneval, truncate
from textbooks.convert_hf import from_hf
from textbooks.errors import ConfigError, TextbooksError
from textbooks.eval.models.codecs import HFCodec, TiktokenCodec
from textbooks.eval.models.completions import GenerationConfig
from textbooks.eval.models.decoding import TextbooksLM
from textbooks.eval.models.load import load_lm
from textbooks.model import PhiForCausalLM
from textbooks.tokenizer import load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: no OpenMP hand-offs


def greedy_by_recomputation(model: PhiForCausalLM, ids: list[int], n: int) -> list[int]:
    """The reference: run the model over the whole sequence at every step and take the argmax."""
    seq = list(ids)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(ids) :]


def spread_problems(n: int) -> list[Problem]:
    problems = list(load_humaneval())
    return [problems[(i * len(problems)) // n] for i in range(n)]


@pytest.fixture(scope="module")
def bpe_lm(tiny_data) -> TextbooksLM:
    """A random float64 model with the tests' 512-token BPE (the logits of a 50k vocabulary would
    dominate the time; p50k_base is used where the tokenizer matters)."""
    return TextbooksLM(tiny_model(512).double(), load_tokenizer(tiny_data["tokenizer"]))


# ----------------------------------------------------------------------------------------------- greedy


@pytest.mark.slow
def test_greedy_is_independent_of_batch_size_and_equals_full_recomputation(bpe_lm):
    prompts = [p.prompt for p in spread_problems(8)]
    assert len({len(bpe_lm.encode(p)) for p in prompts}) == 8  # different lengths: real left padding
    runs = {}
    for bs in (1, 3, 8):
        cfg = GenerationConfig(max_new_tokens=20, batch_size=bs, stop=HUMANEVAL_STOP)
        runs[bs] = [(c[0].token_ids, c[0].text, c[0].finish_reason) for c in bpe_lm.generate(prompts, cfg)]
    assert runs[1] == runs[3] == runs[8]
    no_cache = GenerationConfig(max_new_tokens=20, batch_size=3, stop=HUMANEVAL_STOP, use_cache=False)
    assert [(c[0].token_ids, c[0].text) for c in bpe_lm.generate(prompts, no_cache)] == [
        r[:2] for r in runs[1]
    ]
    # full recomputation, one unpadded prompt at a time, without stops
    plain = GenerationConfig(max_new_tokens=20, batch_size=8, stop_at_eos=False)
    ours = bpe_lm.generate(prompts, plain)
    for prompt, got in zip(prompts, ours):
        ref = greedy_by_recomputation(bpe_lm.model, bpe_lm.encode(prompt), 20)
        assert list(got[0].token_ids) == ref and got[0].finish_reason == "length"
        assert got[0].text == bpe_lm.decode(ref)
    # with stop sequences, a decoding is the one without them cut at the first stop
    for (_, text, reason), full in zip(runs[1], ours):
        assert reason != "eos" and text == truncate(full[0].text, HUMANEVAL_STOP)
        assert (reason == "stop") == (text != full[0].text)


def test_greedy_samples_are_one_decoding_copied(bpe_lm):
    prompts = [p.prompt for p in spread_problems(2)]
    out = bpe_lm.generate(prompts, GenerationConfig(max_new_tokens=8, n=3))
    for samples in out:
        assert [c.sample for c in samples] == [0, 1, 2]
        assert len({c.token_ids for c in samples}) == 1


def random_prompts(lengths: tuple[int, ...], seed: int, vocab: int = 512) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def test_kv_cache_greedy_equals_full_recompute(bpe_lm):
    prompts = random_prompts((11, 11), seed=1)  # token ids: the loop takes them as they are
    cfg = GenerationConfig(max_new_tokens=40, stop_at_eos=False)
    with_cache = [s[0].token_ids for s in bpe_lm.generate(prompts, cfg)]
    without = [
        s[0].token_ids
        for s in bpe_lm.generate(prompts, GenerationConfig(**{**cfg.as_dict(), "use_cache": False}))
    ]
    assert [len(t) for t in with_cache] == [40, 40]
    assert with_cache == without
    assert [list(t) for t in with_cache] == [greedy_by_recomputation(bpe_lm.model, p, 40) for p in prompts]


def test_batched_left_padded_decoding_equals_one_by_one(bpe_lm):
    prompts = random_prompts((5, 13, 9), seed=3)
    together = bpe_lm.generate(prompts, GenerationConfig(max_new_tokens=25, batch_size=3, stop_at_eos=False))
    for p, got in zip(prompts, together):
        alone = bpe_lm.generate([p], GenerationConfig(max_new_tokens=25, batch_size=1, stop_at_eos=False))
        assert got[0].token_ids == alone[0][0].token_ids


def test_rows_stop_at_end_of_text_and_leave_the_others_unchanged(bpe_lm):
    prompts = random_prompts((6, 6), seed=4)
    cfg = GenerationConfig(max_new_tokens=20, stop_at_eos=False)
    free = [s[0].token_ids for s in bpe_lm.generate(prompts, cfg)]
    # end-of-text: the first token row 0 makes that it has not made before, after at least one other
    k = next(i for i, t in enumerate(free[0]) if i >= 1 and t not in free[0][:i])
    eos = free[0][k]
    codec = TiktokenCodec(bpe_lm.codec.encoding)
    codec.eos_token_id = eos  # a tokenizer whose end-of-text is that token
    out = TextbooksLM(bpe_lm.model, codec).generate(prompts, GenerationConfig(max_new_tokens=20))
    assert out[0][0].token_ids == free[0][:k] and out[0][0].finish_reason == "eos"
    assert out[0][0].n_tokens == k + 1  # the end-of-text token counts, is not kept
    j = free[1].index(eos) if eos in free[1] else len(free[1])  # row 1 stops at its own, or runs on
    assert out[1][0].token_ids == free[1][:j]
    assert out[1][0].finish_reason == ("eos" if j < len(free[1]) else "length")


# --------------------------------------------------------------------------------------------- sampling


def test_sampling_is_reproducible_per_sample_whatever_the_batch(bpe_lm):
    problems = spread_problems(4)
    prompts, keys = [p.prompt for p in problems], [p.task_id for p in problems]
    cfg = GenerationConfig(max_new_tokens=12, temperature=0.8, top_p=0.95, n=3, seed=7, batch_size=4)
    a = bpe_lm.generate(prompts, cfg, keys)
    tokens = [[c.token_ids for c in s] for s in a]
    assert all(len(set(s)) > 1 for s in tokens)  # samples of one prompt differ
    again = bpe_lm.generate(prompts, cfg, keys)
    assert [[c.token_ids for c in s] for s in again] == tokens
    # other batch sizes, the prompts in another order, a subset: each sample is the same
    other = GenerationConfig(max_new_tokens=12, temperature=0.8, top_p=0.95, n=3, seed=7, batch_size=5)
    rev = bpe_lm.generate(prompts[::-1][:3], other, keys[::-1][:3])
    assert [[c.token_ids for c in s] for s in rev] == tokens[::-1][:3]
    seed8 = bpe_lm.generate(prompts, GenerationConfig(**{**cfg.as_dict(), "seed": 8}), keys)
    assert [[c.token_ids for c in s] for s in seed8] != tokens


def test_top_p_keeps_only_the_nucleus(bpe_lm):
    prompt = spread_problems(1)[0].prompt
    with torch.no_grad():
        logits = bpe_lm.model(torch.tensor([bpe_lm.encode(prompt)]))[0, -1]
    p, order = torch.softmax(logits.double(), -1).sort(descending=True)
    top_p = float(p[:4].sum() + p[4] / 2)  # the nucleus is the 5 most likely tokens
    cfg = GenerationConfig(max_new_tokens=1, temperature=1.0, top_p=top_p, n=40, stop_at_eos=False)
    firsts = {c.token_ids[0] for c in bpe_lm.generate([prompt], cfg)[0]}
    assert len(firsts) > 1 and firsts <= set(order[:5].tolist())


# ----------------------------------------------------------------------------- stops, end of text, length


@pytest.fixture(scope="module")
def memorized(tiny_data) -> TextbooksLM:
    model = memorized_humaneval_model(tiny_data["tokenizer"])
    return TextbooksLM(model, load_tokenizer(tiny_data["tokenizer"]))


@pytest.mark.slow
def test_stop_sequences_end_of_text_and_length(memorized):
    he = load_humaneval()
    tasks = ["HumanEval/0", "HumanEval/2", "HumanEval/4"]
    cfg = GenerationConfig(max_new_tokens=200, batch_size=3, stop=HUMANEVAL_STOP)
    out = memorized.generate([he[t].prompt for t in tasks], cfg)
    for t, (c,) in zip(tasks[:2], out[:2]):
        assert c.finish_reason == "stop"
        assert c.text == he[t].canonical_solution + "\n"  # cut before "\ndef"
        assert memorized.decode(c.token_ids).startswith(c.text + "\ndef")
    last = out[2][0]
    assert last.finish_reason == "eos" and last.text == he["HumanEval/4"].canonical_solution
    assert last.n_tokens == len(last.token_ids) + 1  # the end-of-text token counts, is not kept
    short = memorized.generate([he["HumanEval/0"].prompt], GenerationConfig(max_new_tokens=5))[0][0]
    assert short.finish_reason == "length" and short.n_tokens == 5
    assert he["HumanEval/0"].canonical_solution.startswith(short.text)


def test_prompts_longer_than_the_context_are_cut_from_the_left():
    enc = load_tokenizer("p50k_base")
    lm = TextbooksLM(tiny_model(enc.n_vocab, max_seq_len=64).double(), enc)
    prompt = load_humaneval()["HumanEval/10"].prompt
    ids = enc.encode_ordinary(prompt)
    assert len(ids) > 64
    c = lm.generate([prompt], GenerationConfig(max_new_tokens=16, stop_at_eos=False))[0][0]
    assert c.prompt_tokens == 48 and c.prompt_dropped == len(ids) - 48
    ref = greedy_by_recomputation(lm.model, ids[-48:], 16)
    assert list(c.token_ids) == ref
    with pytest.raises(ConfigError, match="max_new_tokens=64 leaves no room"):
        lm.generate([prompt], GenerationConfig(max_new_tokens=64))


def test_padding_rows_of_the_vocabulary_are_never_generated():
    enc = load_tokenizer("p50k_base")
    model = tiny_model(50304).double()  # p50k's 50281 ids padded to a multiple of 64, as training does
    with torch.no_grad():
        model.lm_head.bias[enc.n_vocab :] = 100.0  # an untrained model could well prefer them
        prompt_ids = enc.encode_ordinary(spread_problems(1)[0].prompt)
        assert int(model(torch.tensor([prompt_ids]))[0, -1].argmax()) >= enc.n_vocab  # and now does
    lm = TextbooksLM(model, enc)
    for cfg in (GenerationConfig(max_new_tokens=6), GenerationConfig(max_new_tokens=6, temperature=1.0)):
        (c,) = lm.generate([spread_problems(1)[0].prompt], cfg)[0]
        assert c.n_tokens == 6 and max(c.token_ids) < enc.n_vocab


# ------------------------------------------------------------------------------------------ transformers


def hf_tokenizer_and_model(out: Path, *, seed: int = 0):
    """A byte-level BPE trained on a few stdlib files and a random transformers Phi, saved to ``out``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PhiConfig, PreTrainedTokenizerFast
    from transformers import PhiForCausalLM as HFPhi

    from textbooks.io import stdlib_dir

    files = sorted((stdlib_dir() / "json").glob("*.py"))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([f.read_text() for f in files], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    torch.manual_seed(seed)
    cfg = PhiConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        eos_token_id=fast.eos_token_id,
        bos_token_id=fast.eos_token_id,
    )
    model = HFPhi(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


@pytest.mark.slow
def test_transformers_model_by_path_decodes_like_the_textbooks_model(tmp_path):
    pytest.importorskip("transformers")
    hf_dir = hf_tokenizer_and_model(tmp_path / "hf")
    hf = load_lm(hf_model=str(hf_dir), device="cpu", dtype="float64")
    assert hf.describe()["kind"] == "transformers" and hf.context_length == 256
    ours = TextbooksLM(from_hf(hf.model).double().eval(), HFCodec(hf.codec.tokenizer))
    prompts = [p.prompt for p in spread_problems(5)]
    for cfg in (
        GenerationConfig(max_new_tokens=16, batch_size=3, stop=HUMANEVAL_STOP),
        GenerationConfig(max_new_tokens=16, batch_size=2, temperature=1.0, n=2, seed=3),
        GenerationConfig(max_new_tokens=16, batch_size=5, use_cache=False),
    ):
        a, b = hf.generate(prompts, cfg), ours.generate(prompts, cfg)
        assert [[c.token_ids for c in s] for s in a] == [[c.token_ids for c in s] for s in b], cfg
        assert [[c.text for c in s] for s in a] == [[c.text for c in s] for s in b]
    by_size = [
        [s[0].token_ids for s in hf.generate(prompts, GenerationConfig(max_new_tokens=16, batch_size=bs))]
        for bs in (1, 5)
    ]
    assert by_size[0] == by_size[1]


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"top_p": 0.0}, "top_p"),
        ({"temperature": -1.0}, "temperature"),
        ({"n": 0}, "samples per prompt"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"stop": ("",)}, "stop sequences"),
    ],
)
def test_bad_generation_settings_are_named(kw, match):
    with pytest.raises(ConfigError, match=match):
        GenerationConfig(**kw)


def test_load_lm_refuses_ambiguous_or_missing_models(tmp_path):
    with pytest.raises(ConfigError, match="exactly one of"):
        load_lm()
    with pytest.raises(ConfigError, match="exactly one of"):
        load_lm(checkpoint="a", hf_model="b")
    with pytest.raises(TextbooksError, match="no model at"):
        load_lm(checkpoint=tmp_path / "nothing", device="cpu")
    with pytest.raises(TextbooksError, match="cannot load it with transformers"):
        load_lm(hf_model=str(tmp_path / "nothing"), device="cpu")
