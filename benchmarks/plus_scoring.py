"""HumanEval+ / MBPP+ scoring against EvalPlus's own evaluator: per-sample agreement and wall time.

Samples: for every problem, ``--per-problem`` (10) variants of the reference solution made with a fixed
seed: the reference itself, then mutants drawn from ``KINDS`` (a flipped comparison, an off-by-one
constant, a swapped operator, floats nudged by 1e-9 .. 1e-3, ints returned as floats, slow variants
(sleeps, repeated work), and misbehaving ones: hanging, looping, raising, calling ``exit()`` or
``os._exit`` on the k-th call, returning None, an iterator or a tuple, reading stdin, opening files,
mutating the input, eating memory, lowering the recursion limit). Each sample's completion is the whole
mutated program after the prompt, so both harnesses execute exactly the same code.

Baseline: ``evalplus.evaluate`` from ``evalplus==0.3.1`` (PyPI) in the benchmark's own virtual
environment (``--evalplus-venv``, created on first use with the packages its evaluator imports), pointed
at the same data files with ``HUMANEVAL_OVERRIDE_PATH`` / ``MBPP_OVERRIDE_PATH`` (it never downloads),
with an empty cache directory (so it computes its ground truth, as ours computes its references),
``--parallel`` = our workers, ``--min-time-limit 4`` (its default is 1 s; the brief and its later
releases use 4 s). Ours: ``textbooks.eval.verdicts.score.score_samples`` with a fresh ``Sandbox``.

Prints the agreement on ``passed`` (base + extra inputs) and on the base verdict, every sample where the
two differ, and the wall-time ratio. Not run by the test suite.

Usage: ``python benchmarks/plus_scoring.py [--data-dir DIR] [--benchmarks humaneval+
mbpp+] [--per-problem 10] [--limit N] [--workers N] [--out DIR]``
"""

from __future__ import annotations

import argparse
import ast
import collections
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from textbooks.benchmarks import DATA_DIR, FILENAMES, load_benchmark, reference_code
from textbooks.eval.verdicts.score import score_samples
from textbooks.sandbox import Sandbox, default_workers

REPO = Path(__file__).resolve().parents[1]
EVALPLUS = "evalplus==0.3.1"
# What ``evalplus.evaluate`` imports (its model providers are left out: nothing here generates).
EVALPLUS_DEPS = (
    "numpy",
    "psutil",
    "tqdm",
    "termcolor",
    "fire",
    "appdirs",
    "wget",
    "tempdir",
    "multipledispatch",
    "datasets",
    "tree-sitter>=0.22.0",
    "tree-sitter-python>=0.21.0",
    "rich",
)

# (kind, weight): the reference itself is always sample 0
KINDS = [
    ("compare", 12),
    ("const", 12),
    ("binop", 10),
    ("near_float", 10),
    ("int_float", 3),
    ("tuple_result", 3),
    ("iterator_result", 3),
    ("none_result", 3),
    ("repeat3", 4),
    ("repeat8", 2),
    ("sleep_small", 2),
    ("hang_kth", 2),
    ("loop_kth", 2),
    ("raise_kth", 3),
    ("exit_kth", 2),
    ("os_exit_kth", 2),
    ("stdin", 1),
    ("open_file", 1),
    ("mutate_input", 3),
    ("print_spam", 2),
    ("memory", 1),
    ("recursion_limit", 2),
    ("stateful", 2),
    ("main_block", 2),
]

FLIP = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.FloorDiv: ast.Div, ast.Div: ast.FloorDiv, ast.Mult: ast.Add}

WRAPPER = """
import time as _t, sys as _s
_state = {{"depth": 0, "calls": 0}}


def _near(x, eps):
    if type(x) is float:
        return x + eps
    if isinstance(x, (list, tuple)):
        return type(x)(_near(v, eps) for v in x)
    return x


def {name}(*args, **kwargs):
    if _state["depth"]:
        return _orig_{name}(*args, **kwargs)
    _state["depth"] += 1
    _state["calls"] += 1
    try:
{pre}
        _r = _orig_{name}(*args, **kwargs)
{post}
        return _r
    finally:
        _state["depth"] -= 1
"""


