"""HumanEval+ and MBPP+ (EvalPlus, Liu et al. 2023): the original problems with many more test inputs,
scored by comparing a sample's outputs with the reference solution's (``textbooks.eval.verdicts.plus``
applies EvalPlus's rules; this module holds what differs between its two datasets).

* Loaders: the shipped ``HumanEvalPlus.jsonl.gz`` (164 problems) and ``MbppPlus.jsonl.gz`` (v0.2.0, 378),
  or ``path`` / a ``data_dir``; no splits. HumanEval+'s ``test`` holds the base tests; MBPP+'s tests are
  the statements of its ``assertion`` block, after importing the modules it uses (``math``), as
  evalplus's harness does.
* Prompts: HumanEval+ takes HumanEval's; MBPP+ ships bigcode's 0-shot prompt (with its own first test),
  used as is for ``mbpp-0shot``, and takes MBPP's 3-shot format.
* Reference program: prompt + ``canonical_solution`` (what EvalPlus executes as the ground truth).
* EvalPlus's per-dataset rules (``EvalPlusFamily``): the inputs (MBPP+ stores tuples, sets and complex
  numbers as JSON: ``mbpp_deserialize_inputs``, EvalPlus's own table, gives them back), the special
  oracles of ``_special_oracle.py`` (match objects, set equality, alternative answers, ``find_zero``'s
  root), and the entry points whose check looks at the call's arguments.
"""

from __future__ import annotations

import ast
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from textbooks.benchmarks.family import Family, family_of, no_splits, register
from textbooks.benchmarks.files import DataFile, read_jsonl
from textbooks.benchmarks.humaneval import HUMANEVAL, HumanEval, humaneval_problem
from textbooks.benchmarks.mbpp import Mbpp
from textbooks.benchmarks.problems import Problem, ProblemSet


class EvalPlusFamily(Family):
    """A benchmark scored as EvalPlus scores it: the sample's outputs against the reference's on the
    ``base`` and ``plus`` inputs (``textbooks.eval.verdicts.plus``); subclasses say what their dataset
    does differently."""

    uses_arguments: tuple[str, ...] = ()  # entry points whose check looks at the call's arguments

    def reference_code(self, problem: Problem) -> str:
        return problem.prompt + problem.canonical_solution

    def inputs(self, problem: Problem, which: str) -> list[Any]:
        """The ``base`` or ``plus`` inputs, as EvalPlus passes them."""
        return list(problem.extra.get(f"{which}_input") or ())

    def reference_outputs(self, problem: Problem, outputs: list[Any]) -> list[Any]:
        """The reference's outputs as samples are compared with them."""
        return outputs

    def exact_match(self, entry: str, out: Any, exp: Any, inp: Sequence[Any], atol: float) -> Any:
        """Whether ``out`` matches ``exp`` before any float tolerance: ``==``, unless an oracle says
        otherwise."""
        return out == exp

    def verdict(self, entry: str, out: Any, inp: Sequence[Any], atol: float) -> bool | None:
        """A verdict that replaces the comparison (a root-finding oracle), or None."""
        return None

    def mismatch(self, entry: str, shown: str, atol: float) -> str | None:
        """Why ``verdict`` failed an output (``shown``: its repr), when it decides; None: "expected ..., got
        ..."."""
        return None


def evalplus_family(benchmark: str) -> EvalPlusFamily | None:
    """The family of ``benchmark`` when EvalPlus's rules score it, else None."""
    family = family_of(benchmark)
    return family if isinstance(family, EvalPlusFamily) else None


# -- HumanEval+ -----------------------------------------------------------------------------------------
def _poly(xs: list, x: float) -> float:
    return sum([coeff * math.pow(x, i) for i, coeff in enumerate(xs)])


