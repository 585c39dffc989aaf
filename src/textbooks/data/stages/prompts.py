"""The prompts of the LLM stages and the lists that diversify them: the one place their defaults are written.

* annotate: phi-1's question ("educational value for a student whose goal is to learn basic coding concepts")
  as FineWeb-Edu's additive 0-5 rubric adapted to code; the answer ends with ``Educational score: N``.
* textbooks: a section on a random topic for a random audience (phi-1's diversity), optionally built on a
  snippet of real code; ``{topic}``, ``{audience}`` and ``{snippet}`` are filled in per request.
* exercises: one function on a topic in an everyday context (``{topic}``, ``{context}``), named by the model to
  fit it, with assert lines (or doctests) the stage runs; the format is shown by an example drawn per request
  (``{example}``). A prompt with ``{name}`` constrains the name instead (``<verb>_<noun>``, phi-1's diversity).
"""

from __future__ import annotations

ANNOTATE_SYSTEM = "You are an experienced programming teacher who judges how useful code is for teaching."

ANNOTATE_PROMPT = (
    "Below is an extract from a code file. Evaluate whether it has a high educational value for a student whose goal is to learn basic coding concepts, using the additive 5-point scoring system described below. Points are accumulated based on the satisfaction of each criterion:\n"
    "\n"
    "- Add 1 point if the extract contains valid code, even if it is not educational, like boilerplate code, configuration or generated data.\n"
    "- Add another point if the extract addresses practical programming concepts, even if it lacks comments or explanations.\n"
    "- Award a third point if the extract is suitable for educational use and introduces key concepts in programming, even if the topic is advanced. The code should be well-structured and contain some comments.\n"
    "- Grant a fourth point if the extract is self-contained and highly relevant to teaching programming. It should be similar to a school exercise, a tutorial, or a textbook section.\n"
    "- Bestow a fifth point if the extract is outstanding in its educational value and perfectly suited to teaching basic coding concepts: well written, easy to understand, with clear step-by-step explanations and comments.\n"
    "\n"
    "The extract:\n"
    "```python\n"
    "{text}\n"
    "```\n"
    "\n"
    "After examining the extract:\n"
    "- Briefly justify your total score, up to 100 words.\n"
    '- Conclude with the score on its own last line, exactly in the format: "Educational score: <total points>"'
)

TEXTBOOK_SYSTEM = "You are an expert computer science teacher who writes clear, engaging Python textbooks."

TEXTBOOK_PROMPT = (
    'Write a short section of a Python textbook on "{topic}" for {audience}.\n'
    "\n"
    "1. Start with one paragraph that explains the idea in plain words.\n"
    "2. Then give two or three small examples. Each example is a complete ```python block that runs on its own without errors, uses only the Python standard library and prints its results with print(). Right after each code block, show exactly what it prints in a ```text block, then explain the example in one or two sentences.\n"
    "3. End with a short summary paragraph.\n"
    "\n"
    "Do not use input(), files or the network, and do not show code that raises an error: describe common mistakes in words. Write about 300 to 400 words.{snippet}"
)

SNIPPET_TEMPLATE = (
    "\n"
    "\n"
    "Build one of the examples on the following code from a real project: explain what it does and how it works, simplifying it where that helps the reader.\n"
    "```python\n"
    "{code}\n"
    "```"
)

TOPICS = [
    "variables and assignment",
    "numbers and arithmetic operators",
    "integer division and the modulo operator",
    "strings and string methods",
    "string formatting with f-strings",
    "reading input and printing output",
    "booleans and comparison operators",
    "if, elif and else",
    "while loops",
    "for loops and range",
    "nested loops",
    "break, continue and loop else",
    "lists and list methods",
    "indexing and slicing",
    "tuples and unpacking",
    "dictionaries",
    "sets",
    "list comprehensions",
    "dictionary and set comprehensions",
    "defining functions",
    "function arguments, defaults and keyword arguments",
    "return values",
    "variable scope",
    "recursion",
    "lambda functions",
    "higher-order functions with map, filter and sorted",
    "iterators and generators",
    "exceptions and try/except",
    "raising your own exceptions",
    "reading and writing text files",
    "working with CSV data",
    "modules and imports",
    "classes and objects",
    "methods and the self parameter",
    "inheritance",
    "special methods such as __str__ and __eq__",
    "dataclasses",
    "linear search",
    "binary search",
    "sorting algorithms (bubble, insertion, merge sort)",
    "stacks and queues",
    "linked lists",
    "counting and frequency tables",
    "working with dates and times",
    "random numbers and simulations",
    "simple string algorithms (palindromes, anagrams, reversing)",
    "prime numbers and divisibility",
    "matrices as lists of lists",
    "debugging and reading error messages",
    "writing tests with assert",
    "big-O time complexity",
    "type hints",
]

