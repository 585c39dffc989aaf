"""Decoding speed: KV-cache generation against recomputing the whole prefix at every step.

Both sides run ``textbooks.eval.models.decoding.TextbooksLM.generate`` on the same randomly initialised phi model,
the same HumanEval prompt (tokenized with p50k_base) and greedy decoding for ``--new-tokens`` tokens with
no stop sequence and no end-of-text stop, so both produce exactly the same tokens (checked):

* **baseline** (``use_cache=False``): every step runs the model over prompt + everything generated so far
  and keeps the last position's logits (only that position goes through the LM head);
* **ours** (``use_cache=True``): the prompt once, then one token per step against the ``KVCache``.

Rounds alternate the two sides so that a busy machine slows both alike; medians are reported, and the
median of each round's ratio (steadier when the load drifts).
Usage: ``python benchmarks/generate.py [--rounds 2] [--new-tokens 512] [--layers 4] [--d-model 512] [--threads 1]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from textbooks.benchmarks import load_humaneval
from textbooks.eval.models.completions import GenerationConfig
from textbooks.eval.models.decoding import TextbooksLM
from textbooks.model import ModelConfig, PhiForCausalLM
from textbooks.tokenizer import load_tokenizer, padded_vocab_size


def decode(lm: TextbooksLM, prompt: str, new_tokens: int, use_cache: bool) -> tuple[float, tuple[int, ...]]:
    cfg = GenerationConfig(max_new_tokens=new_tokens, batch_size=1, stop_at_eos=False, use_cache=use_cache)
    t0 = time.perf_counter()
    (c,) = lm.generate([prompt], cfg)[0]
    wall = time.perf_counter() - t0
    assert c.n_tokens == new_tokens and c.finish_reason == "length"
    return wall, c.token_ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--task", default="HumanEval/0")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    enc = load_tokenizer("p50k_base")
    prompt = load_humaneval()[args.task].prompt
    n_prompt = len(enc.encode_ordinary(prompt))
    config = ModelConfig(
        name="bench",
        vocab_size=padded_vocab_size(enc.n_vocab),
        n_layer=args.layers,
        d_model=args.d_model,
        n_head=args.heads,
        d_mlp=4 * args.d_model,
        rotary_dim=args.d_model // args.heads // 2,
        max_seq_len=max(1024, 2 ** (n_prompt + args.new_tokens - 1).bit_length()),
    )
    torch.manual_seed(0)
    lm = TextbooksLM(PhiForCausalLM(config).eval(), enc)
    print(
        f"model: {args.layers} layers, d_model {args.d_model}, {args.heads} heads, vocab {config.vocab_size}, "
        f"{lm.model.num_params() / 1e6:.1f}M parameters, fp32; prompt {args.task} = {n_prompt} tokens, "
        f"{args.new_tokens} new tokens, batch 1, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    decode(lm, prompt, 8, True)  # warm-up (allocator, kernels)
    times: dict[bool, list[float]] = {False: [], True: []}
    tokens: dict[bool, tuple[int, ...]] = {}
    for r in range(args.rounds):
        for use_cache in (False, True):
            wall, tokens[use_cache] = decode(lm, prompt, args.new_tokens, use_cache)
            times[use_cache].append(wall)
        print(
            f"  round {r + 1}: recompute {times[False][-1]:.2f} s, KV cache {times[True][-1]:.2f} s, "
            f"{times[False][-1] / times[True][-1]:.1f}x (load average {os.getloadavg()[0]:.1f})"
        )
    assert tokens[True] == tokens[False], "the two decodings differ"
    base, ours = statistics.median(times[False]), statistics.median(times[True])
    pairwise = statistics.median(b / o for b, o in zip(times[False], times[True]))
    print(f"recompute prefix (baseline): {args.new_tokens / base:8.1f} tokens/s  ({base:.2f} s)")
    print(f"KV cache (ours):             {args.new_tokens / ours:8.1f} tokens/s  ({ours:.2f} s)")
    print(
        f"speed-up: {base / ours:.1f}x of the medians, {pairwise:.1f}x median of the rounds' ratios "
        f"(same {args.new_tokens} tokens on both sides)"
    )


if __name__ == "__main__":
    main()
