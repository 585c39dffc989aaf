"""Stage ``exercises``: HumanEval-shaped exercises (a function signature + docstring to complete, and the
completion), phi-1's "CodeExercises".

``source=synthetic`` (the paper's method): an OpenAI-compatible model (``textbooks.llm.client``) writes each
exercise. Diversity comes from the request: request ``i`` draws a topic, an everyday context and the example
that shows the format (``{topic}``, ``{context}``, ``{example}``; the lists are in ``textbooks.data.stages.prompts``)
with ``random.Random`` seeded by the stage seed and ``i``, and carries its own sampling seed. The model names
the function to fit the task (a prompt with ``{name}`` constrains it to ``<verb>_<noun>`` instead); an answer
that reuses the example's function name copied the example and is dropped (``copied_example``).

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
Exact duplicates (the same text up to trailing whitespace and blank lines, as the ``dedup`` stage defines
them) are dropped too. Rows are written in a deterministic order (input order, then source order; or request
order) with stable ids.

Every exercise is then checked (``run_tests``, ``textbooks.data.text.checks``). An LLM's exercise is tested by its
docstring's ``>>>`` examples and the ``assert`` lines of its answer that call it (kept in ``tests``); it is
dropped, and counted by reason, when the tests are degenerate (``no_tests``, ``one_test``, ``same_expected``:
every example expects the same value, ``prose_tests``: an expected "value" is a sentence of the docstring), when
the solution fails or times out on them, or when a constant solution (``return`` the first expected value)
passes them too (``constant_passes``). A small model's usual failure is a wrong expected value in an assert
for code that is right: with ``rederive`` the exercise is solved a second time, blind (its signature and
docstring only, never its body, its asserts or what they returned), and each failing ``assert <call> ==
<value>`` is corrected to what the solution returned when the second solution returns the same and passes the
other tests too; the exercise is kept if it then passes every check (counted ``rederived``). Mined functions
run against their doctests; those without are kept, counted as unchecked.
``select`` drops exact duplicates, near duplicates (MinHash Jaccard >= ``near_dup_threshold``, synthetic
only) and exercises close to a HumanEval/MBPP problem (a shared ``contamination_ngram``-word n-gram with its
statement, or an AST match >= ``contamination_tau``).

Steps: ``mine`` (per input shard) or ``generate`` (the requests in parts of ``requests_per_part``), split
across tasks, each checking its exercises, then ``select`` (one task: duplicates dropped in order,
``max_exercises``), then publish.

Output (``out_dir``): ``part-*.parquet`` with ``id, text, source, prompt, solution, entry_point, model,
params, topic, origin`` and ``manifest.json`` with every count.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from textbooks.config import dataclass_from
from textbooks.data.engine.executor import ExecutorConfig
from textbooks.data.engine.executor import run as run_on
from textbooks.data.engine.inputs import Shard, Source, plan_shards, resolve
from textbooks.data.engine.llm_cache import SharedCache
from textbooks.data.engine.parquet import PartWriter, write_table
from textbooks.data.engine.reader import Fields, ReadStats, read_shard
from textbooks.data.engine.stage import Stage, Step, Task, execution_only, summed
from textbooks.data.stages.exercises_functions import (
    Rejected,
    exercise_from_answer,
    mined_rows,
    second_solution,
)
from textbooks.data.stages.prompts import (
    EXERCISE_CONTEXTS,
    EXERCISE_EXAMPLES,
    EXERCISE_PROMPT,
    EXERCISE_REDERIVE,
    EXERCISE_SYSTEM,
    EXERCISE_TOPICS,
    NAME_NOUNS,
    NAME_VERBS,
)
from textbooks.data.text.checks import (
    CHECK_CPU_S,
    constant_program,
    degenerate_tests,
    doctest_examples,
    exercise_program,
    failures_program,
    run_checks,
    run_failures,
    same_value,
    with_asserts,
)
from textbooks.data.text.diversity import diversity
from textbooks.data.text.minhash import Deduplicator, Duplicates, Sketcher, exact_key
from textbooks.errors import ConfigError, TextbooksError
from textbooks.io import stdlib_dir
from textbooks.llm.client import LLMClient
from textbooks.llm.config import LLMConfig, LLMUnreachableError
from textbooks.llm.requests import fill_template, prompt_hash
from textbooks.llm.server import llm_endpoint

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
        ("tests", pa.string()),  # assert lines that test the entry point (besides its doctests)
    ]
)


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
    contexts: list[str] = field(default_factory=lambda: list(EXERCISE_CONTEXTS))  # {context}
    # example exercises ({topic, answer}), shown as earlier turns of the conversation: few_shot per request
    examples: list[dict[str, str]] = field(default_factory=lambda: [dict(e) for e in EXERCISE_EXAMPLES])
    few_shot: int = 1
    # a prompt with {name} constrains the function's name to <verb>_<noun>; without, the model names it
    name_verbs: list[str] = field(default_factory=lambda: list(NAME_VERBS))
    name_nouns: list[str] = field(default_factory=lambda: list(NAME_NOUNS))
    system_prompt: str = EXERCISE_SYSTEM
    prompt: str = EXERCISE_PROMPT  # {topic} (and optionally {context}, {name})
    sampling: dict[str, Any] = field(default_factory=lambda: {"temperature": 0.5, "max_tokens": 512})
    # an exercise that fails some of its own asserts is solved again, blind, from its docstring alone
    # (rederive_prompt: {stub}); a failing value is corrected to what the solution returned when the second
    # solution returns it too and passes the other tests, and it is kept when it then passes its checks
    # (EXERCISE_REDERIVE says why that is evidence)
    rederive: bool = True
    rederive_prompt: str = EXERCISE_REDERIVE
    rederive_max_tokens: int = 320
    near_dup_threshold: float | None = 0.8  # MinHash Jaccard of near-duplicate exercises; null = exact only
    # drop exercises that share a word n-gram of this length with a HumanEval/MBPP problem's statement,
    # or whose syntax tree matches one's at >= contamination_tau (null: that test off)
    contamination_ngram: int | None = 13
    contamination_tau: float | None = 0.95
    requests_per_part: int = 1000  # requests per part (the unit tasks share out)
    # run each solution against its own doctests in the sandbox: failing or timing-out ones are dropped, so are
    # LLM exercises without doctests (mined ones without doctests are kept, counted as unchecked)
    run_tests: bool = True
    check_cpu_s: float = (
        CHECK_CPU_S  # CPU seconds a solution's doctests may take (longer: dropped as timeout)
    )
    max_failed_fraction: float = execution_only(0.1)
    name: str = "exercises"  # the stage (conf/stage/exercises.yaml)

    def __post_init__(self) -> None:
        if self.source not in ("synthetic", "mined"):
            raise ConfigError(f"stage.source={self.source!r}: use synthetic or mined")
        if self.source == "synthetic":
            if not self.topics or "{topic}" not in self.prompt:
                raise ConfigError(
                    "stage.source=synthetic needs non-empty stage.topics and {topic} in stage.prompt"
                )
            for key, lists in (("{name}", ("name_verbs", "name_nouns")), ("{context}", ("contexts",))):
                if key in self.prompt and not all(getattr(self, k) for k in lists):
                    raise ConfigError(
                        f"stage.prompt has {key}: stage.{' and '.join(lists)} must be non-empty"
                    )
            if self.n < 1:
                raise ConfigError(f"stage.n must be >= 1 (got {self.n})")
            if self.rederive and "{stub}" not in self.rederive_prompt:
                raise ConfigError("stage.rederive_prompt needs {stub} (or stage.rederive=false)")
            if not 0 <= self.few_shot <= len(self.examples):
                raise ConfigError(
                    f"stage.few_shot={self.few_shot}: between 0 and the {len(self.examples)} examples"
                )
            if any(set(e) != {"topic", "answer"} for e in self.examples):
                raise ConfigError("stage.examples: each is {topic: ..., answer: ...}")
        if self.min_body_lines > self.max_body_lines:
            raise ConfigError("stage.min_body_lines must be <= stage.max_body_lines")

    @property
    def inputs(self) -> list[str]:
        if self.input is None:
            return [str(stdlib_dir())]
        return [self.input] if isinstance(self.input, str) else list(self.input)


# -- synthetic -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExercisePlan:
    index: int
    topic: str
    name: str | None  # the function-name constraint (None: the model names the function)
    seed: int  # the request's sampling seed
    prompt: str
    context: str | None = None
    history: tuple[tuple[str, str], ...] = ()  # example turns: (request, answer)
    example_names: tuple[str, ...] = ()  # the examples' function names (an answer that reuses one copied it)


def _example_name(answer: str) -> str:
    import ast

    from textbooks.data.stages.exercises_functions import extract_code

    try:
        tree = ast.parse(extract_code(answer))
    except SyntaxError:
        return ""
    return next((s.name for s in tree.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))), "")


def plan_exercises(cfg: ExercisesConfig) -> list[ExercisePlan]:
    """Topic, context, function name (when constrained), example turns and sampling seed of every request
    (deterministic per index). The examples shown are on other topics than the request's."""
    plans = []
    for i in range(cfg.n):
        rng = random.Random(f"exercises:{cfg.seed}:{i}")
        topic = rng.choice(cfg.topics)
        name = (
            f"{rng.choice(cfg.name_verbs)}_{rng.choice(cfg.name_nouns)}" if "{name}" in cfg.prompt else None
        )
        context = rng.choice(cfg.contexts) if "{context}" in cfg.prompt else None
        others = [e for e in cfg.examples if e["topic"] != topic] or list(cfg.examples)
        shown = rng.sample(others, min(cfg.few_shot, len(others))) if cfg.few_shot else []
        seed = int(hashlib.sha256(f"exercises:{cfg.seed}:{i}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF

        def fill(t: str, n: str | None, c: str | None) -> str:
            values = {"topic": t, "name": n, "context": c}
            return fill_template(cfg.prompt, **{k: v for k, v in values.items() if v is not None})

        names = tuple(_example_name(e["answer"]) for e in shown)
        history = tuple(
            (
                fill(e["topic"], n if name else None, rng.choice(cfg.contexts) if context else None),
                e["answer"],
            )
            for e, n in zip(shown, names)
        )
        plans.append(ExercisePlan(i, topic, name, seed, fill(topic, name, context), context, history, names))
    return plans


def synthetic_rows(
    plans: list[ExercisePlan],
    cfg: ExercisesConfig,
    client: LLMClient,
    reasons: Counter,
    template: str,
    bar: Any = None,
) -> Iterator[dict[str, Any]]:
    """The exercises the LLM wrote for ``plans`` that pass the checks (``reasons`` counts the others);
    ``bar``: the progress bar to count the requests in (default: the client's own)."""
    requests = [
        client.request(
            p.prompt,
            system=cfg.system_prompt or None,
            history=list(p.history),
            **{**cfg.sampling, "seed": p.seed},
        )
        for p in plans
    ]
    try:
        for plan, res in zip(plans, client.iter_results(requests, bar=bar)):
            reasons["requested"] += 1
            if not res.ok:
                reasons["failed"] += 1
                continue
            try:
                ex = exercise_from_answer(res.text or "", plan.name)
            except Rejected as why:
                reasons[str(why)] += 1
                continue
            if ex.entry_point in plan.example_names:
                reasons["copied_example"] += 1  # the example shown, written again
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
                "tests": ex.tests,
                "_plan": plan,  # to re-derive wrong expected values (not written)
            }
    except LLMUnreachableError as e:
        raise LLMUnreachableError(
            f"{e} Offline, mine exercises from code instead: stage.source=mined"
        ) from None


def rederive_rows(
    rows: list[dict[str, Any]], cfg: ExercisesConfig, client: LLMClient, reasons: Counter, bar: Any = None
) -> list[dict[str, Any] | None]:
    """A second, blind solution for ``rows`` (exercises that fail their own tests), to settle wrong expected
    values. A row whose every failure is an ``assert <call> == <value>`` whose call returned a literal (found by
    ``checks.failures_program``) is solved again in a fresh conversation that shows only its ``prompt``
    (imports, signature, docstring: ``cfg.rederive_prompt``), never its body, its asserts or what they returned.
    When that second program passes every test with each failing value replaced by what the first solution
    returned, the row comes back with those asserts corrected, to be checked as any other; the others come back
    ``None`` (they stay dropped)."""
    failures = run_failures(
        [failures_program(r["text"], r["entry_point"], r["tests"]) for r in rows], cpu_s=cfg.check_cpu_s
    )
    asked: list[tuple[int, str, Any]] = []  # (row, its tests with the failing values corrected, request)
    for i, (r, failed) in enumerate(zip(rows, failures)):
        if not failed or not all(f.call and f.got is not None and same_value(f.got, f.got) for f in failed):
            continue  # an exception, a doctest, a condition, a value that is no literal: nothing to re-derive
        plan: ExercisePlan = r["_plan"]
        tests = with_asserts(r["tests"], {f.test: f"assert {f.call} == {f.got}" for f in failed})
        prompt = fill_template(cfg.rederive_prompt, stub=r["prompt"].rstrip())
        params = {**cfg.sampling, "max_tokens": cfg.rederive_max_tokens, "seed": plan.seed}
        asked.append((i, tests, client.request(prompt, **params)))
    if bar is not None:
        bar.extend(len(asked))
    reasons["rederive_requested"] += len(asked)
    programs: list[str] = []
    owners: list[tuple[int, str]] = []
    for (i, tests, _), res in zip(asked, client.iter_results([q for _, _, q in asked], bar=bar)):
        code = second_solution(res.text or "", rows[i]["entry_point"], rows[i]["prompt"]) if res.ok else None
        if code is not None:
            programs.append(exercise_program(code, rows[i]["entry_point"], tests))
            owners.append((i, tests))
    out: list[dict[str, Any] | None] = [None] * len(rows)
    for (i, tests), verdict in zip(owners, run_checks(programs, cpu_s=cfg.check_cpu_s)):
        if verdict == "passed":
            out[i] = {**rows[i], "tests": tests, "origin": rows[i]["origin"] + ", values re-derived"}
    return out


# -- the stage -------------------------------------------------------------------------------------------


MINED_KEYS = ("input", "pattern", "text_field", "id_field", "max_file_bytes", "shard_bytes", "include_methods",
              "min_docstring_chars", "min_body_lines", "max_body_lines", "self_contained", "max_exercises")  # fmt: skip
SYNTHETIC_KEYS = ("n", "topics", "contexts", "examples", "few_shot", "name_verbs", "name_nouns", "system_prompt", "prompt",
                  "sampling", "requests_per_part", "rederive", "rederive_prompt", "rederive_max_tokens")  # fmt: skip


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
        self.template = prompt_hash(
            cfg.system_prompt, cfg.prompt, *(e["answer"] for e in cfg.examples), str(cfg.few_shot)
        )

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

    def _verdicts(self, rows: list[dict[str, Any]]) -> list[str]:
        """Each row's check: ``passed``, ``unchecked`` or why it is dropped. An LLM's exercise must have real
        tests (``checks.degenerate_tests``: two examples or more that call it, not all expecting the same value,
        no prose as a value), pass them (its assert lines and doctests, in the sandbox) and fail them with its
        body replaced by a constant (``checks.constant_program``: else ``constant_passes``). A mined function
        runs against its doctests; one without is ``unchecked`` (kept)."""
        synthetic = self.config.source == "synthetic"
        why: dict[int, str] = {}
        programs: list[str] = []
        owners: list[tuple[int, str]] = []  # (row, "solution" | "constant") per program
        for i, r in enumerate(rows):
            if synthetic:
                bad = degenerate_tests(r["text"], r["entry_point"], r["tests"])
                if bad is not None:
                    why[i] = bad
                    continue
            elif not doctest_examples(r["text"], r["entry_point"]):
                why[i] = "unchecked"
                continue
            programs.append(exercise_program(r["text"], r["entry_point"], r["tests"]))
            owners.append((i, "solution"))
            constant = constant_program(r["text"], r["entry_point"], r["tests"]) if synthetic else None
            if constant is not None:
                programs.append(constant)
                owners.append((i, "constant"))
        verdicts = dict(zip(owners, run_checks(programs, cpu_s=self.config.check_cpu_s)))
        out = []
        for i in range(len(rows)):
            verdict = why.get(i) or verdicts[(i, "solution")]
            if verdict == "passed" and verdicts.get((i, "constant")) == "passed":
                verdict = "constant_passes"  # a constant passes the tests: they test nothing
            out.append(verdict)
        return out

    def _candidates(
        self,
        task: Task,
        part: int,
        rows: Iterator[dict[str, Any]],
        reasons: Counter,
        rederive: Callable[[list[dict[str, Any]]], list[dict[str, Any] | None]] | None = None,
    ) -> None:
        """Write the part's exercises that pass their checks (``run_tests``, ``_verdicts``), counting each
        drop by reason. ``rederive(rows)`` (synthetic exercises: ``rederive_rows``) corrects some of those
        that fail their own tests; a corrected row replaces its original when it passes every check
        (``rederived`` counts those), else the original stays dropped as ``fails``."""
        rows = list(rows)
        for r in rows:
            r.setdefault("tests", "")
        if self.config.run_tests:
            verdicts = self._verdicts(rows)
            todo = [i for i, v in enumerate(verdicts) if v == "fails"]
            if rederive is not None and todo:
                again = [
                    (i, row) for i, row in zip(todo, rederive([rows[i] for i in todo])) if row is not None
                ]
                for (i, row), verdict in zip(again, self._verdicts([row for _, row in again])):
                    if verdict == "passed":
                        rows[i], verdicts[i] = row, verdict
                        reasons["rederived"] += 1
            kept = []
            for r, verdict in zip(rows, verdicts):
                reasons[verdict] += 1
                if verdict in ("passed", "unchecked"):
                    kept.append(r)
            rows = kept
        write_table(task.data_dir() / f"{part:05d}.parquet", pa.Table.from_pylist(rows, schema=SCHEMA))

    def mine(self, task: Task) -> dict[str, Any]:
        cfg = self.config
        shards = [Shard.from_dict(d) for d in task.plan["shards"]]
        fields = Fields((cfg.text_field,), cfg.id_field)
        bar = task.bar("exercises (mined)", "file")

        def one(i: int) -> dict[str, Any]:
            stats, reasons = ReadStats(), Counter()

            def rows() -> Iterator[dict[str, Any]]:
                for doc in read_shard(
                    shards[i], stats, fields=fields, columns=(), max_bytes=cfg.max_file_bytes
                ):
                    bar.update()
                    yield from mined_rows(doc, cfg, reasons)

            self._candidates(task, i, rows(), reasons)
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
        total = task.my_items(len(plans), per)
        with (
            llm_endpoint(llm) as served,
            LLMClient(served, seed=cfg.seed) as client,
            task.bar("exercises (llm)", "req", total=total) as bar,  # opened once the server is up
        ):

            def one(part: int) -> dict[str, Any]:
                reasons: Counter = Counter()
                mine = plans[part * per : (part + 1) * per]
                rows = synthetic_rows(mine, cfg, client, reasons, self.template, bar)

                def rederive(failed: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
                    return rederive_rows(failed, cfg, client, reasons, bar)

                self._candidates(task, part, rows, reasons, rederive if cfg.rederive else None)
                return {"reasons": dict(reasons)}

            return task.each_shard(task.plan["parts"], one) | {"llm": client.stats.to_dict()}

    def select(self, task: Task) -> dict[str, Any]:
        """Exact duplicates (the same normalised text, ``textbooks.data.text.minhash.exact_key``) after the first are
        dropped, in order."""
        import pyarrow.parquet as pq

        first = "mine" if self.config.source == "mined" else "generate"
        seen: set[bytes] = set()
        reasons: Counter = Counter()
        synthetic = self.config.source == "synthetic"
        t = self.config.near_dup_threshold
        near = Duplicates(threshold=t) if synthetic and t is not None else None
        dedup, sketch = (Deduplicator(near), Sketcher(near)) if near is not None else (None, None)
        contaminated = _Contamination(self.config) if synthetic else None
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
                    digest = exact_key(row["text"])
                    if digest in seen:
                        reasons["duplicates"] += 1
                        continue
                    if (
                        dedup is not None
                        and sketch is not None
                        and dedup.add(sketch([row["text"]])[0]).reason is not None
                    ):
                        reasons["near_duplicates"] += 1
                        continue
                    if contaminated is not None and (
                        bad := contaminated(row["text"] + "\n" + (row["tests"] or ""))
                    ):
                        reasons[bad] += 1
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
            read = task.reads(first, cfg.max_bad_fraction, f"exercises input {cfg.inputs}")
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


class _Contamination:
    """``__call__(text)``: ``contaminated_ngram`` when ``text`` shares a ``contamination_ngram``-word n-gram
    with a HumanEval or MBPP problem's statement (the decontaminate stage's ``ngram_doc``; a code n-gram is not
    enough: a textbook bubble sort shares 13-grams with MBPP/101's), ``contaminated_ast`` when its syntax tree
    matches a problem's at ``>= contamination_tau`` (``textbooks.data.text.contamination``'s measures), else ``None``."""

    def __init__(self, cfg: ExercisesConfig) -> None:
        self.n, self.tau = cfg.contamination_ngram, cfg.contamination_tau
        self.index = None
        self.codes: list[str] = []
        if self.n is None and self.tau is None:
            return
        from textbooks.data.text.contamination import BENCHMARKS, benchmark_problems
        from textbooks.data.text.similarity import NgramIndex, ast_units

        problems = [p for name in BENCHMARKS for p in benchmark_problems(name)]
        if self.n is not None:
            self.index = NgramIndex([p.docstring for p in problems], [p.code for p in problems], self.n)
        self.codes = [u[0] for p in problems if (u := ast_units(p.code, "document"))]

    def __call__(self, text: str) -> str | None:
        if self.index is not None:
            doc, _ = self.index.overlap(
                text
            )  # code n-grams: textbook loops (bubble sort, trial division) share them
            if doc.any():
                return "contaminated_ngram"
        if self.tau is not None and self.codes:
            from textbooks.data.text.similarity import ast_match_matrix, ast_units

            units = ast_units(text, "document")
            if units and ast_match_matrix(units[:1], self.codes, min_match=self.tau).max() >= self.tau:
                return "contaminated_ast"
        return None


CONFIG = ExercisesConfig  # the schema of conf/stage/exercises.yaml (registered as stage/exercises_schema)


def from_config(cfg: Any) -> Exercises:
    """The stage ``textbooks-data stage=exercises`` runs: synthetic or mined exercises."""
    ecfg = dataclass_from(ExercisesConfig, cfg.stage, "stage (exercises)")
    return Exercises(ecfg, LLMConfig.from_dict(cfg.llm) if ecfg.source == "synthetic" else None)


def build_exercises(
    cfg: ExercisesConfig,
    llm: LLMConfig | None = None,
    executor: ExecutorConfig | None = None,
    *,
    progress: bool = True,
) -> dict:
    """Run the stage (skipped when its manifest is current); returns the manifest."""
    return run_on(Exercises(cfg, llm), executor, progress=progress)
