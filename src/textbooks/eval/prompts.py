"""Prompts, stop sequences and the programs that test a completion.

Three prompt formats (``PROMPT_FORMATS``); a samples file's completions are what the model wrote after
the prompt, so the format also says how a completion becomes code:

* ``humaneval``: the problem's code prompt as given; code = prompt + completion. Stops at ``\\nclass``,
  ``\\ndef``, ``\\n#``, ``\\nif``, ``\\nprint``, ``\\n@`` (Codex paper, phi-1).
* ``mbpp-0shot``: bigcode-evaluation-harness's MBPP prompt (InCoder style), a docstring holding the task
  and its first test, ``\"\"\"\\n{text}\\n{test_list[0]}\\n\"\"\"\\n``; code = prompt + completion. Stops are
  bigcode's: ``\\nclass``, ``\\nassert``, ``\\n\"\"\"``, ``\\nprint``, ``\\nif``, ``\\n<|/``, ``\\n```\\```.
  MBPP+ ships this very prompt (with its own first test), which is used as is.
* ``mbpp-3shot``: the original MBPP paper's prompt (google-research/mbpp README): tasks 2, 3, 4 as
  examples, each ``You are an expert Python programmer, and here is your task: {text} Your code should
  pass these tests:\\n\\n{tests}\\n[BEGIN]\\n{code}\\n[DONE]``, then the task itself up to ``[BEGIN]\\n``;
  code = the completion alone. Stops at ``[DONE]``.

Programs (``build_program``), i.e. what is executed: the untrusted setup, run in the sandbox's worker,
and the trusted tests, run in its judge (see ``textbooks.sandbox.Program``):

* HumanEval(+): setup = code; test setup = the problem's ``test`` (defines ``check``); one test,
  ``check(entry_point)``; the prompt's own definitions (helpers such as ``poly``) are trusted.
* MBPP: setup = code + ``test_setup_code``; tests = the ``test_list`` asserts, one by one
  (+ ``challenge_test_list`` with ``include_challenge=True``).
* sanitized MBPP: setup = code + its ``test_imports``; tests = ``test_list``.
* MBPP+: setup = code; tests = the statements of its ``assertion`` block.

HumanEval+ and MBPP+ are scored by ``textbooks.eval.verdicts.plus`` instead (EvalPlus's inputs and rules).
"""

from __future__ import annotations

from collections.abc import Sequence

from textbooks.benchmarks import BenchmarkError, Problem, ProblemSet
from textbooks.sandbox import Program

