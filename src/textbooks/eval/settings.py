"""What an evaluation is: which mode the config asks for, its problems and prompt format, and the settings
that define it, so that a rerun with equal settings is skipped and one with other settings is refused
(``EvalError`` naming the settings that differ) unless ``force=true``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from textbooks.benchmarks import (
    Problem,
    ProblemSet,
    default_format,
    few_shot_examples,
    load_benchmark,
    prompt_formats,
    stop_sequences,
)
from textbooks.errors import ConfigError
from textbooks.eval.errors import mismatch
from textbooks.eval.models.completions import GenerationConfig
from textbooks.eval.models.load import resolve_device, resolve_dtype
from textbooks.eval.models.served import CHAT_INSTRUCTION, SERVED_APIS
from textbooks.eval.verdicts.score import SUMMARY_NAME
from textbooks.io import sha256_file


def eval_mode(cfg: DictConfig) -> str:
    """What ``cfg`` asks for: ``generate``, ``samples``, ``canonical`` or ``bpb``; keys that conflict are a
    ``ConfigError`` naming them."""
    if cfg.checkpoint is not None and cfg.hf_model is not None:
        raise ConfigError("give checkpoint= or hf_model=, not both")
    served = cfg.served_model is not None
    if served and (cfg.checkpoint is not None or cfg.hf_model is not None):
        raise ConfigError(
            "give a served model (endpoint=, llm=local) or a local one (checkpoint=, hf_model=), not both"
        )
    if served and cfg.bpb:
        raise ConfigError(
            "bpb=true needs the model's logits: give checkpoint= or hf_model=, not a served model"
        )
    if served and (cfg.samples is not None or cfg.completions is not None):
        raise ConfigError("give a served model to generate with, or samples=/completions= to score, not both")
    if cfg.api not in SERVED_APIS:
        raise ConfigError(f"api={cfg.api!r}: use chat (instruct models) or completions (base models)")
    if cfg.sanitize and cfg.completions is not None:
        raise ConfigError("sanitize=true applies to generated or given samples, not to completions=canonical")
    if served and cfg.generate:
        return "generate"
    has_model = cfg.checkpoint is not None or cfg.hf_model is not None
    if cfg.completions is not None and cfg.completions != "canonical":
        raise ConfigError(f"completions={cfg.completions!r}: the only choice is completions=canonical")
    if cfg.completions is not None and cfg.samples is not None:
        raise ConfigError("give samples=<file> or completions=canonical, not both")
    if cfg.bpb and not has_model:
        raise ConfigError("bpb=true needs a model: checkpoint=<model dir or .ckpt> or hf_model=<name or dir>")
    if cfg.completions is not None:
        return "canonical"
    if cfg.samples is not None:
        return "samples"
    if has_model and cfg.generate:
        return "generate"
    if has_model and cfg.bpb:
        return "bpb"
    raise ConfigError(
        "nothing to evaluate: give checkpoint=<run>/model or hf_model=<name> (generate and score), "
        "endpoint=<base_url> llm.model=<name> or llm=local (generate with a served model and score), "
        "samples=<file> (score it), or completions=canonical (score the reference solutions)"
    )


def load_problems(cfg: DictConfig) -> tuple[ProblemSet, str, tuple[Problem, ...]]:
    """The benchmark's problems (first ``limit``), its prompt format and the 3-shot examples if any."""
    b, data_dir = cfg.benchmark, cfg.paths.get("benchmarks")
    problems = load_benchmark(b.name, b.path, b.split, data_dir=data_dir, hub=bool(b.get("hub", False)))
    fmt = b.prompt_format or default_format(b.name)
    if fmt not in prompt_formats():
        raise ConfigError(f"benchmark.prompt_format={fmt!r}; use one of {', '.join(prompt_formats())}")
    examples = few_shot_examples(b.name, fmt, b.path, data_dir=data_dir, hub=bool(b.get("hub")))
    if cfg.limit is not None:
        if int(cfg.limit) < 1:
            raise ConfigError(f"limit={cfg.limit}: give a positive number of problems, or null for all")
        kept = dict(list(problems.problems.items())[: int(cfg.limit)])
        info = dataclasses.replace(problems.info, n_problems=len(kept))
        problems = dataclasses.replace(problems, info=info, problems=kept)
    return problems, fmt, examples


def _benchmark_key(cfg: DictConfig, problems: ProblemSet, fmt: str) -> dict[str, Any]:
    return {
        "name": problems.info.name,
        "split": problems.info.split,
        "source_sha256": problems.info.sha256,
        "prompt_format": fmt,
        "limit": cfg.limit,
        "n_problems": len(problems),
    }