AUDIENCES = [
    "a high-school student who has never programmed before",
    "a first-year computer science undergraduate",
    "a self-taught beginner learning in the evenings",
    "a data analyst who knows spreadsheets but not programming",
    "a middle-school student in a coding club",
    "a mathematics student who wants to check ideas with code",
    "a professional switching careers into software development",
    "a teacher preparing a lesson for an introductory class",
    "a competitive-programming novice",
    "a scientist who needs to automate small tasks",
]


# Topic-led: the model names the function to fit the topic (a random name paired with an unrelated topic is
# a task a small model cannot satisfy); the format is shown twice: as a skeleton in the system prompt, and by an
# example exercise on another topic given as an earlier turn of the conversation (EXERCISE_EXAMPLES, one drawn per
# request: a 0.5B model copies an example that is part of the prompt itself, 12 of 12 times); tests are assert
# lines. The instructions sit in the system prompt, the same for every request, so a server's prompt cache holds
# them and each request is one line (the 0.5B model on 72 requests: 90 prompt tokens processed per request
# instead of 250, 2.9 s per request instead of 4.4; experiments/synthetic_data). ``{context}`` (an everyday
# setting, EXERCISE_CONTEXTS) may be added to the request.
EXERCISE_SYSTEM = (
    "You are an experienced Python teacher who writes precise, self-contained programming exercises.\n"
    "\n"
    "When asked for an exercise on a topic, write one function with a descriptive snake_case name of your choice that fits the task, with type hints and a docstring that states the task precisely. After the function, write exactly three assert lines that call it on different inputs and check the exact results; the three expected results must differ from each other. Make sure the function passes its own asserts. Use only the Python standard library.\n"
    "\n"
    "Answer with one ```python code block in this format, and nothing else:\n"
    "\n"
    "```python\n"
    "def function_name(parameter: type) -> return_type:\n"
    '    """What the function does, precisely."""\n'
    "    ...\n"
    "\n"
    "\n"
    "assert function_name(...) == ...\n"
    "assert function_name(...) == ...\n"
    "assert function_name(...) == ...\n"
    "```"
)

EXERCISE_PROMPT = 'Write a new, small Python exercise on the topic "{topic}".'

# Re-deriving a wrong expected value: an exercise whose solution fails some of its own asserts (a small model's
# usual error: it writes working code but cannot compute results in its head) is solved a second time, blind, in
# a fresh conversation that shows the specification only (imports, signature, docstring), never the body, the
# asserts or what they returned. A failing assert is corrected to what the first solution returned only when the
# second solution returns the same and passes every other test too: two programs written apart agree on the
# call, the evidence of execution agreement (CodeT) in place of a value worked out in the model's head.
EXERCISE_REDERIVE = (
    "Complete this Python function:\n"
    "\n"
    "```python\n"
    "{stub}\n"
    "```\n"
    "\n"
    "Answer with the whole function, its imports and any helper it needs in one ```python block, without "
    "tests, examples or prints."
)

