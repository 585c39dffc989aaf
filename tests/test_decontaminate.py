"""Stage decontaminate: renamed HumanEval solutions hidden among real stdlib functions are found and pruned."""

from __future__ import annotations

import ast
import builtins
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from rewrites import harness_aliases, rewrite

from textbooks.benchmarks import load_humaneval, load_mbpp, program_for_code, shipped_file
from textbooks.checkpoint import save_pretrained
from textbooks.config import dataclass_from
from textbooks.data.app import compose
from textbooks.data.engine.manifest import read_manifest
from textbooks.data.engine.parquet import read_table, write_table
from textbooks.data.stages.decontaminate import DecontaminateConfig, decontaminate, load_problems
from textbooks.data.text.contamination import measured
from textbooks.data.text.similarity import (
    NgramIndex,
    ast_match,
    ast_match_matrix,
    ast_sequence,
    ast_units,
    ngrams,
    parse_python,
)
from textbooks.errors import DataError, TextbooksError
from textbooks.io import list_source_files
from textbooks.model import ModelConfig, PhiForCausalLM
from textbooks.sandbox import Sandbox


def write_parts(directory: Path, rows: list[dict], rows_per_part: int = 50_000) -> None:
    """A directory of Parquet parts (a corpus from elsewhere: no manifest)."""
    for k in range(0, len(rows), rows_per_part):
        write_table(
            directory / f"part-{k // rows_per_part:05d}.parquet",
            pa.Table.from_pylist(rows[k : k + rows_per_part]),
        )


COPIED = ["HumanEval/0", "HumanEval/12", "HumanEval/31", "HumanEval/55", "HumanEval/120"]


class _Rename(ast.NodeTransformer):
    """Rename every function, argument and variable; replace every docstring."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def visit_Name(self, node: ast.Name) -> ast.Name:
        if node.id in self.names:
            node.id = f"renamed_{node.id}_x"
        return node

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.arg = f"renamed_{node.arg}_x"
        self.generic_visit(node)
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        node.name = f"renamed_{node.name}_x"
        self.generic_visit(node)
        if node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
            node.body[0] = ast.Expr(ast.Constant("Solves the task described in another words entirely."))
        return node


def rename_everything(code: str) -> str:
    tree = ast.parse(code)
    own = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    own |= {n.arg for n in ast.walk(tree) if isinstance(n, ast.arg)}
    own |= {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    return ast.unparse(_Rename(own - set(dir(builtins))).visit(tree))


def statements(func: ast.FunctionDef) -> int:
    """Statements in a function's body, nested ones included, its docstring not."""
    return sum(isinstance(n, ast.stmt) for n in ast.walk(func)) - 1 - (ast.get_docstring(func) is not None)


def stdlib_functions(stdlib_dir: Path, min_statements: int = 6) -> list[tuple[str, str]]:
    """(name, source) of real functions of a few stdlib packages with at least ``min_statements``."""
    out = []
    files = [stdlib_dir / f for f in ("textwrap.py", "shlex.py", "csv.py", "heapq.py", "fnmatch.py")]
    for f in files + list_source_files(stdlib_dir / "json") + list_source_files(stdlib_dir / "email")[:8]:
        src = f.read_text()
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.FunctionDef) and statements(node) >= min_statements:
                out.append((f"{f.stem}.{node.name}#{len(out)}", ast.unparse(node)))
    return out


