"""The prompts of the LLM stages and the lists that diversify them: the one place their defaults are written.

* annotate: phi-1's question ("educational value for a student whose goal is to learn basic coding concepts")
  as FineWeb-Edu's additive 0-5 rubric adapted to code; the answer ends with ``Educational score: N``.
* textbooks: a section on a random topic for a random audience (phi-1's diversity), optionally built on a
  snippet of real code; ``{topic}``, ``{audience}`` and ``{snippet}`` are filled in per request.
* exercises: one function whose name is constrained per request (``<verb>_<noun>``: phi-1's diversity for
  CodeExercises), with doctests the stage runs; ``{name}`` and ``{topic}`` are filled in.
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
    'Write a section of a Python programming textbook on the topic "{topic}", written for {audience}.\n'
    "\n"
    "The section must be of textbook quality: explain each idea in clear, concise natural language and interleave the explanations with short, complete, runnable Python code examples in ```python blocks. Start from a short motivation, build up from simple to less simple examples, explain what every example prints or returns, point out a common mistake, and end with a small exercise followed by its solution. Use only the Python standard library. Do not mention that you are an AI, and do not add any text before or after the section.{snippet}"
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

EXERCISE_SYSTEM = (
    "You are an experienced Python teacher who writes precise, self-contained programming exercises."
)

EXERCISE_PROMPT = (
    'Write one Python exercise of the kind found in a programming textbook, on the topic "{topic}".\n'
    "\n"
    "The exercise is a single function named `{name}`: a signature with type hints, then a docstring that states the task precisely and shows one or two examples in doctest format (>>>), then a correct, simple and readable implementation that uses only the Python standard library. The function name must be exactly `{name}`: choose a task that fits both the name and the topic.\n"
    "\n"
    "Answer with one ```python code block that contains the imports the function needs and the function, and nothing else."
)

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