PROMPT_FORMATS = ("humaneval", "mbpp-0shot", "mbpp-3shot")
HUMANEVAL_STOP: tuple[str, ...] = ("\nclass", "\ndef", "\n#", "\nif", "\nprint", "\n@")
MBPP_STOP: tuple[str, ...] = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n<|/", "\n```")
MBPP_FEWSHOT_STOP: tuple[str, ...] = ("[DONE]",)
MBPP_FEWSHOT_IDS: tuple[int, ...] = (2, 3, 4)
STOP_SEQUENCES = {"humaneval": HUMANEVAL_STOP, "mbpp-0shot": MBPP_STOP, "mbpp-3shot": MBPP_FEWSHOT_STOP}


def default_format(benchmark: str) -> str:
    """The prompt format a benchmark is scored with unless told otherwise."""
    return "humaneval" if benchmark.startswith("humaneval") else "mbpp-0shot"


def _check_format(fmt: str, problem: Problem) -> None:
    if fmt not in PROMPT_FORMATS:
        raise BenchmarkError(f"unknown prompt format {fmt!r}; use one of {', '.join(PROMPT_FORMATS)}")
    if (fmt == "humaneval") != problem.benchmark.startswith("humaneval"):
        raise BenchmarkError(
            f"prompt format {fmt!r} does not apply to {problem.benchmark} ({problem.task_id})"
        )


def stop_sequences(fmt: str) -> tuple[str, ...]:
    """Where generation stops for prompt format ``fmt``."""
    if fmt not in STOP_SEQUENCES:
        raise BenchmarkError(f"unknown prompt format {fmt!r}; use one of {', '.join(PROMPT_FORMATS)}")
    return STOP_SEQUENCES[fmt]


def truncate(completion: str, stops: Sequence[str]) -> str:
    """``completion`` cut at the earliest occurrence of any stop sequence (unchanged if none occurs)."""
    cut = min((i for s in stops if s and (i := completion.find(s)) >= 0), default=len(completion))
    return completion[:cut]


def mbpp_zero_shot_prompt(problem: Problem) -> str:
    """bigcode's 0-shot MBPP prompt (MBPP+ ships it as its ``prompt``)."""
    if problem.benchmark == "mbpp+":
        return problem.prompt
    return f'"""\n{problem.text}\n{problem.test_list[0]}\n"""\n'


def _fewshot_block(problem: Problem, code: str | None = None) -> str:
    block = (
        f"You are an expert Python programmer, and here is your task: {problem.text} "
        "Your code should pass these tests:\n\n" + "\n".join(problem.test_list) + "\n[BEGIN]\n"
    )
    return block if code is None else block + code.replace("\r\n", "\n").strip("\n") + "\n[DONE]\n"


def mbpp_fewshot_examples(problems: ProblemSet) -> tuple[Problem, ...]:
    """Tasks 2, 3 and 4 from an MBPP set loaded with ``split="prompt"`` (or ``"all"``)."""
    ids = [f"Mbpp/{i}" for i in MBPP_FEWSHOT_IDS]
    missing = [i for i in ids if i not in problems]
    if missing:
        raise BenchmarkError(
            f"3-shot MBPP needs tasks {', '.join(ids)} but {problems.info.label} lacks {', '.join(missing)}; "
            'load the examples with load_mbpp(path, split="prompt")'
        )
    return tuple(problems[i] for i in ids)


def mbpp_fewshot_prompt(problem: Problem, examples: Sequence[Problem]) -> str:
    """The MBPP paper's 3-shot prompt: each example with its code in ``[BEGIN]...[DONE]``, then the task."""
    return "".join(_fewshot_block(e, e.canonical_solution) for e in examples) + _fewshot_block(problem)


def build_prompt(problem: Problem, fmt: str | None = None, examples: Sequence[Problem] = ()) -> str:
    """The prompt a model completes, in format ``fmt`` (default: ``default_format`` of the benchmark)."""
    fmt = fmt or default_format(problem.benchmark)
    _check_format(fmt, problem)
    if fmt == "humaneval":
        return problem.prompt
    if fmt == "mbpp-0shot":
        return mbpp_zero_shot_prompt(problem)
    if len(examples) == 0:
        raise BenchmarkError(
            "mbpp-3shot: pass examples=mbpp_fewshot_examples(load_mbpp(path, split='prompt'))"
        )
    return mbpp_fewshot_prompt(problem, examples)


def completion_code(problem: Problem, completion: str, fmt: str | None = None) -> str:
    """The code a completion stands for: prompt + completion, or the completion alone for 3-shot."""
    fmt = fmt or default_format(problem.benchmark)
    _check_format(fmt, problem)
    if fmt == "mbpp-3shot":
        return completion
    prompt = problem.prompt if fmt == "humaneval" else mbpp_zero_shot_prompt(problem)
    return prompt + completion


def base_tests(problem: Problem, *, include_challenge: bool = False) -> int:
    """How many of a program's tests (the first ones) are the benchmark's base tests."""
    if problem.benchmark.startswith("humaneval"):
        return 1
    return len(problem.test_list) + (len(problem.challenge_test_list) if include_challenge else 0)


def program_for_code(problem: Problem, code: str, *, include_challenge: bool = False) -> Program:
    """The program that tests ``code`` (a full solution) against ``problem``'s own tests."""
    if problem.benchmark.startswith("humaneval"):
        return Program(
            setup=code,
            test_setup=problem.test,
            tests=(f"check({problem.entry_point})",),
            trusted=problem.prompt,
            entry_point=problem.entry_point,
        )
    parts = [code]
    if problem.test_setup_code.strip():
        parts.append(problem.test_setup_code)
    if problem.test_imports:
        parts.append("\n".join(problem.test_imports))
    tests = problem.test_list + (problem.challenge_test_list if include_challenge else ())
    return Program(setup="\n".join(parts) + "\n", tests=tests, entry_point=problem.entry_point or None)


def build_program(
    problem: Problem, completion: str, fmt: str | None = None, *, include_challenge: bool = False
) -> Program:
    """The program that tests a model completion written after the prompt in format ``fmt``."""
    return program_for_code(
        problem, completion_code(problem, completion, fmt), include_challenge=include_challenge
    )


def reference_program(problem: Problem, *, include_challenge: bool = False) -> Program:
    """The program that tests the benchmark's own reference solution (the canonical self-check)."""
    if problem.benchmark.startswith("humaneval"):
        code = problem.prompt + problem.canonical_solution
    else:
        code = problem.canonical_solution
    return program_for_code(problem, code, include_challenge=include_challenge)
