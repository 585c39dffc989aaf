"""Conversion to and from ``transformers``' ``PhiForCausalLM`` (what ``microsoft/phi-1`` loads as).

A declarative state-dict adapter, as torchtitan keeps one beside each model: ``FROM_HF`` maps every
Hugging Face parameter name (``{}`` standing for the layer index) to ours, and ``FUSED`` lists the HF
tensors that are one tensor here (q, k and v projections: our ``attn.qkv``, concatenated in that order).
Both directions read the same two tables, so a name cannot be renamed one way and not the other; likewise
``CONFIG_FIELDS`` maps the config's fields both ways.
``transformers`` is imported only to build its model or config (the ``hf`` extra).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from textbooks.errors import ConfigError
from textbooks.model import ModelConfig, PhiForCausalLM

if TYPE_CHECKING:
    import transformers

# HF name -> our name; ``{}`` is the layer index
FROM_HF: dict[str, str] = {
    "model.embed_tokens.weight": "embed.weight",
    "model.final_layernorm.weight": "ln_f.weight",
    "model.final_layernorm.bias": "ln_f.bias",
    "lm_head.weight": "lm_head.weight",
    "lm_head.bias": "lm_head.bias",
    **{
        f"model.layers.{{}}.{hf}.{p}": f"blocks.{{}}.{ours}.{p}"
        for hf, ours in (
            ("input_layernorm", "ln"),
            ("self_attn.dense", "attn.out"),
            ("mlp.fc1", "mlp.fc1"),
            ("mlp.fc2", "mlp.fc2"),
        )
        for p in ("weight", "bias")
    },
}
# our name -> the HF names concatenated (dim 0) into it
FUSED: dict[str, tuple[str, ...]] = {
    f"blocks.{{}}.attn.qkv.{p}": tuple(f"model.layers.{{}}.self_attn.{n}_proj.{p}" for n in "qkv")
    for p in ("weight", "bias")
}

# our ModelConfig field -> PhiConfig's (the rest: rotary, activation, key-value heads, tied embeddings)
CONFIG_FIELDS: dict[str, str] = {
    "vocab_size": "vocab_size",
    "n_layer": "num_hidden_layers",
    "d_model": "hidden_size",
    "n_head": "num_attention_heads",
    "d_mlp": "intermediate_size",
    "max_seq_len": "max_position_embeddings",
    "ln_eps": "layer_norm_eps",
    "embd_dropout": "embd_pdrop",
    "attn_dropout": "attention_dropout",
    "resid_dropout": "resid_pdrop",
    "init_std": "initializer_range",
}


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile(re.escape(template).replace(r"\{\}", r"(\d+)") + "$")


_FROM_HF = [(_pattern(hf), ours) for hf, ours in FROM_HF.items()]
_TO_HF = [(_pattern(ours), hf) for hf, ours in FROM_HF.items()]
_FUSED = [(_pattern(ours), parts) for ours, parts in FUSED.items()]
# each HF part of a fused tensor -> (our name, its place among the parts)
_PARTS = [(_pattern(part), ours, i) for ours, parts in FUSED.items() for i, part in enumerate(parts)]


def _rename(name: str, table: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, target in table:
        m = pattern.match(name)
        if m:
            return target.format(*m.groups())
    return None


def from_hf_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict from an HF Phi one (``model.layers.{i}.self_attn.q_proj.weight``, ...)."""
    out: dict[str, Tensor] = {}
    fused: dict[str, dict[int, Tensor]] = {}
    for name, t in state_dict.items():
        ours = _rename(name, _FROM_HF)
        if ours is not None:
            out[ours] = t
            continue
        for pattern, target, i in _PARTS:
            m = pattern.match(name)
            if m:
                fused.setdefault(target.format(*m.groups()), {})[i] = t
                break
        else:
            raise ConfigError(f"from_hf: no phi-1 parameter for {name!r} (is this a Phi checkpoint?)")
    for ours, parts in fused.items():
        out[ours] = torch.cat([parts[i] for i in sorted(parts)])
    return out


def to_hf_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """An HF Phi state dict from ours (the fused q/k/v split into three)."""
    out: dict[str, Tensor] = {}
    for name, t in state_dict.items():
        hf = _rename(name, _TO_HF)
        if hf is not None:
            out[hf] = t
            continue
        for pattern, names in _FUSED:
            m = pattern.match(name)
            if m:
                for n, piece in zip(names, t.chunk(len(names))):
                    out[n.format(*m.groups())] = piece
                break
        else:
            raise ConfigError(f"to_hf: no HF Phi name for {name!r}")
    return out


def config_from_hf(hf_config: Any) -> ModelConfig:
    """Our config from a ``transformers.PhiConfig``."""
    rope = getattr(hf_config, "rope_parameters", None) or {}
    factor = rope.get("partial_rotary_factor", getattr(hf_config, "partial_rotary_factor", 0.5))
    theta = rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    head_dim = hf_config.hidden_size // hf_config.num_attention_heads
    if (
        getattr(hf_config, "qk_layernorm", False)
        or hf_config.num_key_value_heads != hf_config.num_attention_heads
    ):
        raise ConfigError("from_hf: qk_layernorm and grouped-query attention are not phi-1 features")
    if hf_config.hidden_act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ConfigError(f"from_hf: activation {hf_config.hidden_act!r} is not phi-1's gelu_new")
    return ModelConfig(
        name=getattr(hf_config, "name_or_path", "") or "hf_phi",
        rotary_dim=int(head_dim * factor),
        rope_theta=theta,
        **{ours: getattr(hf_config, hf) for ours, hf in CONFIG_FIELDS.items()},
    )


def hf_config(config: ModelConfig) -> transformers.PhiConfig:
    """The equivalent ``transformers.PhiConfig``."""
    from transformers import PhiConfig

    c = config
    return PhiConfig(
        **{hf: getattr(c, ours) for ours, hf in CONFIG_FIELDS.items()},
        num_key_value_heads=c.n_head,
        hidden_act="gelu_new",
        rope_parameters={
            "rope_type": "default",
            "rope_theta": c.rope_theta,
            "partial_rotary_factor": c.rotary_dim / c.head_dim,
        },
        tie_word_embeddings=False,
    )


def from_hf(hf_model: transformers.PhiForCausalLM) -> PhiForCausalLM:
    """A ``transformers`` ``PhiForCausalLM`` (e.g. ``microsoft/phi-1``) as ours, in its dtype."""
    config = config_from_hf(hf_model.config)
    with torch.device("meta"):
        model = PhiForCausalLM(config)
    model.load_state_dict(from_hf_state_dict(hf_model.state_dict()), assign=True)
    return model.to(hf_model.dtype)


def to_hf(model: PhiForCausalLM) -> transformers.PhiForCausalLM:
    """A ``transformers`` ``PhiForCausalLM`` with the same weights, in our model's dtype."""
    from transformers import PhiForCausalLM as HFPhi

    hf = HFPhi(hf_config(model.config))
    hf.load_state_dict({k: v.detach().clone() for k, v in to_hf_state_dict(model.state_dict()).items()})
    return hf.to(model.lm_head.weight.dtype)
