"""The static checks of synthetic data on concrete texts: code blocks found, parsed, judged self-contained;
doctest examples counted."""

from __future__ import annotations

import textwrap

from textbooks.data.text.checks import check_section, code_blocks, doctest_examples, self_contained

SECTION = textwrap.dedent(
    """
    # Loops

    A `for` loop walks over a list:

    ```python
    numbers = [3, 1, 2]
    total = 0
    for n in numbers:
        total += n
    print(total)
    ```

    The same with `sum`:

    ```
    print(sum(numbers))
    ```

    A shell session is not Python:

    ```bash
    python loops.py
    ```
    """
)


def test_code_blocks_are_the_python_fences_in_order() -> None:
    blocks = code_blocks(SECTION)
    assert (
        len(blocks) == 2
        and blocks[0].startswith("numbers = [3, 1, 2]")
        and blocks[1] == "print(sum(numbers))\n"
    )


def test_a_section_runs_its_blocks_together_when_they_stand_on_their_own() -> None:
    check = check_section(SECTION, min_chars=50)
    assert check.verdict == "run" and check.blocks == 2
    assert "print(total)" in check.program and check.program.rstrip().endswith("print(sum(numbers))")
    assert check_section("short", min_chars=50).verdict == "short"
    assert check_section("No code at all, only words. " * 5, min_chars=50).verdict == "no_code"
    broken = SECTION.replace("for n in numbers:", "for n in numbers")
    assert check_section(broken, min_chars=50).verdict == "syntax"
    uses_earlier = "Text " * 20 + "\n```python\nprint(result_from_the_previous_section)\n```\n"
    assert check_section(uses_earlier, min_chars=50).verdict == "kept"


def test_self_contained_means_stdlib_only_no_unknown_names_no_input() -> None:
    assert self_contained("import math\nfrom collections import Counter\nprint(math.pi, Counter('aab'))\n")
    assert self_contained("def f(x):\n    return [y for y in range(x)]\nprint(f(3))\n")
    assert not self_contained("import numpy as np\nprint(np.zeros(3))\n")
    assert not self_contained("from .local import thing\n")
    assert not self_contained("name = input('Your name? ')\nprint(name)\n")
    assert not self_contained("print(undefined_variable)\n")


def test_doctest_examples_are_counted_on_the_entry_point() -> None:
    code = textwrap.dedent(
        '''
        def add(a: int, b: int) -> int:
            """Add two numbers.

            >>> add(1, 2)
            3
            >>> add(-1, 1)
            0
            """
            return a + b


        def other():
            """>>> other()"""
        '''
    )
    assert doctest_examples(code, "add") == 2 and doctest_examples(code, "missing") == 0
    assert doctest_examples("def f():\n    '''No examples.'''\n    return 1\n", "f") == 0


def test_examples_doctest_cannot_read_count_as_none() -> None:
    # an example whose continuation line is not indented like it (as in HumanEval/10's prompt)
    broken = 'def f(s):\n    """Join.\n\n    >>> f("abc"\n  "def")\n    \'abcdef\'\n    """\n    return s\n'
    assert doctest_examples(broken, "f") == 0


def test_assert_lines_count_as_tests_and_degenerate_tests_are_named() -> None:
    from textbooks.data.stages.exercises_functions import exercise_from_answer
    from textbooks.data.text.checks import constant_program, degenerate_tests, exercise_program, run_checks

    def ex(answer: str):
        e = exercise_from_answer(answer, None)
        return e.text, e.entry_point, e.tests

    good = ex(
        '```python\ndef add_two(x: int) -> int:\n    """Add two."""\n    return x + 2\n\n\n'
        "assert add_two(1) == 3\nassert add_two(5) == 7\n```"
    )
    assert good[1] == "add_two" and good[2].count("assert") == 2 and degenerate_tests(*good) is None
    same = ex(
        '```python\ndef pos(x):\n    """Positive?"""\n    return True\n\nassert pos(1)\nassert pos(2) == True\n```'
    )
    assert degenerate_tests(*same) == "same_expected"
    one = ex('```python\ndef f(x):\n    """Id.\n\n    >>> f(1)\n    1\n    """\n    return x\n```')
    assert degenerate_tests(*one) == "one_test"
    none = ex('```python\ndef f(x):\n    """Id."""\n    return x\n```')
    assert degenerate_tests(*none) == "no_tests"
    prose = ex(
        '```python\ndef hi(n):\n    """Prints: Hello there my friend\n\n    >>> hi(1)\n    Hello there my friend\n'
        '    >>> hi(2)\n    2\n    """\n    print("Hello there my friend")\n```'
    )
    assert degenerate_tests(*prose) == "prose_tests"
    # a test a constant passes: the second assert expects no particular value
    weak = ex(
        '```python\ndef sq(x: int) -> int:\n    """Square."""\n    return x * x\n\n\n'
        "assert sq(2) == 4\nassert sq(3) >= 0\n```"
    )
    assert degenerate_tests(*weak) is None
    verdicts = run_checks(
        [exercise_program(*good), constant_program(*good), exercise_program(*weak), constant_program(*weak)]
    )
    assert verdicts == ["passed", "fails", "passed", "passed"]