def _indent(code: str) -> str:
    return (
        "\n".join("        " + line for line in code.strip().splitlines()) if code.strip() else "        pass"
    )


def _entry_node(tree: ast.Module, name: str) -> ast.FunctionDef | None:
    return next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)


def ast_mutant(code: str, name: str, kind: str, rng: random.Random) -> str | None:
    """A flipped comparison, an off-by-one int constant or a swapped operator in the entry function."""
    tree = ast.parse(code)
    fn = _entry_node(tree, name)
    if fn is None:
        return None
    if kind == "compare":
        nodes = [n for n in ast.walk(fn) if isinstance(n, ast.Compare) and type(n.ops[0]) in FLIP]
    elif kind == "const":
        nodes = [
            n
            for n in ast.walk(fn)
            if isinstance(n, ast.Constant) and type(n.value) is int and not isinstance(n.value, bool)
        ]
    else:
        nodes = [n for n in ast.walk(fn) if isinstance(n, ast.BinOp) and type(n.op) in SWAP]
    if not nodes:
        return None
    node = rng.choice(nodes)
    if kind == "compare":
        node.ops[0] = FLIP[type(node.ops[0])]()
    elif kind == "const":
        node.value += rng.choice((-1, 1))
    else:
        node.op = SWAP[type(node.op)]()
    return ast.unparse(tree)


def wrapped(code: str, name: str, kind: str, rng: random.Random) -> str | None:
    """The reference with its entry function wrapped: something before or after each top-level call."""
    tree = ast.parse(code)
    fn = _entry_node(tree, name)
    if fn is None:
        return None
    fn.name = f"_orig_{name}"
    k = rng.randint(1, 12)
    pre, post = "", ""
    if kind == "near_float":
        post = f"_r = _near(_r, {rng.choice((1e-9, 5e-7, 3e-6, 1e-3))!r})"
    elif kind == "int_float":
        post = "_r = float(_r) if type(_r) is int else int(_r) if type(_r) is float else _r"
    elif kind == "tuple_result":
        post = "_r = tuple(_r) if isinstance(_r, list) else _r"
    elif kind == "iterator_result":
        post = "_r = iter(_r) if isinstance(_r, (list, tuple, str)) else _r"
    elif kind == "none_result":
        post = f"_r = None if _state['calls'] % {k} == 0 else _r"
    elif kind == "repeat3":
        post = "for _ in range(2):\n    _orig_{n}(*copy_args(args), **kwargs)".replace("{n}", name)
    elif kind == "repeat8":
        post = "for _ in range(7):\n    _orig_{n}(*copy_args(args), **kwargs)".replace("{n}", name)
    elif kind == "sleep_small":
        pre = "_t.sleep(0.001)"
    elif kind == "hang_kth":
        pre = f"if _state['calls'] == {k}:\n    _t.sleep(30)"
    elif kind == "loop_kth":
        pre = f"if _state['calls'] == {k}:\n    while True:\n        pass"
    elif kind == "raise_kth":
        pre = f"if _state['calls'] == {k}:\n    raise ValueError('boom')"
    elif kind == "exit_kth":
        pre = f"if _state['calls'] == {k}:\n    exit(0)"
    elif kind == "os_exit_kth":
        pre = f"if _state['calls'] == {k}:\n    import os\n    os._exit(0)"
    elif kind == "stdin":
        pre = f"if _state['calls'] == {k}:\n    _s.stdin.read()"
    elif kind == "open_file":
        pre = f"if _state['calls'] == {k}:\n    open('scratch.txt', 'w').write('x')"
    elif kind == "mutate_input":
        post = "for _a in args:\n    if isinstance(_a, list):\n        _a.clear()"
    elif kind == "print_spam":
        pre = "print('x' * 2000)"
    elif kind == "memory":  # at import: a quarter GiB (fine) or 6 GiB (over both harnesses' 4 GiB)
        return (
            ast.unparse(tree).replace(f"_orig_{name}", name)
            + f"\n_big = bytearray({rng.choice((1 << 28, 6 << 30))})\n"
        )
    elif kind == "recursion_limit":
        pre = "_s.setrecursionlimit(60)"
    elif kind == "stateful":
        post = f"_r = None if _state['calls'] > {rng.randint(20, 200)} else _r"
    elif kind == "main_block":
        return (
            ast.unparse(tree).replace(f"_orig_{name}", name)
            + '\n\nif __name__ == "__main__":\n    while True:\n        pass\n'
        )
    else:
        return None
    helper = (
        "\n\nimport copy as _copy\n\n\ndef copy_args(a):\n    return _copy.deepcopy(a)\n"
        if "copy_args" in post
        else ""
    )
    return ast.unparse(tree) + helper + WRAPPER.format(name=name, pre=_indent(pre), post=_indent(post))


