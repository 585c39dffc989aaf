"""A function as an exercise: split into prompt and solution, mined from modules, parsed from an LLM's answer.

An exercise is HumanEval-shaped: ``prompt`` = the imports it needs, the signature (normalised by
``ast.unparse``) and the docstring as written; ``solution`` = the body after the docstring, as written;
``text = prompt + solution`` (what gets packed) must ``ast.parse``. Mining takes functions with docstrings from
a corpus (public, undecorated, a docstring of ``min_docstring_chars``, a body of ``min_body_lines`` to
``max_body_lines`` lines; with ``self_contained`` only parameters, locals, builtins and the module's plain
imports); an LLM's answer gives its first fenced code block's function of the requested name.
"""

from __future__ import annotations

import ast
import builtins
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from textbooks.data.text.similarity import docstring_node

BUILTINS = frozenset(dir(builtins))
_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)


@dataclass(frozen=True)
class Exercise:
    prompt: str  # imports + signature + docstring
    solution: str  # the body after the docstring
    entry_point: str
    tests: str = ""  # ``assert`` lines that call the entry point (an LLM's answer may test it that way)

    @property
    def text(self) -> str:
        return self.prompt + self.solution


class Rejected(ValueError):
    """Why a function is not an exercise (the message is the reason counted in the manifest)."""


# -- splitting a function into prompt and solution -------------------------------------------------------


def _strip_indent(line: str, width: int) -> str:
    """Remove up to ``width`` leading whitespace characters."""
    n = len(line) - len(line.lstrip(" \t"))
    return line[min(n, width) :]


def signature(node: ast.FunctionDef | ast.AsyncFunctionDef, drop_first_arg: bool = False) -> str:
    """``def name(args) -> returns:`` as ``ast.unparse`` writes it (optionally without the first
    parameter, for a method made into a function)."""
    args = node.args
    if drop_first_arg:
        positional = args.posonlyargs + args.args
        args = ast.arguments(
            posonlyargs=args.posonlyargs[1:],
            args=args.args if args.posonlyargs else args.args[1:],
            vararg=args.vararg,
            kwonlyargs=args.kwonlyargs,
            kw_defaults=args.kw_defaults,
            kwarg=args.kwarg,
            defaults=args.defaults[1:] if len(args.defaults) == len(positional) else args.defaults,
        )
    cls = type(node)
    stub = cls(name=node.name, args=args, body=[ast.Pass()], decorator_list=[], returns=node.returns)
    if hasattr(node, "type_params"):
        stub.type_params = node.type_params  # type: ignore[attr-defined]
    ast.fix_missing_locations(stub)
    return ast.unparse(stub).rsplit("\n", 1)[0]


def split_function(
    lines: list[str],
    node: ast.FunctionDef | ast.AsyncFunctionDef,
    imports: list[str],
    *,
    drop_first_arg: bool = False,
    min_docstring_chars: int = 1,
    min_body_lines: int = 1,
    max_body_lines: int = 10_000,
) -> Exercise:
    """Cut ``node`` (from the module whose source ``lines`` are given) into a prompt (imports, signature,
    docstring as written) and a solution (the body as written); ``Rejected`` says why not."""
    doc = docstring_node(node)
    if doc is None:
        raise Rejected("no_docstring")
    if len(str(doc.value.value).strip()) < min_docstring_chars:  # type: ignore[attr-defined]
        raise Rejected("short_docstring")
    if len(node.body) < 2:
        raise Rejected("no_body")
    end_doc = doc.end_lineno or doc.lineno
    if doc.lineno == node.lineno or node.body[1].lineno <= end_doc:
        raise Rejected("layout")  # docstring on the def line, or code on the docstring's last line
    body = [ln.rstrip() for ln in lines[end_doc : node.end_lineno]]
    while body and not body[-1].strip():
        body.pop()
    code_lines = sum(bool(ln.strip()) and not ln.strip().startswith("#") for ln in body)
    if code_lines < min_body_lines:
        raise Rejected("too_short")
    if code_lines > max_body_lines:
        raise Rejected("too_long")
    indent = node.col_offset
    docstring = [_strip_indent(ln.rstrip(), indent) for ln in lines[doc.lineno - 1 : end_doc]]
    head = "".join(i + "\n" for i in imports) + ("\n\n" if imports else "")
    prompt = head + signature(node, drop_first_arg) + "\n" + "\n".join(docstring) + "\n"
    solution = "\n".join(_strip_indent(ln, indent) for ln in body) + "\n"
    ex = Exercise(prompt, solution, node.name)
    try:
        tree = ast.parse(ex.text)
    except (SyntaxError, ValueError) as e:
        raise Rejected("invalid") from e
    if not any(isinstance(s, _FUNCS) and s.name == node.name for s in tree.body):
        raise Rejected("invalid")
    return ex


# -- mining ----------------------------------------------------------------------------------------------