# Example exercises shown as an earlier turn (the request for their topic, then the answer), one per request.
EXERCISE_EXAMPLES = [
    {
        "topic": "string manipulation",
        "answer": '''```python
def count_vowels(text: str) -> int:
    """Return how many vowels (a, e, i, o, u, in upper or lower case) the string contains."""
    return sum(1 for ch in text.lower() if ch in "aeiou")


assert count_vowels("hello") == 2
assert count_vowels("SKY") == 0
assert count_vowels("Education") == 5
```''',
    },
    {
        "topic": "loops and accumulation",
        "answer": '''```python
def running_totals(numbers: list[int]) -> list[int]:
    """Return a list whose i-th item is the sum of the first i + 1 numbers."""
    totals = []
    total = 0
    for n in numbers:
        total += n
        totals.append(total)
    return totals


assert running_totals([1, 2, 3]) == [1, 3, 6]
assert running_totals([]) == []
assert running_totals([5, -5, 2]) == [5, 0, 2]
```''',
    },
    {
        "topic": "dictionaries and counting",
        "answer": '''```python
def group_by_length(words: list[str]) -> dict[int, list[str]]:
    """Group words by their length, keeping the words of each length in their original order."""
    groups: dict[int, list[str]] = {}
    for word in words:
        groups.setdefault(len(word), []).append(word)
    return groups


assert group_by_length(["hi", "cat", "to", "dog"]) == {2: ["hi", "to"], 3: ["cat", "dog"]}
assert group_by_length([]) == {}
assert group_by_length(["sun"]) == {3: ["sun"]}
```''',
    },
    {
        "topic": "digits of numbers",
        "answer": '''```python
def digit_sum(n: int) -> int:
    """Return the sum of the decimal digits of a non-negative integer n."""
    total = 0
    while n > 0:
        total += n % 10
        n //= 10
    return total


assert digit_sum(0) == 0
assert digit_sum(7) == 7
assert digit_sum(1234) == 10
```''',
    },
    {
        "topic": "geometry and coordinates",
        "answer": '''```python
import math


def distance(p: tuple[float, float], q: tuple[float, float]) -> float:
    """Return the straight-line (Euclidean) distance between two points of the plane."""
    return math.hypot(q[0] - p[0], q[1] - p[1])


assert distance((0, 0), (3, 4)) == 5.0
assert distance((1, 1), (1, 1)) == 0.0
assert distance((-1, 0), (5, 8)) == 10.0
```''',
    },
    {
        "topic": "validation of input strings",
        "answer": '''```python
def is_strong_password(password: str) -> bool:
    """Return True when the password has at least 8 characters, at least one digit and at least one letter."""
    has_digit = any(ch.isdigit() for ch in password)
    has_letter = any(ch.isalpha() for ch in password)
    return len(password) >= 8 and has_digit and has_letter


assert is_strong_password("abc12345") is True
assert is_strong_password("abcdefgh") is False
assert is_strong_password("a1") is False
```''',
    },
    {
        "topic": "recursion",
        "answer": '''```python
def flatten(items: list) -> list:
    """Return the values of a nested list in order, with every inner list flattened out."""
    flat = []
    for item in items:
        if isinstance(item, list):
            flat.extend(flatten(item))
        else:
            flat.append(item)
    return flat


assert flatten([1, [2, 3], [[4]]]) == [1, 2, 3, 4]
assert flatten([]) == []
assert flatten([[], ["a", ["b"]]]) == ["a", "b"]
```''',
    },
    {
        "topic": "lists and list operations",
        "answer": '''```python
def longest_run(values: list[int]) -> int:
    """Return the length of the longest run of equal neighbouring values (0 for an empty list)."""
    best = 0
    run = 0
    for i, value in enumerate(values):
        run = run + 1 if i > 0 and value == values[i - 1] else 1
        best = max(best, run)
    return best


assert longest_run([1, 1, 2, 2, 2, 3]) == 3
assert longest_run([]) == 0
assert longest_run([4, 5, 4]) == 1
```''',
    },
]

# Everyday settings an exercise is framed in (with the topic: a few thousand distinct requests).
EXERCISE_CONTEXTS = [
    "a school",
    "a small shop",
    "a library",
    "weather records",
    "sports scores",
    "a to-do list",
    "a music playlist",
    "travel planning",
    "cooking recipes",
    "a bank account",
    "a video game",
    "a garden",
    "a parking lot",
    "a train timetable",
    "student grades",
    "an online store",
    "a text message",
    "a board game",
    "a movie collection",
    "a fitness tracker",
]

EXERCISE_TOPICS = [
    "arithmetic and number properties",
    "string manipulation",
    "string parsing",
    "lists and list operations",
    "nested lists and matrices",
    "tuples",
    "dictionaries and counting",
    "sets",
    "sorting and ordering",
    "searching",
    "loops and accumulation",
    "conditionals and branching",
    "recursion",
    "prime numbers and divisibility",
    "digits of numbers",
    "dates and calendars",
    "geometry and coordinates",
    "simple statistics",
    "text processing and word counts",
    "validation of input strings",
    "bit manipulation",
    "two-pointer techniques",
    "sliding windows",
    "stacks and bracket matching",
    "queues and scheduling",
    "dynamic programming",
    "greedy algorithms",
    "simulation of simple games",
    "encoding and ciphers",
    "intervals and ranges",
]

NAME_VERBS = [
    "count",
    "find",
    "sum",
    "filter",
    "merge",
    "split",
    "reverse",
    "rotate",
    "sort",
    "group",
    "compress",
    "expand",
    "encode",
    "decode",
    "validate",
    "check",
    "compute",
    "convert",
    "normalize",
    "flatten",
    "pair",
    "match",
    "select",
    "remove",
    "insert",
    "replace",
    "shift",
    "scale",
    "parse",
    "format",
    "rank",
    "average",
    "max",
    "min",
    "interleave",
    "dedupe",
    "partition",
    "combine",
    "extract",
    "is",
]

NAME_NOUNS = [
    "vowels",
    "digits",
    "words",
    "primes",
    "pairs",
    "triples",
    "intervals",
    "brackets",
    "palindromes",
    "anagrams",
    "duplicates",
    "evens",
    "odds",
    "squares",
    "factors",
    "divisors",
    "multiples",
    "letters",
    "sentences",
    "lines",
    "columns",
    "rows",
    "matrix",
    "grid",
    "path",
    "steps",
    "coins",
    "prices",
    "scores",
    "grades",
    "temperatures",
    "dates",
    "times",
    "durations",
    "points",
    "distances",
    "angles",
    "bits",
    "bytes",
    "tokens",
    "keys",
    "values",
    "counts",
    "runs",
    "peaks",
    "gaps",
    "segments",
    "windows",
    "subsequence",
    "prefix",
]
