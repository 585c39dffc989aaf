"""Stage ``exercises``: HumanEval-shaped exercises (a function signature + docstring to complete, and the
completion), phi-1's "CodeExercises".

``source=synthetic`` (the paper's method): an OpenAI-compatible model (``textbooks.data.llm``) writes each
exercise. Diversity comes from constraining the function name: request ``i`` draws a topic and a name
``<verb>_<noun>`` from the lists in ``conf/stage/exercises.yaml`` with ``random.Random`` seeded by the
stage seed and ``i``, and carries its own sampling seed. The answer's code block must define a function
with exactly that name and a docstring.

``source=mined`` works offline and is a documented PROXY for the synthetic exercises, not the paper's
method: functions with docstrings are mined from a corpus (by default the Python standard library, or any
``input``) with ``ast``. A candidate must be public, undecorated, have a docstring of at least
``min_docstring_chars`` and a body of ``min_body_lines``..``max_body_lines`` lines; with ``self_contained``
it may only use its parameters, its locals, builtins and the module's plain imports (the import lines it
uses are put on top of the prompt). ``include_methods`` adds methods that never touch ``self``/``cls``
(static methods and the like), rewritten as plain functions without that parameter.

Either way an exercise is split the same way: ``prompt`` = the imports it needs, the signature (normalised
by ``ast.unparse``) and the docstring as written; ``solution`` = the body after the docstring, as written;
``text = prompt + solution`` (what gets packed) must ``ast.parse``, or the exercise is dropped and counted.
Exact duplicates (same text up to whitespace) are dropped too. Rows are written in a deterministic order
(input order, then source order; or request order) with stable ids.

Steps: ``mine`` (per input shard) or ``generate`` (the requests in parts of ``requests_per_part``), split
across tasks, then ``select`` (one task: duplicates dropped in order, ``max_exercises``), then publish.

Output (``out_dir``): ``part-*.parquet`` with ``id, text, source, prompt, solution, entry_point, model,
params, topic, origin`` and ``manifest.json`` with every count.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from tqdm.auto import tqdm

from textbooks.config import dataclass_from
from textbooks.data.diversity import diversity
from textbooks.data.executor import ExecutorConfig
from textbooks.data.executor import run as run_on
from textbooks.data.llm import LLMClient, fill_template, prompt_hash
from textbooks.data.llm_cache import SharedCache
from textbooks.data.llm_config import LLMConfig, LLMUnreachableError
from textbooks.data.llm_server import llm_endpoint
from textbooks.data.parquet import PartWriter, write_table
from textbooks.data.prompts import EXERCISE_PROMPT, EXERCISE_SYSTEM, EXERCISE_TOPICS, NAME_NOUNS, NAME_VERBS
from textbooks.data.reader import Fields, ReadStats, Shard, Source, plan_shards, read_shard, resolve
from textbooks.data.stage import Stage, Step, Task, execution_only, summed
from textbooks.errors import ConfigError, TextbooksError
from textbooks.io import stdlib_dir

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("prompt", pa.string()),
        ("solution", pa.string()),
        ("entry_point", pa.string()),
        ("model", pa.string()),
        ("params", pa.string()),
        ("topic", pa.string()),
        ("origin", pa.string()),
    ]
)
BUILTINS = frozenset(dir(builtins))
_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)


@dataclass
class ExercisesConfig:
    """``conf/stage/exercises.yaml``."""

    out_dir: str
    source: str = "synthetic"  # synthetic (LLM, the paper's method) | mined (offline proxy)
    seed: int = 0
    # -- mined
    input: Any = None  # corpus to mine (one path or a list); null = the Python standard library
    pattern: str = "**/*.py"
    text_field: str = "text"
    id_field: str = "id"
    max_file_bytes: int | None = 1_000_000
    shard_bytes: int = 8 << 20  # source files per shard (JSONL/Parquet files and stage parts are one each)
    max_bad_fraction: float = execution_only(0.01)
    include_methods: bool = False
    min_docstring_chars: int = 30
    min_body_lines: int = 2
    max_body_lines: int = 40
    self_contained: bool = True
    max_exercises: int | None = None  # stop after this many (null: all)
    # -- synthetic
    n: int = 1000
    topics: list[str] = field(default_factory=lambda: list(EXERCISE_TOPICS))
    name_verbs: list[str] = field(default_factory=lambda: list(NAME_VERBS))  # names are <verb>_<noun>
    name_nouns: list[str] = field(default_factory=lambda: list(NAME_NOUNS))
    system_prompt: str = EXERCISE_SYSTEM
    prompt: str = EXERCISE_PROMPT  # {name} (the function-name constraint) and {topic}
    sampling: dict[str, Any] = field(default_factory=lambda: {"temperature": 1.0, "max_tokens": 1024})
    requests_per_part: int = 1000  # requests per part (the unit tasks share out)
    max_failed_fraction: float = execution_only(0.1)
    name: str = "exercises"  # the stage (conf/stage/exercises.yaml)

    def __post_init__(self) -> None:
        if self.source not in ("synthetic", "mined"):
            raise ConfigError(f"stage.source={self.source!r}: use synthetic or mined")
        if self.source == "synthetic":
            if not (self.topics and self.name_verbs and self.name_nouns):
                raise ConfigError(
                    "stage.source=synthetic needs non-empty stage.topics, name_verbs, name_nouns"
                )
            if "{name}" not in self.prompt:
                raise ConfigError("stage.prompt must contain {name} (the function-name constraint)")
            if self.n < 1:
                raise ConfigError(f"stage.n must be >= 1 (got {self.n})")
        if self.min_body_lines > self.max_body_lines:
            raise ConfigError("stage.min_body_lines must be <= stage.max_body_lines")

    @property
    def inputs(self) -> list[str]:
        if self.input is None:
            return [str(stdlib_dir())]
        return [self.input] if isinstance(self.input, str) else list(self.input)


@dataclass(frozen=True)
class Exercise:
    prompt: str  # imports + signature + docstring
    solution: str  # the body after the docstring
    entry_point: str

    @property
    def text(self) -> str:
        return self.prompt + self.solution


class Rejected(ValueError):
    """Why a function is not an exercise (the message is the reason counted in the manifest)."""


# -- splitting a function into prompt and solution -------------------------------------------------------


def _docstring(node: ast.AST) -> ast.Expr | None:
    body = getattr(node, "body", [])
    first = body[0] if body else None
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        return first
    return None


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
    doc = _docstring(node)
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


def mine_document(text: str, cfg: ExercisesConfig, reasons: Counter) -> Iterator[tuple[str, int, Exercise]]:
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


def mined_rows(doc: dict[str, Any], cfg: ExercisesConfig, reasons: Counter) -> Iterator[dict]:
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


# -- synthetic -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExercisePlan:
    index: int
    topic: str
    name: str  # the function-name constraint
    seed: int  # the request's sampling seed
    prompt: str


def plan_exercises(cfg: ExercisesConfig) -> list[ExercisePlan]:
    """Topic, function name and sampling seed of every request (deterministic per index)."""
    plans = []
    for i in range(cfg.n):
        rng = random.Random(f"exercises:{cfg.seed}:{i}")
        topic = rng.choice(cfg.topics)
        name = f"{rng.choice(cfg.name_verbs)}_{rng.choice(cfg.name_nouns)}"
        seed = int(hashlib.sha256(f"exercises:{cfg.seed}:{i}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF
        plans.append(ExercisePlan(i, topic, name, seed, fill_template(cfg.prompt, name=name, topic=topic)))
    return plans


_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_code(answer: str) -> str:
    """The first fenced code block of an answer, or the whole answer when it has none."""
    m = _FENCE.search(answer)
    return m.group(1) if m else answer


def exercise_from_answer(answer: str, name: str) -> Exercise:
    """The exercise in an LLM answer: its top-level imports + the function ``name``; ``Rejected`` if the
    code does not parse, has no such function, or the function has no docstring or body."""
    code = extract_code(answer)
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError) as e:
        raise Rejected("syntax") from e
    funcs = [s for s in tree.body if isinstance(s, _FUNCS) and s.name == name]
    if not funcs:
        raise Rejected("wrong_name")
    node = funcs[0]
    if node.decorator_list:
        raise Rejected("decorated")
    lines = code.splitlines()
    imports = [
        ast.get_source_segment(code, s) or ast.unparse(s)
        for s in tree.body
        if isinstance(s, (ast.Import, ast.ImportFrom))
    ]
    return split_function(lines, node, imports)  # type: ignore[arg-type]


def synthetic_rows(
    plans: list[ExercisePlan], cfg: ExercisesConfig, client: LLMClient, reasons: Counter, template: str
) -> Iterator[dict[str, Any]]:
    requests = [
        client.request(p.prompt, system=cfg.system_prompt or None, **{**cfg.sampling, "seed": p.seed})
        for p in plans
    ]
    try:
        for plan, res in zip(plans, client.iter_results(requests, desc="exercises (llm)")):
            reasons["requested"] += 1
            if not res.ok:
                reasons["failed"] += 1
                continue
            try:
                ex = exercise_from_answer(res.text or "", plan.name)
            except Rejected as why:
                reasons[str(why)] += 1
                continue
            yield {
                "id": f"exercise-{plan.index:08d}",
                "prompt": ex.prompt,
                "solution": ex.solution,
                "text": ex.text,
                "entry_point": ex.entry_point,
                "source": "synthetic",
                "model": res.response_model or res.request.model,
                "params": json.dumps(res.request.params, sort_keys=True),
                "topic": plan.topic,
                "origin": f"request {plan.index} (prompt {template})",
            }
    except LLMUnreachableError as e:
        raise LLMUnreachableError(
            f"{e} Offline, mine exercises from code instead: stage.source=mined"
        ) from None


# -- the stage -------------------------------------------------------------------------------------------


MINED_KEYS = ("input", "pattern", "text_field", "id_field", "max_file_bytes", "shard_bytes", "include_methods",
              "min_docstring_chars", "min_body_lines", "max_body_lines", "self_contained", "max_exercises")  # fmt: skip
SYNTHETIC_KEYS = ("n", "topics", "name_verbs", "name_nouns", "system_prompt", "prompt", "sampling",
                  "requests_per_part")  # fmt: skip


class Exercises(SharedCache, Stage):
    name = "exercises"

    def __init__(self, cfg: ExercisesConfig, llm: LLMConfig | None) -> None:
        if cfg.source == "synthetic" and llm is None:
            raise ConfigError("stage.source=synthetic needs an llm config (llm=openai|vllm|llamacpp|ollama)")
        self.config = cfg
        self.llm = llm if cfg.source == "synthetic" else None
        fix = "set stage.input to a corpus (or null: stdlib)"
        self.sources: list[Source] = (
            [resolve(s, where="exercises", fix=fix) for s in cfg.inputs] if cfg.source == "mined" else []
        )
        self.inputs = [s.path for s in self.sources]
        self.pattern = cfg.pattern
        self.template = prompt_hash(cfg.system_prompt, cfg.prompt)

    def key_config(self) -> dict[str, Any]:
        """The keys that define the output (those of the other source are left out)."""
        d = super().key_config()
        for k in SYNTHETIC_KEYS if self.config.source == "mined" else MINED_KEYS:
            d.pop(k, None)
        if self.llm is not None:
            d["llm"] = {"model": self.llm.model, "params": self.llm.params(**self.config.sampling),
                        "prompt_hash": self.template}  # fmt: skip
        return d

    def plan(self) -> dict[str, Any]:
        if self.config.source == "mined":
            shards = plan_shards(
                self.sources, pattern=self.config.pattern, shard_bytes=self.config.shard_bytes
            )
            return {"shards": [s.to_dict() for s in shards], "parts": len(shards)}
        per = max(1, self.config.requests_per_part)
        return {"parts": -(-self.config.n // per), "per_part": per}

    def steps(self) -> list[Step]:
        first = Step("mine", "mine") if self.config.source == "mined" else Step("generate", "generate")
        return [first, Step("select", "select", sharded=False)]

    def _candidates(self, task: Task, part: int, rows: Iterator[dict[str, Any]]) -> None:
        table = pa.Table.from_pylist(list(rows), schema=SCHEMA)
        write_table(task.data_dir() / f"{part:05d}.parquet", table)

    def mine(self, task: Task) -> dict[str, Any]:
        cfg = self.config
        shards = [Shard.from_dict(d) for d in task.plan["shards"]]
        fields = Fields((cfg.text_field,), cfg.id_field)
        bar = tqdm(desc="exercises (mined)", unit="file", disable=not task.progress)

        def one(i: int) -> dict[str, Any]:
            stats, reasons = ReadStats(), Counter()

            def rows() -> Iterator[dict[str, Any]]:
                for doc in read_shard(
                    shards[i], stats, fields=fields, columns=(), max_bytes=cfg.max_file_bytes
                ):
                    bar.update()
                    yield from mined_rows(doc, cfg, reasons)

            self._candidates(task, i, rows())
            return {"reasons": dict(reasons), "read": stats.to_dict()}

        try:
            return task.each_shard(len(shards), one)
        finally:
            bar.close()

    def generate(self, task: Task) -> dict[str, Any]:
        cfg, llm = self.config, self.llm
        assert llm is not None
        plans = plan_exercises(cfg)
        per = task.plan["per_part"]
        llm.progress = llm.progress and task.progress
        with llm_endpoint(llm) as served, LLMClient(served, seed=cfg.seed) as client:

            def one(part: int) -> dict[str, Any]:
                reasons: Counter = Counter()
                mine = plans[part * per : (part + 1) * per]
                self._candidates(task, part, synthetic_rows(mine, cfg, client, reasons, self.template))
                return {"reasons": dict(reasons)}

            return task.each_shard(task.plan["parts"], one) | {"llm": client.stats.to_dict()}

    def select(self, task: Task) -> dict[str, Any]:
        """Exact duplicates (whitespace-normalised text) after the first are dropped, in order."""
        import pyarrow.parquet as pq

        first = "mine" if self.config.source == "mined" else "generate"
        seen: set[str] = set()
        reasons: Counter = Counter()
        kept, limit = 0, self.config.max_exercises if self.config.source == "mined" else None
        parts = []
        candidates: list[dict[str, Any]] = []
        for part in range(task.plan["parts"]):
            rows = pq.read_table(task.data_dir(first) / f"{part:05d}.parquet").to_pylist()
            candidates += [{"text": r["text"], "topic": r["topic"], "name": r["entry_point"]} for r in rows]
            with PartWriter(task.publish_path(f"part-{part:05d}.parquet"), SCHEMA, keep_empty=False) as w:
                for row in rows:
                    if limit is not None and kept >= limit:
                        break
                    digest = hashlib.sha1(" ".join(row["text"].split()).encode()).hexdigest()
                    if digest in seen:
                        reasons["duplicates"] += 1
                        continue
                    seen.add(digest)
                    w.add(row)
                    kept += 1
            if w.count:
                parts.append(w.path.name)
        div = diversity(candidates, ["topic", "name"] if self.config.source == "synthetic" else [])
        return {"documents": kept, "reasons": dict(reasons), "parts": parts, "diversity": div}

    def summarize(self, task: Task) -> dict[str, Any]:
        cfg = self.config
        first = "mine" if cfg.source == "mined" else "generate"
        sel = task.stats_of("select")[0]
        reasons = summed([s["reasons"] for s in task.shard_stats(first)] + [sel["reasons"]])
        extra: dict[str, Any] = {}
        if cfg.source == "mined":
            read = ReadStats.merge([s["read"] for s in task.shard_stats(first)])
            read.check(cfg.max_bad_fraction, f"exercises input {cfg.inputs}")
            extra["read"] = read.to_dict()
        else:
            extra["llm"] = summed([t["llm"] for t in task.stats_of(first)])
            if reasons.get("failed", 0) / max(reasons.get("requested", 0), 1) > cfg.max_failed_fraction:
                raise TextbooksError(
                    f"exercises: {reasons.get('failed', 0)} of {reasons.get('requested', 0)} requests failed, more "
                    f"than max_failed_fraction={cfg.max_failed_fraction}. Answers already received are cached in "
                    f"{self.llm.cache if self.llm else None}: fix the endpoint and rerun (only the rest is asked)"
                )
        return {
            "documents": sel["documents"],
            "source": cfg.source,
            "counts": dict(sorted(reasons.items())),
            "diversity": sel["diversity"],  # of every parsed exercise, per topic and function-name constraint
            **extra,
            "parts": sel["parts"],
        }


def run_stage(cfg: Any) -> dict:
    """``textbooks-data stage=exercises``: synthetic (``stage.source=synthetic``) or mined exercises."""
    ecfg = dataclass_from(ExercisesConfig, cfg.stage, "stage (exercises)")
    llm = LLMConfig.from_dict(cfg.llm) if ecfg.source == "synthetic" else None
    ex = ExecutorConfig.from_config(cfg.get("executor"))
    return build_exercises(ecfg, llm, ex, progress=bool(cfg.get("progress", True)))


def build_exercises(
    cfg: ExercisesConfig,
    llm: LLMConfig | None = None,
    executor: ExecutorConfig | None = None,
    *,
    progress: bool = True,
) -> dict:
    """Run the stage (skipped when its manifest is current); returns the manifest."""
    return run_on(Exercises(cfg, llm), executor, progress=progress)