def module_imports(tree: ast.Module) -> dict[str, str]:
    """Names bound by the module's top-level absolute imports -> the import line that binds just that name."""
    bound: dict[str, str] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Import):
            for alias in stmt.names:
                name = alias.asname or alias.name.split(".")[0]
                bound[name] = ast.unparse(ast.Import(names=[alias]))
        elif isinstance(stmt, ast.ImportFrom) and stmt.level == 0 and stmt.module:
            for alias in stmt.names:
                if alias.name != "*":
                    line = ast.unparse(ast.ImportFrom(module=stmt.module, names=[alias], level=0))
                    bound[alias.asname or alias.name] = line
    return bound


def free_names(node: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    """Names the function reads that it does not bind itself (parameters, assignments, loop and
    comprehension targets, nested defs, imports, ``except ... as``, match captures); names declared
    ``global``/``nonlocal`` count as free."""
    bound: set[str] = {node.name}
    loaded: set[str] = set()
    declared: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            (loaded if isinstance(n.ctx, ast.Load) else bound).add(n.id)
        elif isinstance(n, ast.arg):
            bound.add(n.arg)
        elif isinstance(n, (*_FUNCS, ast.ClassDef)) and n is not node:
            bound.add(n.name)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in n.names)
        elif isinstance(n, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and n.name:
            bound.add(n.name)
        elif isinstance(n, ast.MatchMapping) and n.rest:
            bound.add(n.rest)
        elif isinstance(n, (ast.Global, ast.Nonlocal)):
            declared.update(n.names)
    return (loaded - bound) | declared


def _uses_name(node: ast.AST, name: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(node))


def _candidates(tree: ast.Module, include_methods: bool) -> Iterator[tuple[str, ast.FunctionDef, bool]]:
    """(qualified name, function, is_method) in source order."""
    for stmt in tree.body:
        if isinstance(stmt, _FUNCS):
            yield stmt.name, stmt, False  # type: ignore[misc]
        elif include_methods and isinstance(stmt, ast.ClassDef):
            for member in stmt.body:
                if isinstance(member, _FUNCS):
                    yield f"{stmt.name}.{member.name}", member, True  # type: ignore[misc]


def mine_document(text: str, cfg: Any, reasons: Counter) -> Iterator[tuple[str, int, Exercise]]:
    """(qualified name, line, exercise) for every function of one module that makes an exercise; the
    others are counted in ``reasons``."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        reasons["unparseable_files"] += 1
        return
    imports = module_imports(tree)
    lines = text.splitlines()
    for qualname, node, is_method in _candidates(tree, cfg.include_methods):
        reasons["functions_seen"] += 1
        try:
            drop_first = _check_candidate(node, is_method)
            free = free_names(node) - BUILTINS
            if cfg.self_contained and free - set(imports):
                raise Rejected("uses_module_names")
            needed = sorted({imports[name] for name in free if name in imports})
            yield (
                qualname,
                node.lineno,
                split_function(
                    lines,
                    node,
                    needed,
                    drop_first_arg=drop_first,
                    min_docstring_chars=cfg.min_docstring_chars,
                    min_body_lines=cfg.min_body_lines,
                    max_body_lines=cfg.max_body_lines,
                ),
            )
        except Rejected as why:
            reasons[str(why)] += 1


def _check_candidate(node: ast.FunctionDef | ast.AsyncFunctionDef, is_method: bool) -> bool:
    """Raise ``Rejected`` for private/dunder or decorated functions and methods that use ``self``/``cls``;
    returns whether the first parameter is to be dropped (a method)."""
    if node.name.startswith("_"):
        raise Rejected("private")
    decorators = [ast.unparse(d) for d in node.decorator_list]
    params = node.args.posonlyargs + node.args.args
    if not is_method:
        if decorators:
            raise Rejected("decorated")
        if params and params[0].arg in ("self", "cls"):
            raise Rejected("uses_self")  # a method defined outside its class
        return False
    if decorators == ["staticmethod"]:
        return False
    if decorators and decorators != ["classmethod"]:
        raise Rejected("decorated")
    if not params:
        raise Rejected("method_without_self")
    first = params[0].arg
    if _uses_name(node, first) or _uses_name(node, "super") or _uses_name(node, "__class__"):
        raise Rejected("uses_self")
    return True


def mined_rows(doc: dict[str, Any], cfg: Any, reasons: Counter) -> Iterator[dict]:
    """Exercise rows mined from one document, in source order, ids ``<doc id>::<qualname>``."""
    for qualname, line, ex in mine_document(doc["text"], cfg, reasons):
        yield {
            "id": f"{doc['id']}::{qualname}",
            "prompt": ex.prompt,
            "solution": ex.solution,
            "text": ex.text,
            "entry_point": ex.entry_point,
            "source": "mined",
            "model": None,
            "params": None,
            "topic": None,
            "origin": f"{doc['source']}:{line}",
        }


_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_NOT_TASKS = re.compile(r"^(_|test|check|main$|run_tests$)", re.IGNORECASE)  # names that are not the exercise


def extract_code(answer: str) -> str:
    """The first fenced code block of an answer, or the whole answer when it has none."""
    m = _FENCE.search(answer)
    return m.group(1) if m else answer


def _calls(node: ast.AST, name: str) -> bool:
    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == name for n in ast.walk(node)
    )


def assert_lines(trees: list[ast.Module], name: str) -> list[str]:
    """The ``assert`` statements that call ``name``, as source lines: at the top level of the answer's code
    blocks, under ``if __name__ == "__main__":`` and in top-level test functions (``test_*``, ``check*``,
    ``main``) without parameters; each once, in order."""
    found: list[str] = []

    def visit(body: list[ast.stmt]) -> None:
        for stmt in body:
            if isinstance(stmt, ast.Assert) and _calls(stmt, name):
                line = ast.unparse(stmt)
                if line not in found:
                    found.append(line)
            elif (isinstance(stmt, ast.If) and "__name__" in ast.unparse(stmt.test)) or (
                isinstance(stmt, _FUNCS)
                and stmt.name != name
                and _NOT_TASKS.match(stmt.name)
                and not (stmt.args.args or stmt.args.posonlyargs)
            ):
                visit(stmt.body)

    for tree in trees:
        visit(tree.body)
    return found


_OPEN = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n", re.IGNORECASE)


def _complete_lines(code: str) -> str:
    """The longest run of ``code``'s first lines that parses (an answer cut at ``max_tokens``, typically
    in a runaway list of asserts): the statements it finished."""
    lines = code.splitlines()
    for end in range(len(lines), 0, -1):
        head = "\n".join(lines[:end])
        try:
            ast.parse(head)
        except (SyntaxError, ValueError):
            continue
        return head + "\n"
    return code


def _blocks(answer: str) -> list[str]:
    """The answer's fenced code blocks; a last block left open (the answer was cut) up to its last complete
    statement; the whole answer when it has no fence."""
    blocks = [m.group(1) for m in _FENCE.finditer(answer)]
    closed_end = max((m.end() for m in _FENCE.finditer(answer)), default=0)
    opened = _OPEN.search(answer, closed_end)
    if opened is not None and "```" not in answer[opened.end() :]:
        blocks.append(_complete_lines(answer[opened.end() :]))
    return blocks or [answer]


def exercise_from_answer(answer: str, name: str | None) -> Exercise:
    """The exercise in an LLM answer: its top-level imports + the function ``name`` (``None``: the function
    the model named itself, the first top-level one with a docstring that is not a test or ``main``), with
    the ``assert`` lines of the answer that call it as ``tests``; ``Rejected`` if the code does not parse,
    has no such function, or the function has no docstring or body."""
    blocks = _blocks(answer)
    trees: list[ast.Module] = []
    code, tree = None, None
    for block in blocks:
        try:
            t = ast.parse(block)
        except (SyntaxError, ValueError):
            if code is None and block is blocks[0]:
                raise Rejected("syntax") from None
            continue
        if code is None:
            code, tree = block, t
        trees.append(t)
    assert code is not None and tree is not None
    funcs = [s for s in tree.body if isinstance(s, _FUNCS)]
    if name is None:
        funcs = [f for f in funcs if not _NOT_TASKS.match(f.name) and docstring_node(f) is not None] or [
            f for f in funcs if not _NOT_TASKS.match(f.name)
        ]
    else:
        funcs = [f for f in funcs if f.name == name]
    if not funcs:
        raise Rejected("wrong_name" if name is not None else "no_function")
    node = funcs[0]
    if node.decorator_list:
        raise Rejected("decorated")
    lines = code.splitlines()
    imports = [
        ast.get_source_segment(code, s) or ast.unparse(s)
        for s in tree.body
        if isinstance(s, (ast.Import, ast.ImportFrom))
    ]
    ex = split_function(lines, node, imports)  # type: ignore[arg-type]
    tests = assert_lines(trees, node.name)
    return Exercise(ex.prompt, ex.solution, ex.entry_point, "".join(t + "\n" for t in tests))


_DEFINITIONS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _constant(stmt: ast.stmt, entry_point: str) -> bool:
    """A module-level name bound to a value that does not call ``entry_point`` (``VOWELS = "aeiou"``)."""
    if isinstance(stmt, ast.Assign):
        targets = stmt.targets
    elif isinstance(stmt, ast.AnnAssign):
        targets = [stmt.target]
    else:
        return False
    return all(isinstance(t, ast.Name) for t in targets) and not _calls(stmt, entry_point)


def second_solution(answer: str, entry_point: str, stub: str) -> str | None:
    """The program of a second solution (an answer to ``EXERCISE_REDERIVE``): ``stub``'s imports, then the
    imports, functions, classes and module-level constants of the answer's first code block that defines
    ``entry_point``, without the rest (tests, prints, a ``__main__`` block); ``None`` when no block parses and
    defines it."""
    for block in _blocks(answer):
        try:
            tree = ast.parse(block)
        except (SyntaxError, ValueError):
            continue
        kept = [s for s in tree.body if isinstance(s, _DEFINITIONS) or _constant(s, entry_point)]
        if any(isinstance(s, _FUNCS) and s.name == entry_point for s in kept):
            try:
                imports = [s for s in ast.parse(stub).body if isinstance(s, (ast.Import, ast.ImportFrom))]
            except (SyntaxError, ValueError):
                imports = []
            return ast.unparse(ast.Module(body=[*imports, *kept], type_ignores=[])) + "\n"
    return None
