"""Exported models: a directory with ``config.json`` and ``model.safetensors``.

Training exports its final (and best) weights in this form; evaluation, finetuning (``init_from``) and the
embedding route of the quality classifier load it with ``load_pretrained``. Lightning ``.ckpt`` files
(which hold the same model config in their hyper-parameters) load too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import tiktoken
import torch

from textbooks.errors import TextbooksError
from textbooks.io import atomic_path, write_json_atomic
from textbooks.model import ModelConfig, PhiForCausalLM
from textbooks.tokenizer import load_tokenizer

CONFIG = "config.json"
WEIGHTS = "model.safetensors"


def save_pretrained(
    model: PhiForCausalLM, out_dir: str | os.PathLike, *, tokenizer: str, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` (weights in their current dtype) and its config + tokenizer name to ``out_dir``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(state, str(tmp))
    write_json_atomic(
        out / CONFIG, {"model": model.config.to_dict(), "tokenizer": tokenizer, **(extra or {})}
    )
    return out


def _from_lightning_ckpt(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    hp = ckpt.get("hyper_parameters", {})
    if "model_config" not in hp:
        raise TextbooksError(
            f"{path}: not a textbooks training checkpoint (no model_config in hyper_parameters)"
        )
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    return {"model": hp["model_config"], "tokenizer": hp.get("tokenizer")}, state


def load_pretrained(
    path: str | os.PathLike, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[PhiForCausalLM, tiktoken.Encoding]:
    """The model (in eval mode) and its tokenizer from an export directory or a Lightning ``.ckpt``."""
    p = Path(path)
    if p.is_dir() and (p / CONFIG).is_file():
        from safetensors.torch import load_file

        meta = json.loads((p / CONFIG).read_text())
        state = load_file(str(p / WEIGHTS))
    elif p.is_file() and p.suffix == ".ckpt":
        meta, state = _from_lightning_ckpt(p)
    else:
        raise TextbooksError(
            f"no model at {p}: expected a directory with {CONFIG} and {WEIGHTS} (a run's model/ folder) "
            "or a Lightning .ckpt file"
        )
    with torch.device("meta"):
        model = PhiForCausalLM(ModelConfig.from_dict(meta["model"]))
    model.load_state_dict(state, assign=True)
    model = model.to(device=device, dtype=dtype) if dtype else model.to(device)
    if meta.get("tokenizer") is None:
        raise TextbooksError(f"{p}: no tokenizer recorded with the model")
    return model.eval(), load_tokenizer(meta["tokenizer"])
