"""Small models the evaluation tests share: random, or trained to memorise given texts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from textbooks.benchmarks import load_humaneval
from textbooks.model import ModelConfig, PhiForCausalLM
from textbooks.tokenizer import eot_token, load_tokenizer


def tiny_model(vocab_size: int, *, max_seq_len: int = 512, seed: int = 0, **kw) -> PhiForCausalLM:
    """A small randomly initialised phi model (LayerNorms and biases moved off their 1/0 init)."""
    torch.manual_seed(seed)
    cfg = dict(name="tiny", n_layer=2, d_model=64, n_head=4, d_mlp=256, rotary_dim=8, max_seq_len=max_seq_len)
    model = PhiForCausalLM(ModelConfig(vocab_size=vocab_size, **{**cfg, **kw}))
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def saved_tiny_model(out: Path, vocab_size: int = 50304, tokenizer: str = "p50k_base", **kw) -> Path:
    """``tiny_model`` exported to ``out`` (config.json + model.safetensors + tokenizer), as ``checkpoint=`` takes it."""
    from textbooks.checkpoint import save_pretrained

    return save_pretrained(tiny_model(vocab_size, **kw), out, tokenizer=tokenizer)


def memorize(
    model: PhiForCausalLM, sequences: Sequence[Sequence[int]], max_steps: int = 200
) -> PhiForCausalLM:
    """Train ``model`` on ``sequences`` (one batch, padding ignored) until it has learnt them by heart."""
    T = max(len(s) for s in sequences)
    x = torch.zeros((len(sequences), T), dtype=torch.long)
    y = torch.full((len(sequences), T - 1), -100, dtype=torch.long)
    for i, s in enumerate(sequences):
        x[i, : len(s)] = torch.tensor(s)
        y[i, : len(s) - 1] = torch.tensor(s[1:])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    model.train()
    for _ in range(max_steps):
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), y.flatten(), ignore_index=-100)
        if loss.item() < 0.01:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.01, f"did not memorize: loss {loss.item():.3f}"
    return model.eval()


def memorized_humaneval_model(tokenizer_path: str | Path, vocab_size: int = 512) -> PhiForCausalLM:
    """Knows HumanEval/0 and /2 by heart as the eval sees them (prompt tokens, then the solution and the
    next ``def``, then end-of-text), and HumanEval/4's solution followed directly by end-of-text."""
    enc = load_tokenizer(tokenizer_path)
    he = load_humaneval()
    eot = eot_token(enc)
    seqs = [
        enc.encode_ordinary(he[t].prompt) + enc.encode_ordinary(he[t].canonical_solution + "\n\ndef") + [eot]
        for t in ("HumanEval/0", "HumanEval/2")
    ]
    p4 = he["HumanEval/4"]
    seqs.append(enc.encode_ordinary(p4.prompt) + enc.encode_ordinary(p4.canonical_solution) + [eot])
    return memorize(tiny_model(vocab_size), seqs)