def test_fences_under_list_items_are_dedented_and_untagged_data_is_not_code() -> None:
    text = "1. **First:**\n   ```python\n   def f(x):\n       return x\n   ```\n\n```\nName,Age,City\nAl,3,New York\n```\n```\nprint(1)\n```\n"
    assert code_blocks(text) == ["def f(x):\n    return x\n", "print(1)\n"]


def test_a_failing_exercise_reports_each_failed_test_with_what_the_call_gave() -> None:
    from textbooks.data.stages.exercises_functions import exercise_from_answer
    from textbooks.data.text.checks import _FAILURES_MARK, Failure, failures_program, run_failures

    answer = textwrap.dedent(
        '''
        ```python
        def digit_count(n: int) -> int:
            """Count the decimal digits of n.

            >>> digit_count(12)
            2
            >>> digit_count(0)
            1
            """
            count = 0
            while n:
                n //= 10
                count += 1
            return count


        assert digit_count(0) == 1
        assert digit_count(123) == 3
        assert digit_count("7") == 1
        assert digit_count(5) > 1
        ```
        '''
    )
    e = exercise_from_answer(answer, None)
    crashes = "def f(x):\n    return x\n\nraise ValueError('at import')\n"
    spins = "def f(x):\n    return x\n\nwhile True:\n    pass\n"
    loud = "def f(x):\n    return x\n\nprint('x' * 200_000)\n"
    forges = f"def f(x):\n    return x\n\nprint({_FAILURES_MARK + '[]'!r})\n"  # a report of its own, first
    failed, crashed, spun, cut, forged = run_failures(
        [failures_program(e.text, e.entry_point, e.tests), failures_program(crashes, "f"),
         failures_program(spins, "f"), failures_program(loud, "f"),
         failures_program(forges, "f", "assert f(1) == 2\nassert f(2) == 2\n")],
        cpu_s=1.0,
    )  # fmt: skip
    assert failed == [
        Failure("assert digit_count(0) == 1", got="0", call="digit_count(0)"),
        Failure("assert digit_count('7') == 1", raised="TypeError: unsupported operand type(s) for //=: 'str' and 'int'"),
        Failure("assert digit_count(5) > 1"),
        Failure(">>> digit_count(0)", expected="1", got="0"),
    ]  # fmt: skip
    assert crashed == [Failure("<code>", raised="ValueError: at import")]
    assert spun == [Failure("<code>", raised="timed out")]
    assert cut == [Failure("<code>", raised="printed more output than is kept")]
    assert forged == [Failure("assert f(1) == 2", got="1", call="f(1)")]


def test_a_second_solution_is_its_definitions_and_an_assert_is_corrected_only_to_the_same_value() -> None:
    from textbooks.data.stages.exercises_functions import second_solution
    from textbooks.data.text.checks import same_value, with_asserts

    stub = 'from typing import List\n\n\ndef f(xs: List[int]) -> int:\n    """Sum of squares."""\n'
    answer = (
        "Here it is:\n\n```python\nimport math\n\nPOWER = 2\n\n\ndef square(x):\n    return x ** POWER\n\n\n"
        "def f(xs: List[int]) -> int:\n    return sum(square(x) for x in xs)\n\n\nassert f([1]) == 7\n"
        "total = f([2])\nprint(f([1, 2]))\nif __name__ == '__main__':\n    f([])\n```\nDone."
    )
    code = second_solution(answer, "f", stub)
    assert code is not None and code.startswith("from typing import List\nimport math\nPOWER = 2\n")
    assert "def square(x):" in code and "assert" not in code and "print" not in code
    assert "total" not in code and "__main__" not in code  # module code that calls it is no definition
    namespace: dict = {}
    exec(code, namespace)
    assert namespace["f"]([1, 2]) == 5
    assert second_solution("```python\ndef g(x):\n    return x\n```", "f", stub) is None  # another name
    assert second_solution("```python\ndef f(x)\n    return x\n```", "f", stub) is None  # no parse
    # an answer cut inside its block keeps the statements it finished
    assert second_solution("```python\ndef f(x):\n    return x\n\n\nassert f(", "f", stub) is not None
    assert same_value("3", "3.0") and same_value("'ab'", '"ab"') and same_value("[1, (2, 3)]", "[1,(2,3)]")
    assert not same_value("True", "1") and not same_value("3", "4") and not same_value("x", "x")
    tests = "assert f(1) == 2\nassert f(3) == 7  # wrong\nassert f(5) == 10\n"
    assert with_asserts(tests, {"assert f(3) == 7": "assert f(3) == 6"}) == (
        "assert f(1) == 2\nassert f(3) == 6\nassert f(5) == 10\n"
    )
