"""The model an evaluation runs: a ``textbooks`` checkpoint or a ``transformers`` causal LM, on a device.

``load_lm(checkpoint=...)`` wraps a ``PhiForCausalLM`` from ``load_pretrained`` (tokenizer: its tiktoken
encoding); ``load_lm(hf_model=...)`` wraps any ``transformers`` causal LM with its tokenizer, by hub name
(``microsoft/phi-1`` where the hub is reachable) or local path. Both decode with the one loop of
``textbooks.eval.models.decoding.LM``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from textbooks.errors import ConfigError, TextbooksError
from textbooks.eval.models.codecs import Codec, HFCodec
from textbooks.eval.models.decoding import LM, TextbooksLM


class HFLM(LM):
    """A ``transformers`` causal LM (``AutoModelForCausalLM``) with its tokenizer."""

    def __init__(self, model: Any, codec: Codec | Any, *, source: str | None = None) -> None:
        self.model = model
        self.codec = codec if isinstance(codec, Codec) else HFCodec(codec, _hf_eos(model, codec))
        cfg = model.config
        self.context_length = int(
            getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048)
        )
        self.source = source

    @property
    def module(self) -> torch.nn.Module:
        return self.model

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, *, device: str = "cpu", dtype: torch.dtype | None = None
    ) -> HFLM:
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:
            raise TextbooksError("hf_model needs the transformers package: pip install -e '.[hf]'") from e
        try:
            tok = AutoTokenizer.from_pretrained(name_or_path)
            model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype or torch.float32)
        except (OSError, ValueError) as e:
            raise TextbooksError(
                f"hf_model={name_or_path!r}: cannot load it with transformers ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}). Give a local directory with config.json, the "
                "weights and the tokenizer files, or a hub id on a machine that can reach the hub"
            ) from e
        return cls(model.to(device).eval(), tok, source=name_or_path)

    def _new_cache(self, batch: int, max_len: int) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def _forward(self, ids: Tensor, mask: Tensor, positions: Tensor, cache: Any, keep: int) -> Tensor:
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=cache is not None,
            logits_to_keep=keep,
        )
        return out.logits

    def _select(self, cache: Any, rows: Tensor) -> Any:
        cache.batch_select_indices(rows)
        return cache

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "transformers",
            "path": self.source,
            "name": getattr(self.model.config, "name_or_path", None) or self.source,
            "params": sum(p.numel() for p in self.model.parameters()),
            "context": self.context_length,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "tokenizer": self.codec.name,
        }


def _hf_eos(model: Any, tokenizer: Any) -> int | None:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos = eos[0] if isinstance(eos, list | tuple) and eos else eos
    return eos


DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str | None, device: str) -> torch.dtype | None:
    """``auto`` -> bfloat16 on CUDA GPUs that support it, else float32; None keeps the weights' dtype."""
    if dtype is None:
        return None
    if dtype == "auto":
        cuda_bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r}: use one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_lm(
    checkpoint: str | os.PathLike | None = None,
    hf_model: str | None = None,
    *,
    device: str = "auto",
    dtype: str | None = "auto",
) -> LM:
    """A ``textbooks`` checkpoint (a run's ``model/`` dir or a ``.ckpt``) or a ``transformers`` model."""
    if (checkpoint is None) == (hf_model is None):
        raise ConfigError("give exactly one of checkpoint=<model dir or .ckpt> and hf_model=<hub id or path>")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if checkpoint is not None:
        return TextbooksLM.from_pretrained(checkpoint, device=dev, dtype=dt)
    return HFLM.from_pretrained(str(hf_model), device=dev, dtype=dt)