@pytest.fixture(scope="module")
def training(tmp_path_factory: pytest.TempPathFactory, stdlib_dir: Path) -> dict:
    """A document stage output: renamed HumanEval copies, stdlib functions, a verbatim docstring copy."""
    he = {p.task_id: p for p in measured(load_humaneval())}
    rows = [{"id": f"copy-{t}", "text": rename_everything(he[t].code), "source": "test"} for t in COPIED]
    funcs = stdlib_functions(stdlib_dir)
    rows += [{"id": name, "text": text, "source": "stdlib"} for name, text in funcs]
    doc = he["HumanEval/10"].docstring
    rows.append(
        {"id": "doc-copy", "text": f'def g(s):\n    """{doc}"""\n    return s[::-1]\n', "source": "t"}
    )
    out = tmp_path_factory.mktemp("train") / "docs"
    write_parts(out, rows, rows_per_part=50)
    return {"dir": out, "rows": rows, "n_stdlib": len(funcs)}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=50304, n_layer=1, d_model=32, n_head=2, d_mlp=64, rotary_dim=8, max_seq_len=256
    )
    return save_pretrained(PhiForCausalLM(cfg), tmp_path_factory.mktemp("m") / "model", tokenizer="p50k_base")


def _cfg(inputs: list[Path], out: Path, **kw) -> DecontaminateConfig:
    kw = {"embedder": None, "workers": 1} | kw
    return DecontaminateConfig(inputs=[str(i) for i in inputs], out_dir=str(out), **kw)


def test_ast_sequence_ignores_names_comments_docstrings() -> None:
    a = 'def f(xs):\n    """Sum."""\n    t = 0  # total\n    for x in xs:\n        t += x.v\n    return t\n'
    b = "def g(items):\n    '''Another text.'''\n    acc = 0\n    for it in items:\n        acc += it.w\n    return acc\n"
    c = "def f(xs):\n    t = 0\n    for x in xs:\n        t -= x.v\n    return t\n"
    seq = [ast_sequence(ast.parse(s)) for s in (a, b, c)]
    assert seq[0] == seq[1] and seq[0] != seq[2]
    assert ast_match(a, b) == 1.0 and 0.9 < ast_match(a, c) < 1.0
    # type annotations and imports are not part of the program's structure either
    d = (
        "from typing import List\nimport math as m\n"
        "def h(xs: List[int]) -> int:\n    t: int = 0\n    n: int\n    for x in xs:\n        t += x.v\n    return t\n"
    )
    assert ast_sequence(ast.parse(d)) == seq[0] and ast_match(a, d) == 1.0
    assert ast_units("not python (", "functions") == []
    assert len(ast_units("```python\ndef f():\n    return 1\n```\nprose", "functions")) == 1
    assert ngrams("A b c d", 3) == {"a b c", "b c d"}


def test_ngram_index_counts_shared_docstring_and_code_ngrams() -> None:
    index = NgramIndex(["return the sum of a list", "no shared words here at all"], ["x = 1", ""], n=3)
    doc, code = index.overlap("We return the SUM of a list; x = 1")
    assert doc.tolist() == [4, 0] and code.tolist() == [0, 0]  # "x = 1" is only 2 words
    doc_frac, code_frac = index.fractions(doc, code)
    assert doc_frac.tolist() == [1.0, 0.0] and code_frac.tolist() == [0.0, 0.0]  # no n-grams -> 0, not NaN
    with pytest.raises(ValueError, match="2 docstrings but 1 programs"):
        NgramIndex(["a", "b"], ["c"])


def test_match_matrix_is_rapidfuzz_levenshtein_with_cutoff(stdlib_dir: Path) -> None:
    funcs = [t for _, t in stdlib_functions(stdlib_dir)[:30]]
    seqs = [ast_units(t, "document")[0] for t in funcs]
    full = ast_match_matrix(seqs, seqs[:7], min_match=0.0)
    for i in (0, 5, 17):
        for j in (1, 6):
            assert full[i, j] == pytest.approx(ast_match(funcs[i], funcs[j]), abs=1e-6)
    np.testing.assert_allclose(np.diag(full[:7]), 1.0)
    cut = ast_match_matrix(seqs, seqs[:7], min_match=0.6)
    np.testing.assert_allclose(cut, np.where(full >= 0.6, full, 0.0), atol=1e-6)