class HumanEvalPlus(EvalPlusFamily, HumanEval):
    """HumanEval+: HumanEval's prompts and programs; ``find_zero`` (HumanEval/32) accepts any root."""

    names = ("humaneval+",)
    files = (
        DataFile(
            "humaneval+",
            "HumanEvalPlus.jsonl.gz",
            "272720b90ac375502c8ed23cd791c2a93dfb22a911641a494da74a426c09f101",
        ),
    )
    formats = (HUMANEVAL,)
    uses_arguments = ("find_zero",)

    def file(
        self, name: str, path: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None
    ) -> Path:
        return Family.file(self, name, path, data_dir)  # a shipped copy, unlike HumanEval's

    def load(
        self,
        name: str,
        path: str | os.PathLike | None = None,
        split: str | None = None,
        *,
        data_dir: str | os.PathLike | None = None,
        hub: bool = False,
    ) -> ProblemSet:
        if path is None and data_dir is not None and not hub:
            path = self.file(name, data_dir=data_dir)
        no_splits(name, split)
        return load_humaneval_plus(path)

    def verdict(self, entry: str, out: Any, inp: Sequence[Any], atol: float) -> bool | None:
        if entry == "find_zero":
            return bool(abs(_poly(*inp, out)) <= atol)
        return None

    def mismatch(self, entry: str, shown: str, atol: float) -> str | None:
        return f"|poly(xs, x)| > {atol:g} at x = {shown}" if entry == "find_zero" else None


# -- MBPP+ ----------------------------------------------------------------------------------------------
# evalplus/eval/_special_oracle.py
MBPP_OUTPUT_NOT_NONE_TASKS = ("check_str", "text_match_three", "text_starta_endb")
MBPP_OUTPUT_SET_EQ_TASKS = (
    "similar_elements",  # Mbpp/2
    "find_char_long",  # Mbpp/7
    "common_in_nested_lists",  # Mbpp/111
    "extract_singly",  # Mbpp/140
    "larg_nnum",  # Mbpp/232
    "intersection_array",  # Mbpp/249
    "find_dissimilar",  # Mbpp/579
    "Diff",  # Mbpp/769
)


def _surface_area(base_edge: float, height: float) -> int:
    slant_height = math.sqrt((base_edge / 2) ** 2 + height**2)
    return round(base_edge**2 + 4 * (base_edge * slant_height) / 2)


def _digit_distance_nums(num1: int, num2: int) -> int:
    s1, s2 = str(num1), str(num2)
    n = max(len(s1), len(s2))
    return sum(abs(int(a) - int(b)) for a, b in zip(s1.zfill(n), s2.zfill(n)))


def mbpp_deserialize_inputs(task_id: str, inputs: list) -> list:
    """EvalPlus 0.3.1's ``evalplus.data.mbpp.mbpp_deserialize_inputs`` (Apache-2.0), unchanged: MBPP+
    stores tuples, sets and complex numbers as JSON lists and strings; this table gives them back."""
    n = int(task_id.split("/")[-1])
    if n in (
        2,
        116,
        132,
        143,
        222,
        261,
        273,
        394,
        399,
        421,
        424,
        429,
        470,
        560,
        579,
        596,
        616,
        630,
        726,
        740,
        744,
        809,
    ):
        return [[tuple(lst) for lst in inp] for inp in inputs]
    if n in (63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780):
        return [[[tuple(lst) for lst in lst_lst] for lst_lst in inp] for inp in inputs]
    if n in (75, 413, 444, 753):
        return [[[tuple(lst) for lst in inp[0]], inp[1]] for inp in inputs]
    if n in (106, 750):
        return [[inp[0], tuple(inp[1])] for inp in inputs]
    if n == 115:
        return [
            [[set(item) if isinstance(item, list) and len(item) else {} for item in inp[0]]] for inp in inputs
        ]
    if n == 124:
        return [(float(inp[0]), complex(inp[1])) for inp in inputs]
    if n in (250, 405, 446, 617, 720, 763, 808):
        return [[tuple(inp[0]), inp[1]] for inp in inputs]
    if n in (259, 401, 445):
        out = [[[tuple(lst) for lst in lst_lst] for lst_lst in inp] for inp in inputs]
        return [[tuple(lst) for lst in inp] for inp in out]
    if n == 278:
        out = [[[tuple(item) if isinstance(item, list) else item for item in inp[0]]] for inp in inputs]
        return [[tuple(lst) for lst in inp] for inp in out]
    if n == 307:
        return [[tuple(inp[0]), inp[1], inp[2]] for inp in inputs]
    if n == 722:
        return [[{key: tuple(value) for key, value in inp[0].items()}, *inp[1:]] for inp in inputs]
    if n == 252:
        return [[complex(inp[0])] for inp in inputs]
    if n in (580, 615, 791):

        def tuples(x: Any) -> Any:
            return tuple(tuples(i) for i in x) if isinstance(x, list) else x

        return [tuples(inp) for inp in inputs]
    return inputs


