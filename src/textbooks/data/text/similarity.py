"""How alike two programs are: the AST match rate and word n-gram overlap of the paper's contamination study.

* ``ast_sequence`` writes a syntax tree as a string of node types (constants as type + hash), without
  what a rewrite can change while keeping the program: names, comments, docstrings, type annotations and
  imports (``x: int = 0`` is written as ``x = 0``). ``ast_units`` gives the sequences an item is compared
  by (the whole program and each function in it), and ``ast_match`` / ``ast_match_matrix`` give
  τ = 1 − normalised Levenshtein distance between such sequences (``rapidfuzz``, all pairs at C speed).
  A benchmark solution with every name, docstring, comment, annotation and import changed keeps τ = 1.
* ``ngrams`` / ``NgramIndex``: distinct lower-cased word n-grams and their overlap with a set of problems.

``textbooks.data.stages.decontaminate`` scores training items against HumanEval/MBPP with these.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import re
import warnings
from typing import Any

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein


# -- AST match --------------------------------------------------------------------------------------------------
def _ast_classes() -> list[type]:
    seen: dict[str, type] = {}
    todo = [ast.AST]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__module__ == "ast" and sub.__name__ not in seen:
                seen[sub.__name__] = sub
                todo.append(sub)
    return [seen[k] for k in sorted(seen)]


# One private-use character per node type, per constant type, and 4096 for hashed constant values.
_NODE_CHAR = {cls: chr(0xE000 + i) for i, cls in enumerate(_ast_classes())}
_CONST_TYPE_CHAR = {
    t: chr(0xE300 + i)
    for i, t in enumerate(["NoneType", "bool", "int", "float", "complex", "str", "bytes", "ellipsis"])
}
_CLOSE = ")"
_DOC_OWNERS = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)
# Fields that hold only type information, and statements a rewrite moves, renames or drops at will:
# imports (their order, aliases, `from typing import ...`) and annotations without a value.
_TYPE_FIELDS = frozenset({"annotation", "returns", "type_comment", "type_params"})
_ASSIGN = _NODE_CHAR[ast.Assign]


@functools.lru_cache(maxsize=65536)
def _const_chars(kind: str, text: str) -> tuple[str, str]:
    """A constant as two characters: its type and a 12-bit hash of its ``repr``."""
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=2).digest(), "big")
    return _CONST_TYPE_CHAR.get(kind, chr(0xE3FF)), chr(0xE400 + h % 4096)


def is_docstring(stmt: Any) -> bool:
    """A string expression statement: what a module, class or function starts with when it has a docstring."""
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def docstring_node(node: ast.AST) -> ast.Expr | None:
    """The docstring statement of a module, class or function, or None."""
    body = getattr(node, "body", None)
    first = body[0] if isinstance(body, list) and body else None
    return first if is_docstring(first) else None


def _kept(node: Any) -> bool:
    if not isinstance(node, ast.AST):  # lists of names hold str
        return False
    t = type(node)
    return not (t is ast.Import or t is ast.ImportFrom or (t is ast.AnnAssign and node.value is None))


def _children(node: ast.AST) -> list[ast.AST]:
    """Child nodes in field order, without load/store contexts, type annotations, imports and a leading
    docstring."""
    out: list[ast.AST] = []
    for name in node._fields:
        if name in _TYPE_FIELDS:
            continue
        value = getattr(node, name, None)
        if type(value) is list:
            if value and name == "body" and isinstance(node, _DOC_OWNERS) and is_docstring(value[0]):
                value = value[1:]
            out.extend(v for v in value if _kept(v))
        elif isinstance(value, ast.AST) and not isinstance(value, ast.expr_context):
            out.append(value)
    return out


def _serialise(root: ast.AST) -> tuple[str, list[tuple[int, int]]]:
    """``ast_sequence(root)`` and the ``(start, end)`` of every function's own sequence within it."""
    out: list[str] = []
    funcs: list[tuple[int, int]] = []
    stack: list[Any] = [root]
    while stack:
        item = stack.pop()
        if item is None:
            out.append(_CLOSE)
        elif type(item) is int:  # a function that started at position `item` ends here
            funcs.append((item, len(out)))
        elif type(item) is ast.Constant:
            out.extend(_const_chars(type(item.value).__name__, repr(item.value)))
        elif type(item) is ast.AnnAssign:  # `x: T = v` is `x = v` (without a value it is not kept)
            out.append(_ASSIGN)
            stack.append(None)
            stack.extend((item.value, item.target))
        else:
            if isinstance(item, _FUNCS):
                stack.append(len(out))
            out.append(_NODE_CHAR.get(type(item), "?"))
            children = _children(item)
            if children:
                stack.append(None)
                stack.extend(reversed(children))
    return "".join(out), funcs


