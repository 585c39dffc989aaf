"""The phi-1 decoder in plain PyTorch.

Each block runs attention and the MLP in parallel off one shared LayerNorm (GPT-J/CodeGen style)::

    x = x + attn(ln(x)) + mlp(ln(x))

with rotary position embeddings on the first ``rotary_dim`` dimensions of each head, GELU (tanh
approximation), a final LayerNorm and an untied LM head with bias. Attention goes through
``F.scaled_dot_product_attention`` (flash/memory-efficient kernels on GPU). A pre-allocated ``KVCache``
makes incremental decoding cost one token per step (the decoding loop is ``textbooks.eval.models.decoding``).

Architectures are config values (``ModelConfig``, the schema of ``conf/model/*.yaml``), not subclasses.
Weights convert to and from ``transformers``' ``PhiForCausalLM`` in ``textbooks.convert_hf``. Nothing here
knows about Lightning, DeepSpeed or Hydra: parallelism, precision and compilation are applied from outside.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textbooks.errors import ConfigError


@dataclass
class ModelConfig:
    """Architecture hyper-parameters. Defaults are phi-1 (1.3B): ``conf/model/*.yaml`` hold what differs."""

    name: str = "phi1"
    # embedding rows; >= the tokenizer's ids (phi-1 pads 50295 to 51200). None: the training app sizes it
    # from the tokenizer (its ids rounded up to a multiple of 64)
    vocab_size: int | None = 51200
    n_layer: int = 24
    d_model: int = 2048
    n_head: int = 32  # head_dim = d_model // n_head (64 for phi-1)
    d_mlp: int = 8192  # MLP inner width
    rotary_dim: int = 32  # leading dims of each head that get rotary embeddings (partial rotary 0.5)
    rope_theta: float = 10000.0
    max_seq_len: int = 2048  # context length (size of the rotary table)
    ln_eps: float = 1e-5
    embd_dropout: float = 0.0
    attn_dropout: float = 0.0  # on attention probabilities
    resid_dropout: float = 0.0  # on the attention and MLP outputs before the residual add
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ConfigError(f"model: d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.rotary_dim > self.head_dim or self.rotary_dim % 2:
            raise ConfigError(
                f"model: rotary_dim={self.rotary_dim} must be even and <= head_dim={self.head_dim}"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from a plain dict (a Hydra ``model`` node), naming unknown keys clearly."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ConfigError(f"model config: unknown keys {unknown}; valid keys are {sorted(fields)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class KVCache:
    """Keys and values of past positions, pre-allocated for ``max_len`` tokens.

    ``length`` is the number of positions written. ``key_mask`` (``[batch, max_len]`` bool, optional)
    marks real tokens for left-padded batches.
    """

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        max_len: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if max_len > config.max_seq_len:
            raise ValueError(f"KVCache: max_len={max_len} exceeds the model context {config.max_seq_len}")
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0

    def select(self, rows: Tensor) -> None:
        """Keep only the batch rows ``rows`` (finished sequences leave the batch)."""
        self.k, self.v = self.k[:, rows], self.v[:, rows]

    def update(self, layer: int, k: Tensor, v: Tensor, start: int) -> tuple[Tensor, Tensor]:
        """Store ``k, v`` (``[B, H, T, hd]``) at ``start`` and return all keys/values up to ``start + T``."""
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KVCache: position {end} beyond max_len={self.max_len}")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


def _rotate_half(x: Tensor) -> Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.out = nn.Linear(config.d_model, config.d_model)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None,
        cache: KVCache | None,
        layer: int,
    ) -> Tensor:
        c = self.config
        B, T, _ = x.shape
        qkv = self.qkv(x).view(B, T, 3, c.n_head, c.head_dim)
        # rotary on the first rotary_dim dims of q and k at once, written in place (rotate-half convention)
        qk = qkv[:, :, :2, :, : c.rotary_dim]
        cos, sin = cos.to(qkv.dtype), sin.to(qkv.dtype)
        qkv[:, :, :2, :, : c.rotary_dim] = qk * cos + _rotate_half(qk) * sin
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.update(layer, k, v, cache.length)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=c.attn_dropout if self.training else 0.0,
            is_causal=mask is None and T > 1,  # mask is None with T > 1 only when nothing is cached
        )
        return self.out(y.transpose(1, 2).reshape(B, T, c.d_model))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.d_model, config.d_mlp)
        self.fc2 = nn.Linear(config.d_mlp, config.d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    """One phi-1 layer: ``x + drop(attn(ln(x))) + drop(mlp(ln(x)))``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(config.d_model, eps=config.ln_eps)
        self.attn = Attention(config)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.resid_dropout)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> Tensor:
        h = self.ln(x)
        return x + self.drop(self.attn(h, cos, sin, mask, cache, layer)) + self.drop(self.mlp(h))


class PhiForCausalLM(nn.Module):
    """phi-1: token embedding, ``n_layer`` parallel blocks, final LayerNorm, untied LM head with bias."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise ConfigError(f"model {config.name}: vocab_size is not set (null is sized from a tokenizer)")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.drop = nn.Dropout(config.embd_dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.ln_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size)
        self._rope: tuple[Tensor, Tensor] | None = None  # fp32 (cos, sin), kept out of .to(dtype)
        self.reset_parameters()

    # -- initialisation ---------------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, init_std), output projections scaled by 1/sqrt(2 n_layer)."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif ".ln" in name or name.startswith("ln_f"):
                nn.init.ones_(p)
            elif name.endswith(("attn.out.weight", "mlp.fc2.weight")):
                nn.init.normal_(p, std=std / math.sqrt(2 * self.config.n_layer))
            else:
                nn.init.normal_(p, std=std)

    def rope_tables(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """The fp32 rotary ``(cos, sin)`` tables ``[max_seq_len, rotary_dim]`` on ``device`` (computed once)."""
        if self._rope is None or self._rope[0].device != device:
            c = self.config
            inv_freq = 1.0 / (
                c.rope_theta ** (torch.arange(0, c.rotary_dim, 2, device=device).float() / c.rotary_dim)
            )
            freqs = torch.outer(torch.arange(c.max_seq_len, device=device).float(), inv_freq)
            emb = torch.cat((freqs, freqs), dim=-1)
            self._rope = (emb.cos(), emb.sin())
        return self._rope

    # -- forward --------------------------------------------------------------------------------------------
    def hidden_states(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """Final-LayerNorm hidden states ``[B, T, d_model]``.

        ``attention_mask`` (``[B, past + T]``, 1 = real token) supports left-padded batches; without it
        every position is real. With ``cache``, the new tokens are appended after ``cache.length`` past ones.
        """
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {past + T} tokens exceeds the context of {self.config.max_seq_len}"
            )
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
            else:
                position_ids = torch.arange(past, past + T, device=input_ids.device).expand(B, T)
        cos_table, sin_table = self.rope_tables(input_ids.device)
        cos = cos_table[position_ids][:, :, None, None]  # [B, T, 1, 1, rotary_dim]
        sin = sin_table[position_ids][:, :, None, None]
        mask = self._attention_mask(B, T, past, attention_mask, input_ids.device)
        x = self.drop(self.embed(input_ids))
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, mask, cache, i)
        if cache is not None:
            cache.length = past + T
        return self.ln_f(x)

    @staticmethod
    def _attention_mask(
        B: int, T: int, past: int, attention_mask: Tensor | None, device: torch.device
    ) -> Tensor | None:
        """A boolean ``[B, 1, T, past + T]`` mask, or None where SDPA's own causal path applies."""
        if attention_mask is None and (past == 0 or T == 1):
            return None  # plain causal training/prefill, or one new token attending to everything
        S = past + T
        q_pos = torch.arange(past, S, device=device)[:, None]
        mask = torch.arange(S, device=device)[None, :] <= q_pos  # [T, S] causal
        mask = mask[None, None].expand(B, 1, T, S)
        if attention_mask is not None:
            mask = mask & attention_mask.bool()[:, None, None, :S]
            # a padding query may see no key at all: let it see itself so softmax stays finite
            mask = mask | (torch.arange(S, device=device)[None, :] == q_pos)[None, None]
        return mask

    def forward(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """Logits ``[B, T, vocab_size]``."""
        h = self.hidden_states(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache
        )
        return self.lm_head(h)

    # -- bookkeeping ----------------------------------------------------------------------------------------
    def num_params(self, *, exclude_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if exclude_embedding else n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward): 6N + 12 L d T (PaLM appendix B)."""
        c = self.config
        return 6 * self.num_params(exclude_embedding=True) + 12 * c.n_layer * c.d_model * seq_len
