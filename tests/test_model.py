"""The phi-1 model: sizes, parity with transformers' PhiForCausalLM (``textbooks.convert_hf``), the KV cache.

Decoding (greedy with and without the cache, batching, end-of-text, sampling) is tested on the one decoding
loop, in test_eval_generate.py."""

from __future__ import annotations

import pytest
import torch

from textbooks.convert_hf import FROM_HF, FUSED, from_hf, from_hf_state_dict, to_hf, to_hf_state_dict
from textbooks.model import KVCache, ModelConfig, PhiForCausalLM

transformers = pytest.importorskip("transformers")


def small_config(**kw) -> ModelConfig:
    base = dict(
        name="t", vocab_size=311, n_layer=3, d_model=64, n_head=4, d_mlp=256, rotary_dim=8, max_seq_len=96
    )
    return ModelConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    cfg = transformers.PhiConfig(
        vocab_size=311,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=96,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
    )
    model = transformers.PhiForCausalLM(cfg).eval()
    with torch.no_grad():  # move LayerNorms and biases off their 1/0 init so they are really compared
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_presets_count_parameters():
    with torch.device("meta"):
        phi1 = PhiForCausalLM(ModelConfig())
        small = PhiForCausalLM(
            ModelConfig(name="phi1_small", n_layer=20, d_model=1024, n_head=16, d_mlp=4096)
        )
    assert phi1.num_params() == pytest.approx(1.418e9, rel=1e-3)
    assert 0.33e9 < small.num_params() < 0.37e9
    assert phi1.config.head_dim == 64 and phi1.config.rotary_dim == 32


def test_from_hf_matches_logits_and_converts_back(hf_model):
    ours = from_hf(hf_model).eval()
    assert ours.config.rotary_dim == 8 and ours.config.vocab_size == 311
    x = torch.randint(0, 311, (3, 40))
    with torch.no_grad():
        ref = hf_model(x).logits
        assert (ours(x) - ref).abs().max() < 1e-4
        back = to_hf(ours).eval()
        assert (back(x).logits - ref).abs().max() < 1e-5
    for k, v in hf_model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_left_padded_batch_matches_hf_attention_mask(hf_model):
    ours = from_hf(hf_model).eval()
    x = torch.randint(0, 311, (2, 30))
    mask = torch.ones_like(x)
    mask[0, :9] = 0
    with torch.no_grad():
        ref = hf_model(x, attention_mask=mask).logits
        got = ours(x, attention_mask=mask)
    real = mask.bool()
    assert (got - ref)[real].abs().max() < 1e-4
    assert torch.isfinite(got).all()


def test_cache_logits_equal_prefix_logits():
    torch.manual_seed(2)
    m = PhiForCausalLM(small_config()).eval()
    x = torch.randint(0, 311, (2, 20))
    cache = KVCache(m.config, 2, 20)
    with torch.no_grad():
        full = m(x)
        parts = [m(x[:, :12], cache=cache)] + [m(x[:, i : i + 1], cache=cache) for i in range(12, 20)]
    assert cache.length == 20
    assert (torch.cat(parts, 1) - full).abs().max() < 1e-5


def test_context_and_config_errors():
    with pytest.raises(ValueError, match="unknown keys"):
        ModelConfig.from_dict({"n_layers": 3})
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=100, n_head=3)
    m = PhiForCausalLM(small_config(max_seq_len=16))
    with pytest.raises(ValueError, match="context"):
        m(torch.zeros(1, 17, dtype=torch.long))


def test_dropout_only_in_training_and_flops():
    m = PhiForCausalLM(small_config(attn_dropout=0.5, resid_dropout=0.5, embd_dropout=0.5))
    x = torch.randint(0, 311, (1, 16))
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(x), m(x))
    m.train()
    assert not torch.equal(m(x), m(x))
    n = m.num_params(exclude_embedding=True)
    assert m.flops_per_token(64) == 6 * n + 12 * 3 * 64 * 64


def test_gradients_match_hf(hf_model):
    ours = from_hf(hf_model).train()
    hf = hf_model.train()
    x = torch.randint(0, 311, (2, 24))
    try:
        hf(x, labels=x).loss.backward()
        logits = ours(x)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        layer = hf.model.layers[1].self_attn
        hf_qkv = torch.cat([layer.q_proj.weight.grad, layer.k_proj.weight.grad, layer.v_proj.weight.grad])
        assert torch.allclose(ours.blocks[1].attn.qkv.weight.grad, hf_qkv, atol=1e-5)
        assert torch.allclose(ours.embed.weight.grad, hf.model.embed_tokens.weight.grad, atol=1e-5)
    finally:
        hf.zero_grad(set_to_none=True)
        hf.eval()


def test_key_map_covers_every_parameter_both_ways(hf_model):
    ours = from_hf_state_dict(hf_model.state_dict())
    model = PhiForCausalLM(from_hf(hf_model).config)
    assert set(ours) == set(model.state_dict())  # nothing missing, nothing left over
    back = to_hf_state_dict(ours)
    assert set(back) == set(hf_model.state_dict())
    assert all(torch.equal(back[k], v) for k, v in hf_model.state_dict().items())
    n_layer = hf_model.config.num_hidden_layers
    per_layer = sum("{}" in k for k in FROM_HF) + sum(len(v) for v in FUSED.values())
    assert len(back) == len(FROM_HF) - sum("{}" in k for k in FROM_HF) + n_layer * per_layer
    with pytest.raises(ValueError, match=r"no phi-1 parameter for 'model\.layers\.0\.self_attn\.q_layernorm"):
        from_hf_state_dict({"model.layers.0.self_attn.q_layernorm.weight": torch.zeros(1)})