def _statements(code: str) -> list[str]:
    """Top-level statements of ``code`` as source strings (one assert each, even over several lines)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return [line for line in code.splitlines() if line.strip()]
    return [ast.get_source_segment(code, node) or "" for node in tree.body]


def _mbpp_plus_problem(row: dict[str, Any]) -> Problem:
    prompt = row["prompt"]
    lines = prompt.strip().strip('"').strip().splitlines()
    tests = tuple(_statements(row["assertion"]))
    # The assertions use modules (``math.isclose``) that evalplus's harness provides; import them likewise.
    used = [m for m in ("math", "cmath", "sys", "re") if re.search(rf"\b{m}\.", row["assertion"])]
    known = {"task_id", "prompt", "canonical_solution", "entry_point", "assertion"}
    return Problem(
        task_id=row["task_id"],
        benchmark="mbpp+",
        prompt=prompt,
        canonical_solution=row["canonical_solution"],
        test=row["assertion"],
        entry_point=row["entry_point"],
        text=lines[0] if lines else "",
        test_list=tests,
        test_imports=tuple(f"import {m}" for m in used),
        extra={k: v for k, v in row.items() if k not in known},
    )


class MbppPlus(EvalPlusFamily, Mbpp):
    """MBPP+: MBPP's formats and programs, the prompt it ships, and EvalPlus's MBPP oracles."""

    names = ("mbpp+",)
    files = (
        DataFile(
            "mbpp+", "MbppPlus.jsonl.gz", "af43697e8791c4c149bdfd6b489d8b5412507551ac20e28a439f650b8225db63"
        ),
    )
    uses_arguments = ("surface_Area", "digit_distance_nums")

    def load(
        self,
        name: str,
        path: str | os.PathLike | None = None,
        split: str | None = None,
        *,
        data_dir: str | os.PathLike | None = None,
        hub: bool = False,
    ) -> ProblemSet:
        if path is None and data_dir is not None and not hub:
            path = self.file(name, data_dir=data_dir)
        no_splits(name, split)
        return load_mbpp_plus(path)

    def zero_shot_prompt(self, problem: Problem) -> str:
        return problem.prompt  # bigcode's, as MBPP+ ships it

    def inputs(self, problem: Problem, which: str) -> list[Any]:
        return mbpp_deserialize_inputs(problem.task_id, super().inputs(problem, which))

    def reference_outputs(self, problem: Problem, outputs: list[Any]) -> list[Any]:
        if problem.entry_point in MBPP_OUTPUT_NOT_NONE_TASKS:  # a match object: only whether there is one
            return [o is not None for o in outputs]
        return outputs

    def exact_match(self, entry: str, out: Any, exp: Any, inp: Sequence[Any], atol: float) -> Any:
        exact_match = out == exp
        if entry == "are_equivalent":  # Mbpp/164
            exact_match = exact_match or True
        elif entry == "sum_div":  # Mbpp/295
            exact_match = exact_match or out == 0
        elif entry == "surface_Area":  # Mbpp/581
            exact_match = exact_match or abs(out - _surface_area(*inp)) <= atol
        elif entry == "digit_distance_nums":  # Mbpp/558
            exact_match = exact_match or out == _digit_distance_nums(*inp)
        elif entry in MBPP_OUTPUT_SET_EQ_TASKS:
            exact_match = set(out) == set(exp)
        elif entry in MBPP_OUTPUT_NOT_NONE_TASKS:
            exact_match = out == exp if isinstance(out, bool) else exp == (out is not None)
        return exact_match


HUMANEVAL_PLUS = register(HumanEvalPlus())
MBPP_PLUS = register(MbppPlus())


def load_humaneval_plus(path: str | os.PathLike | None = None) -> ProblemSet:
    """HumanEval+ (evalplus ``HumanEvalPlus.jsonl.gz``; the shipped copy by default); ``test`` holds the
    base tests."""
    p, source, sha = HUMANEVAL_PLUS.data_file("humaneval+").source(path)
    problems = [humaneval_problem(r, "humaneval+") for r in read_jsonl(p)]
    return HUMANEVAL_PLUS.problem_set("humaneval+", "all", source, sha, problems)


def load_mbpp_plus(path: str | os.PathLike | None = None) -> ProblemSet:
    """MBPP+ (evalplus ``MbppPlus.jsonl.gz``, 378 problems; the shipped copy by default); tests are its
    ``assertion`` block."""
    p, source, sha = MBPP_PLUS.data_file("mbpp+").source(path)
    problems = [_mbpp_plus_problem(r) for r in read_jsonl(p)]
    return MBPP_PLUS.problem_set("mbpp+", "all", source, sha, problems)
