"""The phi-1 decoder in plain PyTorch.

Each block runs attention and the MLP in parallel off one shared LayerNorm (GPT-J/CodeGen style)::

    x = x + attn(ln(x)) + mlp(ln(x))

with rotary position embeddings on the first ``rotary_dim`` dimensions of each head, GELU (tanh
approximation), a final LayerNorm and an untied LM head with bias. Attention goes through
``F.scaled_dot_product_attention`` (flash/memory-efficient kernels on GPU). A pre-allocated ``KVCache``
makes incremental decoding cost one token per step.

Architectures are config values (``ModelConfig``), not subclasses. Weights convert to and from
``transformers``' ``PhiForCausalLM`` (the implementation behind ``microsoft/phi-1``). Nothing here knows
about Lightning, DeepSpeed or Hydra: parallelism, precision and compilation are applied from outside.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    import transformers


@dataclass
class ModelConfig:
    """Architecture hyper-parameters. Defaults are phi-1 (1.3B)."""

    name: str = "phi1"
    vocab_size: int = 51200  # embedding rows; >= the tokenizer's ids (phi-1 pads 50295 to 51200)
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
            raise ValueError(f"model: d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.rotary_dim > self.head_dim or self.rotary_dim % 2:
            raise ValueError(
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
            raise ValueError(f"model config: unknown keys {unknown}; valid keys are {sorted(fields)}")
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

    # -- decoding -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        max_new_tokens: int,
        *,
        attention_mask: Tensor | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        eos_token_id: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        vocab_limit: int | None = None,
    ) -> Tensor:
        """Continue ``input_ids`` (``[B, T]``, left-padded when ``attention_mask`` is given).

        Greedy when ``temperature == 0``, else nucleus sampling. Returns the new tokens ``[B, n]``; rows that
        produced ``eos_token_id`` are filled with it afterwards, and decoding stops once every row has.
        ``vocab_limit`` (the tokenizer's ``n_vocab``) keeps the embedding's padding rows from being picked.
        """
        B, T = input_ids.shape
        max_new_tokens = min(max_new_tokens, self.config.max_seq_len - T)
        if max_new_tokens <= 0:
            return input_ids.new_empty(B, 0)
        mask = attention_mask
        cache = None
        if use_cache:
            cache = KVCache(
                self.config, B, T + max_new_tokens, device=input_ids.device, dtype=self.lm_head.weight.dtype
            )
        done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        out: list[Tensor] = []
        seq, step_in = input_ids, input_ids
        for _ in range(max_new_tokens):
            logits = self(step_in if use_cache else seq, attention_mask=mask, cache=cache)[:, -1].float()
            if vocab_limit is not None:
                logits[:, vocab_limit:] = float("-inf")
            nxt = _pick(logits, temperature, top_p, generator)
            if eos_token_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
                done |= nxt == eos_token_id
            out.append(nxt)
            step_in = nxt[:, None]
            seq = torch.cat((seq, step_in), dim=1)
            if mask is not None:
                mask = torch.cat((mask, torch.ones_like(step_in)), dim=1)
            if eos_token_id is not None and bool(done.all()):
                break
        return torch.stack(out, dim=1)

    # -- Hugging Face conversion ----------------------------------------------------------------------------
    @staticmethod
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
            raise ValueError("from_hf: qk_layernorm and grouped-query attention are not phi-1 features")
        if hf_config.hidden_act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"from_hf: activation {hf_config.hidden_act!r} is not phi-1's gelu_new")
        return ModelConfig(
            name=getattr(hf_config, "name_or_path", "") or "hf_phi",
            vocab_size=hf_config.vocab_size,
            n_layer=hf_config.num_hidden_layers,
            d_model=hf_config.hidden_size,
            n_head=hf_config.num_attention_heads,
            d_mlp=hf_config.intermediate_size,
            rotary_dim=int(head_dim * factor),
            rope_theta=theta,
            max_seq_len=hf_config.max_position_embeddings,
            ln_eps=hf_config.layer_norm_eps,
            embd_dropout=hf_config.embd_pdrop,
            attn_dropout=hf_config.attention_dropout,
            resid_dropout=hf_config.resid_pdrop,
            init_std=hf_config.initializer_range,
        )

    def hf_config(self) -> transformers.PhiConfig:
        """The equivalent ``transformers.PhiConfig``."""
        from transformers import PhiConfig

        c = self.config
        return PhiConfig(
            vocab_size=c.vocab_size,
            hidden_size=c.d_model,
            intermediate_size=c.d_mlp,
            num_hidden_layers=c.n_layer,
            num_attention_heads=c.n_head,
            num_key_value_heads=c.n_head,
            resid_pdrop=c.resid_dropout,
            embd_pdrop=c.embd_dropout,
            attention_dropout=c.attn_dropout,
            hidden_act="gelu_new",
            max_position_embeddings=c.max_seq_len,
            initializer_range=c.init_std,
            layer_norm_eps=c.ln_eps,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": c.rope_theta,
                "partial_rotary_factor": c.rotary_dim / c.head_dim,
            },
            tie_word_embeddings=False,
        )

    @classmethod
    def from_hf_state_dict(cls, state_dict: dict[str, Tensor], config: ModelConfig) -> PhiForCausalLM:
        """Build from an HF Phi state dict (``model.layers.{i}.self_attn.q_proj.weight``, ...)."""
        sd = {k.removeprefix("model."): v for k, v in state_dict.items()}
        ours: dict[str, Tensor] = {
            "embed.weight": sd["embed_tokens.weight"],
            "ln_f.weight": sd["final_layernorm.weight"],
            "ln_f.bias": sd["final_layernorm.bias"],
            "lm_head.weight": state_dict["lm_head.weight"],
            "lm_head.bias": state_dict["lm_head.bias"],
        }
        for i in range(config.n_layer):
            hf, me = f"layers.{i}.", f"blocks.{i}."
            for p in ("weight", "bias"):
                ours[me + "ln." + p] = sd[hf + "input_layernorm." + p]
                ours[me + "attn.qkv." + p] = torch.cat([sd[hf + f"self_attn.{n}_proj.{p}"] for n in "qkv"])
                ours[me + "attn.out." + p] = sd[hf + "self_attn.dense." + p]
                ours[me + "mlp.fc1." + p] = sd[hf + "mlp.fc1." + p]
                ours[me + "mlp.fc2." + p] = sd[hf + "mlp.fc2." + p]
        with torch.device("meta"):
            model = cls(config)
        model.load_state_dict(ours, assign=True)
        return model

    def hf_state_dict(self) -> dict[str, Tensor]:
        """Our weights under HF Phi names."""
        sd = self.state_dict()
        out: dict[str, Tensor] = {
            "model.embed_tokens.weight": sd["embed.weight"],
            "model.final_layernorm.weight": sd["ln_f.weight"],
            "model.final_layernorm.bias": sd["ln_f.bias"],
            "lm_head.weight": sd["lm_head.weight"],
            "lm_head.bias": sd["lm_head.bias"],
        }
        for i in range(self.config.n_layer):
            hf, me = f"model.layers.{i}.", f"blocks.{i}."
            for p in ("weight", "bias"):
                out[hf + "input_layernorm." + p] = sd[me + "ln." + p]
                for n, t in zip("qkv", sd[me + "attn.qkv." + p].chunk(3)):
                    out[hf + f"self_attn.{n}_proj.{p}"] = t
                out[hf + "self_attn.dense." + p] = sd[me + "attn.out." + p]
                out[hf + "mlp.fc1." + p] = sd[me + "mlp.fc1." + p]
                out[hf + "mlp.fc2." + p] = sd[me + "mlp.fc2." + p]
        return out

    @classmethod
    def from_hf(cls, hf_model: transformers.PhiForCausalLM) -> PhiForCausalLM:
        """Convert a ``transformers`` ``PhiForCausalLM`` (e.g. ``microsoft/phi-1``) to this class."""
        config = cls.config_from_hf(hf_model.config)
        model = cls.from_hf_state_dict(hf_model.state_dict(), config)
        return model.to(hf_model.dtype)

    def to_hf(self) -> transformers.PhiForCausalLM:
        """Convert to a ``transformers`` ``PhiForCausalLM`` with the same weights."""
        from transformers import PhiForCausalLM as HFPhi

        hf = HFPhi(self.hf_config())
        hf.load_state_dict({k: v.detach().clone() for k, v in self.hf_state_dict().items()})
        return hf.to(self.lm_head.weight.dtype)


def _pick(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> Tensor:
    """Greedy (``temperature == 0``) or nucleus sampling from ``[B, V]`` logits."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the most likely token
        sorted_p = sorted_p * keep
        choice = torch.multinomial(sorted_p, 1, generator=generator)
        return idx.gather(-1, choice).squeeze(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