def ast_sequence(node: ast.AST) -> str:
    """A tree as a string to edit: node types in pre-order, ``)`` after each node's children.

    Names (identifiers, arguments, attributes), load/store contexts, comments, docstrings, type
    annotations and import statements do not appear; an annotated assignment appears as an assignment;
    constants appear as their type and a hash of their value (one character each).
    """
    return _serialise(node)[0]


def parse_python(code: str) -> ast.Module:
    """``ast.parse`` without warnings; every failure is a ``SyntaxError``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SyntaxWarning: invalid escape sequences in old code
        try:
            return ast.parse(code)
        except (ValueError, RecursionError, MemoryError, TypeError) as e:
            raise SyntaxError(str(e)) from e


_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def ast_units(text: str, unit: str = "functions", min_unit: int = 24) -> list[str]:
    """The AST sequences an item is compared by: the whole program and (``functions``) each function in it
    whose sequence has at least ``min_unit`` characters, about as many nodes (tiny helpers look like
    every tiny solution).

    Text that is not Python is searched for fenced code blocks (textbook style); nothing parses -> [].
    """
    try:
        trees = [parse_python(text)]
    except SyntaxError:
        trees = []
        for block in _FENCE.findall(text):
            try:
                trees.append(parse_python(block))
            except SyntaxError:
                continue
    units = []
    for tree in trees:
        seq, funcs = _serialise(tree)
        units.append(seq)
        if unit == "functions" and (len(funcs) > 1 or len(tree.body) > 1):
            # a function's sequence is a contiguous slice of its module's (pre-order with close marks)
            units.extend(seq[i:j] for i, j in sorted(funcs) if j - i >= min_unit)
    return [u for u in units if u]


def ast_match(a: str, b: str) -> float:
    """τ = 1 − normalised Levenshtein distance of two programs' ``ast_units`` (1.0 = same tree)."""
    ua, ub = ast_units(a, "document"), ast_units(b, "document")
    if not ua or not ub:
        return float("nan")
    return 1.0 - Levenshtein.normalized_distance(ua[0], ub[0])


def ast_match_matrix(
    queries: list[str], choices: list[str], *, min_match: float = 0.0, workers: int = 1
) -> np.ndarray:
    """τ for every pair of AST sequences, ``float32 [len(queries), len(choices)]``; pairs below
    ``min_match`` come out as 0 (rapidfuzz prunes them early)."""
    if not queries or not choices:
        return np.zeros((len(queries), len(choices)), dtype=np.float32)
    dist = process.cdist(
        queries,
        choices,
        scorer=Levenshtein.normalized_distance,
        score_cutoff=1.0 - min_match if min_match > 0 else None,
        dtype=np.float32,
        workers=workers,
    )
    return 1.0 - dist


# -- n-gram overlap ---------------------------------------------------------------------------------------------
_WORD = re.compile(r"\w+")


def ngrams(text: str, n: int = 13) -> set[str]:
    """Distinct word n-grams (lower-cased ``\\w+`` tokens joined by spaces)."""
    words = _WORD.findall(text.lower())
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


class NgramIndex:
    """Benchmark problems' docstring and code n-grams; ``overlap(text)`` counts those found in ``text``."""

    def __init__(self, docstrings: list[str], codes: list[str], n: int = 13) -> None:
        if len(docstrings) != len(codes):
            raise ValueError(f"{len(docstrings)} docstrings but {len(codes)} programs")
        self.n = n
        self.p = len(codes)
        self.doc: dict[str, list[int]] = {}
        self.code: dict[str, list[int]] = {}
        self.doc_total = np.zeros(self.p, dtype=np.int32)
        self.code_total = np.zeros(self.p, dtype=np.int32)
        for i, (docstring, code) in enumerate(zip(docstrings, codes, strict=True)):
            for index, total, text in (
                (self.doc, self.doc_total, docstring),
                (self.code, self.code_total, code),
            ):
                grams = ngrams(text, n)
                total[i] = len(grams)
                for g in grams:
                    index.setdefault(g, []).append(i)
        self.doc_keys = set(self.doc)
        self.code_keys = set(self.code)

    def overlap(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Shared distinct n-grams with each problem: (docstring counts, code counts), ``int32 [P]`` each."""
        grams = ngrams(text, self.n)
        doc = np.zeros(self.p, dtype=np.int32)
        code = np.zeros(self.p, dtype=np.int32)
        for counts, index, keys in ((doc, self.doc, self.doc_keys), (code, self.code, self.code_keys)):
            for g in grams & keys:
                counts[index[g]] += 1
        return doc, code

    def fractions(self, doc: np.ndarray, code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Counts as fractions of each problem's own n-grams (0 where it has none)."""
        return (
            np.divide(doc, self.doc_total, out=np.zeros(doc.shape, np.float32), where=self.doc_total > 0),
            np.divide(code, self.code_total, out=np.zeros(code.shape, np.float32), where=self.code_total > 0),
        )