def make_samples(problems: list[Any], per_problem: int, seed: int) -> list[dict[str, Any]]:
    kinds, weights = zip(*KINDS)
    rows = []
    for p in problems:
        rng = random.Random(f"{seed}:{p.task_id}")
        code = reference_code(p)
        made = [("reference", code)]
        tries = 0
        while len(made) < per_problem and tries < 100:
            tries += 1
            kind = rng.choices(kinds, weights)[0]
            f = ast_mutant if kind in ("compare", "const", "binop") else wrapped
            try:
                m = f(code, p.entry_point, kind, rng)
            except (SyntaxError, ValueError):
                m = None
            if m is not None:
                made.append((kind, m))
        for kind, m in made:
            rows.append({"task_id": p.task_id, "completion": "\n" + m + "\n", "mutation": kind})
    return rows


# ----------------------------------------------------------------------------------------------------------


def evalplus_python(venv: Path) -> str:
    py = venv / "bin" / "python"
    if (
        py.exists()
        and subprocess.run([py, "-c", "import evalplus.evaluate"], capture_output=True).returncode == 0
    ):
        return str(py)
    print(f"creating {venv} with {EVALPLUS} (its evaluator's imports only) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--no-deps", EVALPLUS], check=True)
    subprocess.run([*pip, *EVALPLUS_DEPS], check=True)
    return str(py)