@pytest.mark.slow
def test_renamed_copies_found_and_pruned(training: dict, tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "decon"
    cache = tmp_path / "cache"
    cfg = _cfg([training["dir"]], out, embedder=f"textbooks:{tiny_model}", scores_cache=str(cache))
    m = decontaminate(cfg, progress=False)
    n = len(training["rows"])
    assert m["problems"] == {"humaneval": 164, "mbpp": 500}
    assert m["counts"]["items"] == n and m["counts"]["removed"] == len(COPIED)
    assert m["counts"]["removed_by"] == {"ast": len(COPIED)} and m["counts"]["token_counter"] == "p50k_base"
    assert 0 < m["counts"]["removed_tokens"] < m["counts"]["tokens"]
    assert m["items_at_tau"]["0.95"] == len(COPIED)

    scores = {r["id"]: r for r in pq.read_table(out / "report/scores.parquet").to_pylist()}
    for t in COPIED:
        assert scores[f"copy-{t}"]["ast_match"] >= 0.99 and scores[f"copy-{t}"]["ast_problem"] == t
    stdlib_tau = [r["ast_match"] for r in scores.values() if r["source"] == "stdlib"]
    assert len(stdlib_tau) == training["n_stdlib"] > 100
    assert max(stdlib_tau) < 0.8, sorted(stdlib_tau)[-5:]  # against HumanEval and MBPP
    doc = scores["doc-copy"]
    assert doc["ngram_problem"] == "HumanEval/10" and doc["ngram_doc_frac"] == 1.0 and doc["ngram_doc"] > 10
    assert all(r["ngram_doc"] == 0 for k, r in scores.items() if k != "doc-copy")
    assert all(0.0 <= r["embed_distance"] <= 2.0 for r in scores.values())

    kept = read_table(out).to_pylist()
    assert len(kept) == n - len(COPIED) and not any(r["id"].startswith("copy-") for r in kept)
    assert {"id", "text", "source", "ast_match", "embed_distance", "ngram_overlap"} <= set(kept[0])
    removed = read_table(out / "removed").to_pylist()
    assert sorted(r["id"] for r in removed) == sorted(f"copy-{t}" for t in COPIED)
    assert all(r["reason"] == "ast" and r["tokens"] > 0 for r in removed)
    closest = pq.read_table(out / "report/closest.parquet").to_pylist()
    for t in COPIED:
        top = next(r for r in closest if r["task_id"] == t)
        assert top["item_id"] == f"copy-{t}" and "ast" in top["selected_by"]
    assert any(r["task_id"] == "HumanEval/10" and "ngram" in r["selected_by"] for r in closest)
    assert {r["task_id"] for r in closest} >= {"HumanEval/0", "Mbpp/11", "Mbpp/510"}  # nearest by embedding
    report = (out / "report/report.md").read_text()
    # 6 problems: the copy of HumanEval/55 (Fibonacci) also matches Mbpp/389 (Lucas numbers), the same
    # program with other constants, once its type annotation no longer counts
    assert (
        f"| 0.95 | {len(COPIED)} | {len(COPIED) + 1} |" in report
        and "| HumanEval/10 | doc-copy | t |" in report
    )
    assert "| Mbpp/389 | copy-HumanEval/55 | test | 0.981 |" in report
    assert (out / "report/closest.csv").read_text().splitlines()[0].startswith("benchmark,task_id,item_id")

    # another pruning rule reuses the cached scores; the 13-gram rule prunes the docstring copy
    out2 = tmp_path / "decon2"
    m2 = decontaminate(
        _cfg(
            [training["dir"]],
            out2,
            embedder=f"textbooks:{tiny_model}",
            scores_cache=str(cache),
            tau=0.8,
            min_ngram_overlap=1,
        ),
        progress=False,
    )
    assert m2["scores_cached"] and m2["counts"]["removed"] == len(COPIED) + 1
    assert m2["counts"]["removed_by"] == {"ast": len(COPIED), "ngram": 1}


def test_real_functions_stay_far_from_humaneval(stdlib_dir: Path) -> None:
    """Real library functions of some size are well below the paper's lowest τ (0.8) against HumanEval."""
    he = [ast_units(p.code, "document")[0] for p in measured(load_humaneval())]
    funcs = stdlib_functions(stdlib_dir)
    units = [ast_units(text, "functions") for _, text in funcs]
    tau = [ast_match_matrix(u, he, min_match=0.5).max() for u in units]
    assert len(tau) > 100 and max(tau) < 0.75, sorted(tau)[-3:]


@pytest.fixture(scope="module")
def rewritten() -> list[dict]:
    """Every HumanEval program (prompt + canonical solution) and every MBPP test-split solution (the default
    problem set of the stage), rewritten by ``rewrites.rewrite``: names, docstrings, comments, annotations
    and imports all changed."""
    problems = list(load_humaneval()) + list(load_mbpp(split="test"))
    out = []
    for i, (p, m) in enumerate(zip(problems, measured(problems), strict=True)):
        code, names = rewrite(m.code, seed=i)
        out.append({"problem": p, "original": m.code, "code": code, "names": names})
    return out


@pytest.mark.slow
def test_rewrites_keep_the_program(rewritten: list[dict]) -> None:
    """The rewrites are other texts of the same programs: every one still passes its benchmark's tests,
    and none of the names it renamed is left."""
    assert len(rewritten) == 164 + 500
    for r in rewritten:
        left = {n.id for n in ast.walk(ast.parse(r["code"])) if isinstance(n, ast.Name)} & set(r["names"])
        assert r["names"] and not left, (r["problem"].task_id, left)
        assert r["code"] != r["original"]
    programs = [
        program_for_code(r["problem"], r["code"] + harness_aliases(r["code"], r["names"])) for r in rewritten
    ]
    with Sandbox() as sandbox:
        results = sandbox.run_many(programs)
    failed = [
        (r["problem"].task_id, x.status, x.message[:80]) for r, x in zip(rewritten, results) if not x.passed
    ]
    assert not failed, failed


def test_rewrites_that_keep_the_program_are_pruned(
    rewritten: list[dict], tmp_path: Path, stdlib_dir: Path
) -> None:
    """At the default setting (τ ≥ 0.95) every rewrite is pruned, matched to its own problem (or one with
    the same program), while real library functions stay far below."""
    taus = [ast_match(r["code"], r["original"]) for r in rewritten]
    low = [(r["problem"].task_id, t) for r, t in zip(rewritten, taus) if not t >= 0.95]
    assert not low, (
        f"{len(low)} rewrites below 0.95 (min {min(taus):.3f}, mean {np.mean(taus):.3f}): {low[:10]}"
    )
    rows = [{"id": f"rw-{r['problem'].task_id}", "text": r["code"], "source": "rewrite"} for r in rewritten]
    funcs = stdlib_functions(stdlib_dir)
    rows += [{"id": name, "text": text, "source": "stdlib"} for name, text in funcs]
    docs = tmp_path / "docs"
    write_parts(docs, rows, rows_per_part=500)
    m = decontaminate(
        DecontaminateConfig(inputs=[str(docs)], out_dir=str(tmp_path / "out"), embedder=None), progress=False
    )
    assert m["problems"] == {"humaneval": 164, "mbpp": 500} and m["config"]["tau"] == 0.95
    removed = {r["id"]: r for r in read_table(tmp_path / "out" / "removed").to_pylist()}
    assert set(removed) == {row["id"] for row in rows if row["source"] == "rewrite"}
    same = {}  # problems whose programs are the same tree as another's
    for p in measured(r["problem"] for r in rewritten):
        same.setdefault(ast_sequence(parse_python(p.code)), set()).add(p.task_id)
    for r in rewritten:
        got = removed[f"rw-{r['problem'].task_id}"]
        twins = same[ast_sequence(parse_python(r["original"]))]
        assert got["ast_match"] >= 0.95 and got["ast_problem"] in twins, (
            r["problem"].task_id,
            got["ast_problem"],
        )
    scores = pq.read_table(tmp_path / "out" / "report" / "scores.parquet").to_pylist()
    stdlib_tau = [s["ast_match"] for s in scores if s["source"] == "stdlib"]
    assert len(stdlib_tau) == len(funcs) > 100 and max(stdlib_tau) < 0.8, sorted(stdlib_tau)[-3:]


def test_exercises_compare_prompt_plus_solution(tmp_path: Path) -> None:
    """Mined exercises: prompt (signature + docstring) + solution (body) is the program compared."""
    he = {p.task_id: p for p in measured(load_humaneval())}
    code = rename_everything(he["HumanEval/12"].code)
    tree = ast.parse(code)
    func = tree.body[-1]
    body_start = func.body[1].lineno - 1  # first statement after the docstring
    lines = code.splitlines(keepends=True)
    prompt, solution = "".join(lines[:body_start]), "".join(lines[body_start:])
    ex = tmp_path / "exercises"
    row = {"id": "ex-0", "prompt": prompt, "solution": solution, "text": prompt, "entry_point": func.name}
    write_parts(ex, [row | {"source": "mined"}])
    m = decontaminate(_cfg([ex], tmp_path / "out", benchmarks=["humaneval"]), progress=False)
    assert m["counts"]["removed"] == 1
    row = read_table(tmp_path / "out" / "removed").to_pylist()[0]
    assert row["ast_problem"] == "HumanEval/12" and row["ast_match"] >= 0.99
    # without the tokenizer, removed tokens are counted as whitespace-separated words, and the manifest says so
    cfg = _cfg([ex], tmp_path / "ws", benchmarks=["humaneval"], tokenizer="no_such_encoding")
    m = decontaminate(cfg, progress=False)
    assert m["counts"]["token_counter"] == "whitespace (tokenizer no_such_encoding unavailable)"
    assert m["counts"]["removed_tokens"] == len((prompt + solution).split())


def test_mbpp_ships_and_a_wrong_mbpp_file_fails(training: dict, tmp_path: Path) -> None:
    """MBPP needs no file beside the checkout; a file that is named but missing is an error, never a
    silent HumanEval-only decontamination."""
    problems, notes = load_problems(_cfg([training["dir"]], tmp_path / "out"))
    assert len(problems) == 164 + 500 and not notes
    alone = tmp_path / "bench"  # benchmarks_dir replaces the shipped copy
    alone.mkdir()
    (alone / "mbpp.jsonl").write_text(shipped_file("mbpp").read_text().splitlines()[19] + "\n")  # task 20
    problems, _ = load_problems(_cfg([training["dir"]], tmp_path / "out", benchmarks_dir=str(alone)))
    assert len(problems) == 164 + 1
    cfg = _cfg([training["dir"]], tmp_path / "out", mbpp=str(tmp_path / "none.jsonl"))
    with pytest.raises(TextbooksError, match=r"mbpp: benchmark file not found: .*none\.jsonl"):
        decontaminate(cfg, progress=False)
    assert read_manifest(tmp_path / "out") is None
    with pytest.raises(DataError, match=r"input .*absent does not exist"):
        decontaminate(_cfg([tmp_path / "absent"], tmp_path / "o2"), progress=False)


def test_stage_config_matches_dataclass(tmp_path: Path) -> None:
    cfg = compose(["stage=decontaminate", f"paths.data={tmp_path}", "stage.tau=0.9"])
    c = dataclass_from(DecontaminateConfig, cfg.stage, "stage decontaminate")
    assert c.inputs == [f"{tmp_path}/exercises"] and c.out_dir == f"{tmp_path}/decontaminated-tau0.9"
    assert c.mbpp is None and c.benchmarks_dir is None and json.dumps(c.mbpp_task_ids) == "[11, 510]"