# A served chat model answers in prose around a fenced program (an if/elif ladder of HumanEval/81 took 640
# tokens from Qwen2.5-Coder-0.5B): 512 tokens cut complete answers, a failure of the harness, not the model.
CHAT_MAX_NEW_TOKENS = 1024


def generation_config(cfg: DictConfig, fmt: str) -> GenerationConfig:
    """``generation.max_new_tokens`` as given, else ``CHAT_MAX_NEW_TOKENS`` for a served chat model and
    ``GenerationConfig``'s default for a completion (a local model's context is shared with the prompt)."""
    g = cfg.generation
    chat = cfg.served_model is not None and cfg.api == "chat"
    default = CHAT_MAX_NEW_TOKENS if chat else GenerationConfig.max_new_tokens
    return GenerationConfig(
        max_new_tokens=int(g.max_new_tokens) if g.max_new_tokens is not None else default,
        temperature=float(g.temperature),
        top_p=float(g.top_p),
        n=int(g.n),
        seed=int(g.seed),
        batch_size=int(g.batch_size),
        stop=stop_sequences(fmt),
    )


def sanitizing(cfg: DictConfig) -> bool:
    """``sanitize``: as given, else true for a served chat model's answers, false otherwise."""
    if cfg.sanitize is not None:
        return bool(cfg.sanitize)
    return cfg.served_model is not None and cfg.api == "chat"


def _served_fingerprint(cfg: DictConfig) -> dict[str, Any]:
    """What identifies a served model's samples: its name, the API and, for chat, the instruction (not
    the endpoint's URL: the same model served elsewhere gives the same samples)."""
    chat = {"instruction": cfg.instruction or CHAT_INSTRUCTION} if cfg.api == "chat" else {}
    return {"kind": "served", "name": cfg.served_model, "api": cfg.api, **chat, "sanitize": sanitizing(cfg)}


def eval_settings(
    cfg: DictConfig, mode: str, problems: ProblemSet, fmt: str, gen: GenerationConfig | None
) -> dict[str, Any]:
    """What defines an evaluation: a rerun with equal settings is skipped (batch size is left out)."""
    served = cfg.served_model is not None
    dtype = None if served else resolve_dtype(cfg.dtype, resolve_device(str(cfg.device)))
    return {
        "mode": mode,
        "benchmark": _benchmark_key(cfg, problems, fmt),
        "model": _served_fingerprint(cfg) if served else model_fingerprint(cfg.checkpoint, cfg.hf_model),
        "dtype": str(dtype).removeprefix("torch.") if dtype is not None else None,
        "generation": {k: v for k, v in gen.as_dict().items() if k != "batch_size"} if gen else None,
        "samples_sha256": sha256_file(cfg.samples) if mode == "samples" else None,
        **({"sanitize": True} if sanitizing(cfg) else {}),  # (absent when off: older results still match)
        "bpb": bool(cfg.bpb),
        "ks": list(cfg.ks),
        "sandbox": {
            "test_cpu_s": float(cfg.sandbox.test_cpu_s),
            "challenge": bool(cfg.sandbox.include_challenge),
            "plus": bool(cfg.sandbox.plus),
        },
    }


def previous_results(out: Path, settings: dict[str, Any], force: bool) -> dict[str, Any] | None:
    """The finished results in ``out`` with these settings (to skip), or None to run; refuses to
    overwrite an evaluation with other settings unless ``force``."""
    path = out / SUMMARY_NAME
    if force or not path.is_file():
        return None
    old = json.loads(path.read_text())
    if old.get("status") == "complete" and old.get("settings") == settings:
        return old
    if "settings" in old:
        raise mismatch(out, old["settings"], settings)
    return None


def model_fingerprint(checkpoint: str | None, hf_model: str | None) -> dict[str, Any] | None:
    """What identifies the weights: the path and the SHA-256 of the weight and config files."""
    if checkpoint is None and hf_model is None:
        return None
    kind = "textbooks" if checkpoint is not None else "transformers"
    target = Path(str(checkpoint if checkpoint is not None else hf_model))
    if not target.exists():  # a hub id (a missing checkpoint fails to load a moment later)
        return {"kind": kind, "name": str(target)}
    files = sorted(target.iterdir()) if target.is_dir() else [target]
    files = [f for f in files if f.suffix in (".safetensors", ".bin", ".ckpt", ".pt", ".json")]
    return {
        "kind": kind,
        "path": str(target.resolve()),
        "sha256": {f.name: sha256_file(f) for f in files},
    }