def run_evalplus(py: str, name: str, data: Path, samples: Path, workers: int) -> tuple[float, dict[str, Any]]:
    """Wall seconds and the parsed ``*_eval_results.json`` of ``evalplus.evaluate``."""
    result = samples.with_name(samples.name.replace(".jsonl", "_eval_results.json"))
    result.unlink(missing_ok=True)
    cache = Path(tempfile.mkdtemp(prefix="evalplus-cache-"))
    env = {
        **os.environ,
        "XDG_CACHE_HOME": str(cache),
        "HUMANEVAL_OVERRIDE_PATH" if name == "humaneval+" else "MBPP_OVERRIDE_PATH": str(data),
    }
    cmd = [py, "-m", "evalplus.evaluate", "--dataset", name.rstrip("+"), "--samples", str(samples)]
    cmd += ["--parallel", str(workers), "--min-time-limit", "4"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    shutil.rmtree(cache, ignore_errors=True)
    if proc.returncode != 0 or not result.is_file():
        raise SystemExit(f"evalplus failed ({proc.returncode}): {proc.stderr[-3000:]}")
    gt = [line for line in proc.stdout.splitlines() if "Expected outputs computed" in line]
    print(f"  evalplus: {gt[0].strip() if gt else ''}")
    return wall, json.loads(result.read_text())


def subset_file(name: str, data_dir: Path, limit: int | None, out: Path) -> Path:
    """The benchmark file, or one with its first ``limit`` problems (EvalPlus wants every problem scored)."""
    src = data_dir / FILENAMES[name]
    if limit is None:
        return src
    with gzip.open(src, "rt", encoding="utf-8") as f:
        rows = [line for line in f if line.strip()][:limit]
    dst = out / f"subset-{limit}-{FILENAMES[name]}"
    with gzip.open(dst, "wt", encoding="utf-8") as f:
        f.writelines(rows)
    return dst


def compare(name: str, samples: list[dict], ours: list[dict], theirs: dict[str, Any]) -> dict[str, Any]:
    by_task = collections.defaultdict(list)
    for s, r in zip(samples, ours):
        by_task[s["task_id"]].append((s, r))
    diffs, n, same, same_base = [], 0, 0, 0
    for tid, pairs in by_task.items():
        their = theirs["eval"][tid]
        for (s, r), t in zip(pairs, their):
            their_pass = t["base_status"] == "pass" and t["plus_status"] == "pass"
            their_base = t["base_status"] == "pass"
            n += 1
            same += r["passed"] == their_pass
            same_base += r.get("base_passed") == their_base
            if r["passed"] != their_pass or r.get("base_passed") != their_base:
                diffs.append(
                    {
                        "task_id": tid,
                        "mutation": s["mutation"],
                        "ours": (
                            r["passed"],
                            r.get("base_passed"),
                            r["status"],
                            r["error_type"],
                            r["message"][:160],
                        ),
                        "evalplus": (t["base_status"], t["plus_status"]),
                    }
                )
    return {"n": n, "agree": same / n, "agree_base": same_base / n, "diffs": diffs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--data-dir", type=Path, default=DATA_DIR, help="HumanEvalPlus/MbppPlus files (default: shipped)"
    )
    ap.add_argument(
        "--benchmarks", nargs="+", default=["humaneval+", "mbpp+"], choices=["humaneval+", "mbpp+"]
    )
    ap.add_argument("--per-problem", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, help="only the first N problems (both harnesses)")
    ap.add_argument("--workers", type=int, default=None, help="parallel programs, both sides (default: CPUs)")
    ap.add_argument("--evalplus-venv", type=Path, default=REPO / ".cache" / "evalplus-venv")
    ap.add_argument("--out", type=Path, default=REPO / ".cache" / "plus-scoring")
    ap.add_argument(
        "--skip-evalplus", action="store_true", help="only run ours (reuses the last EvalPlus results)"
    )
    args = ap.parse_args()
    workers = args.workers or default_workers()
    py = None if args.skip_evalplus else evalplus_python(args.evalplus_venv)
    print(f"CPUs: {default_workers()}, workers: {workers}, load average: {os.getloadavg()[0]:.1f}")
    for name in args.benchmarks:
        out = args.out / name.rstrip("+")
        out.mkdir(parents=True, exist_ok=True)
        data = subset_file(name, args.data_dir, args.limit, out)
        problems = load_benchmark(name, data)
        rows = make_samples(list(problems), args.per_problem, args.seed)
        samples = out / "samples.jsonl"
        samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
        kinds = collections.Counter(r["mutation"] for r in rows)
        print(f"{name}: {len(problems)} problems, {len(rows)} samples ({dict(kinds)})", flush=True)

        t0 = time.perf_counter()
        with Sandbox(workers=workers) as sb:
            report = score_samples(
                samples, problems, sandbox=sb, results_path=out / "ours.jsonl", summary_path=out / "ours.json"
            )
        ours_s = time.perf_counter() - t0
        print(
            f"  ours: {ours_s:.1f} s, pass@1 {report.summary['pass@k']}, base {report.summary['pass@k_base']}"
        )

        if py is not None:
            theirs_s, theirs = run_evalplus(py, name, data, samples, workers)
            (out / "evalplus_seconds.txt").write_text(f"{theirs_s}\n")
        else:
            theirs = json.loads((out / "samples_eval_results.json").read_text())
            theirs_s = float((out / "evalplus_seconds.txt").read_text())
        print(f"  evalplus: {theirs_s:.1f} s")
        c = compare(name, rows, report.records, theirs)
        print(
            f"  agreement: passed {c['agree']:.2%}, base {c['agree_base']:.2%} over {c['n']} samples; "
            f"time ours/evalplus {ours_s / theirs_s:.2f}x"
        )
        for d in c["diffs"]:
            print(f"    {d['task_id']} {d['mutation']}: ours {d['ours']} evalplus {d['evalplus']}")
        (out / "comparison.json").write_text(
            json.dumps({**c, "ours_s": ours_s, "evalplus_s": theirs_s}, indent=1)
        )


if __name__ == "__main__":
    main()
