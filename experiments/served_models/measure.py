"""The local code models through ``textbooks-eval``, beside their technical report, with every failure classified.

For each model preset (``llm=local``: Qwen2.5-Coder-0.5B-Instruct, ``llm=local_large``: 1.5B) and each
benchmark family it runs the library's own command once to generate (greedy, the chat API, answers sanitized
into whole programs as EvalPlus does) and scores the same samples file twice:

* ``benchmark=humaneval_plus``: HumanEval's prompts; ``sandbox.plus=false`` is HumanEval (the original tests),
  ``sandbox.plus=true`` HumanEval+;
* ``benchmark=mbpp_plus``: the 378 problems of MBPP+ with the prompt they ship; base tests only is the report's
  "MBPP" (EvalPlus's MBPP base), with the extra inputs MBPP+.

Every failed sample is put in one class (``classify``): the model's (a wrong answer, an exception its code
raises, a timeout, code that does not parse, no function of the asked name, the prompt's stub echoed back
with no body, an answer that loops until it is cut) or the harness's (nothing extracted from an answer that
holds code, an answer cut at ``max_new_tokens`` that was not looping, an error of the sandbox's own). A failure the harness caused
is a bug to fix, so those are printed with their task ids.

Usage: ``python experiments/served_models/measure.py [--models local,local_large] [--benchmarks humaneval_plus,mbpp_plus]
[--limit N] [--workdir DIR] [OVERRIDE ...]``: ``--limit N`` takes each benchmark's first N problems in task order (not a
random sample: HumanEval's first problems are easier than the rest). HumanEval(+) with the 0.5B model: about
10 minutes on 2 quiet cores.
"""

from __future__ import annotations

import argparse
import ast
import collections
import json
import subprocess
import sys
import time
from pathlib import Path

from textbooks.benchmarks import load_benchmark
from textbooks.eval.verdicts.sanitize import defines

# the Qwen2.5-Coder technical report (Hui et al. 2024), instruct models, unquantized (as quoted in the
# project's design notes; MBPP+ is not quoted there)
REPORT = {
    "local": {"humaneval": 61.6, "humaneval+": 57.3, "mbpp": 52.4},
    "local_large": {"humaneval": 70.7, "humaneval+": 66.5, "mbpp": 69.2},
}
# config (conf/benchmark) -> (the plus set, its base benchmark)
CONFIGS = {"humaneval_plus": ("humaneval+", "humaneval"), "mbpp_plus": ("mbpp+", "mbpp")}


def textbooks_eval(*args: str) -> dict:
    cmd = [sys.executable, "-m", "textbooks.eval.app", "progress=false", *args]
    print("$ textbooks-eval " + " ".join(cmd[4:]), flush=True)
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    out = next(a.split("=", 1)[1] for a in args if a.startswith("out_dir="))
    return json.loads((Path(out) / "results.json").read_text())


def repeats(text: str) -> bool:
    """The answer ends in a loop: in its last 600 characters, at most half the lines are distinct (a line
    over and over), or the last line runs past 300 characters (one expression growing without end). A long
    answer cut while still writing distinct lines (an if/elif ladder) is not a loop."""
    lines = [line.strip() for line in text[-600:].splitlines() if line.strip()]
    if not lines:
        return False
    return (len(lines) >= 4 and len(set(lines)) <= len(lines) / 2) or len(lines[-1]) > 300


def empty_body(code: str, entry_point: str) -> bool:
    """``entry_point`` is defined with nothing but a docstring (or ``pass``/``...``): the prompt echoed back."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == entry_point:
            return all(
                isinstance(n, ast.Pass) or (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
                for n in node.body
            )
    return False


def classify(rec: dict, entry_point: str | None = None) -> str:
    """One class per failed sample: ``model:...`` or ``harness:...``.

    ``entry_point`` is the function the problem asks for: code that does not define it at the top level is
    "no function of that name" (the sandbox then says NameError or KeyError), a NameError naming anything
    else (a missing import, a helper never written) "NameError"."""
    code, raw = rec.get("completion") or "", rec.get("raw_completion") or ""
    if not code.strip():
        return "harness: nothing extracted" if "def " in raw else "model: no code in the answer"
    if rec.get("finish_reason") == "length":
        return "model: repeats itself until cut" if repeats(raw) else "harness: cut at max_new_tokens"
    err = rec.get("error_type") or ""
    if err == "SyntaxError":
        return "model: does not parse"
    if entry_point and not defines(code, entry_point):
        return "model: no function of that name"
    if entry_point and empty_body(code, entry_point):
        return "model: the prompt echoed back, no body"
    if err in ("SandboxError", "TestError"):  # the program never ran, or the tests themselves broke
        return f"harness: {err}"
    if rec.get("status") == "timeout":
        return "model: timeout"
    if err == "NameError":
        return "model: NameError"
    if err in ("AssertionError", "", None) or rec.get("status") == "failed":
        return "model: wrong answer"
    return f"model: raises {err}"


def failures(results_file: Path, entry_points: dict[str, str]) -> collections.Counter:
    """Failed samples per class (``classify``); the task ids of the harness's are printed."""
    counts: collections.Counter = collections.Counter()
    harness = []
    for line in results_file.read_text().splitlines():
        rec = json.loads(line)
        if not rec["passed"]:
            c = classify(rec, entry_points.get(rec["task_id"]))
            counts[c] += 1
            if c.startswith("harness"):
                harness.append(rec["task_id"])
    if harness:
        print(f"  harness-caused failures in {results_file}: {harness}")
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="local")
    ap.add_argument("--benchmarks", default="humaneval_plus,mbpp_plus")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--max-new-tokens", type=int, default=1024)
    ap.add_argument("--workdir", default="runs/served_models")
    ap.add_argument(
        "overrides", nargs="*", help="more overrides for the generating call (llm.local.threads=2)"
    )
    args = ap.parse_args()
    work = Path(args.workdir).resolve()
    rows = []
    for preset in args.models.split(","):
        for bench in args.benchmarks.split(","):
            out = work / preset / bench
            common = [
                f"benchmark={bench}",
                f"paths.root={work}",
                *([f"limit={args.limit}"] if args.limit else []),
            ]
            t0 = time.time()
            plus = textbooks_eval(
                f"llm={preset}",
                *common,
                f"generation.max_new_tokens={args.max_new_tokens}",
                f"out_dir={out}",
                *args.overrides,
            )
            minutes = (time.time() - t0) / 60
            samples = out / "samples.jsonl"
            base = textbooks_eval(f"samples={samples}", *common, "sandbox.plus=false", f"out_dir={out}-base")
            plus_name, base_name = CONFIGS[bench]
            entry_points = {t: p.entry_point for t, p in load_benchmark(plus_name).problems.items()}
            for name, res in ((base_name, base), (plus_name, plus)):
                rate = 100 * res["pass@k"]["pass@1"]
                classes = failures(Path(res["results_file"]), entry_points)
                reported = REPORT.get(preset, {}).get(name)
                rows.append((preset, name, rate, reported, minutes, classes))
    print("\n| model | benchmark | pass@1 (greedy) | report | minutes | failures by class |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for preset, name, rate, reported, minutes, classes in rows:
        shown = ", ".join(f"{k} {v}" for k, v in classes.most_common())
        print(f"| {preset} | {name} | {rate:.1f} | {reported or '-'} | {minutes:.0f} | {shown} |")


if __name__ == "__main__":
    main()
