"""The reference solutions' outputs and times on a HumanEval+/MBPP+ problem's inputs, computed once per
problem in the sandbox and shared by every sample (optionally cached on disk), as EvalPlus does."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textbooks.benchmarks import Problem, reference_code
from textbooks.eval.verdicts.plus_rules import REFERENCE_RECURSION_ROOM, inputs, plus_family
from textbooks.io import write_json_atomic
from textbooks.sandbox import CallGroup, CallProgram, Limits, Sandbox
from textbooks.sandbox.server import plain

REFERENCE_WALL_S = 600.0  # per group, for computing a reference's outputs
CACHE_VERSION = 1
MESSAGE_CHARS = 200


@dataclass
class Reference:
    """The reference solution's outputs and times (seconds) on a problem's base and plus inputs."""

    task_id: str
    base: list[Any] = field(default_factory=list)
    plus: list[Any] = field(default_factory=list)
    base_time: list[float] = field(default_factory=list)
    plus_time: list[float] = field(default_factory=list)
    error: str | None = None  # why the reference itself failed (then every sample of the problem errors)

    def as_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "base": plain.to_json(self.base),
            "plus": plain.to_json(self.plus),
            "base_time": self.base_time,
            "plus_time": self.plus_time,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Reference:
        return cls(
            d["task_id"],
            plain.decode(json.dumps(d["base"])),
            plain.decode(json.dumps(d["plus"])),
            list(d["base_time"]),
            list(d["plus_time"]),
            d.get("error"),
        )


def encoded_inputs(problem: Problem, which: str) -> bytes:
    return plain.encode([list(a) for a in inputs(problem, which)])


class References:
    """Reference outputs and times per problem, computed once in the sandbox (and kept in ``cache_dir``
    when given, keyed by the reference code, the inputs and this module's rules)."""

    def __init__(self, cache_dir: str | os.PathLike | None = None) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.refs: dict[str, Reference] = {}
        self._inputs: dict[tuple[str, str], bytes] = {}

    def __getitem__(self, task_id: str) -> Reference:
        return self.refs[task_id]

    def encoded_inputs(self, problem: Problem, which: str) -> bytes:
        """``plain.encode`` of the ``base`` or ``plus`` inputs (once per problem)."""
        key = (problem.task_id, which)
        if key not in self._inputs:
            self._inputs[key] = encoded_inputs(problem, which)
        return self._inputs[key]

    def _cache_path(self, problem: Problem) -> Path | None:
        if self.cache_dir is None:
            return None
        h = hashlib.sha256()
        for part in (
            str(CACHE_VERSION),
            problem.benchmark,
            problem.task_id,
            problem.entry_point,
            reference_code(problem),
        ):
            h.update(part.encode("utf-8", "surrogatepass") + b"\0")
        h.update(self.encoded_inputs(problem, "base"))
        h.update(self.encoded_inputs(problem, "plus"))
        return self.cache_dir / f"{problem.task_id.replace('/', '_')}-{h.hexdigest()[:16]}.json"

    def ensure(self, sandbox: Sandbox, problems: Sequence[Problem], progress: bool = False) -> None:
        """Compute (or load) the references of ``problems`` that are not known yet, in parallel."""
        todo = []
        for p in problems:
            if p.task_id in self.refs:
                continue
            path = self._cache_path(p)
            if path is not None and path.is_file():
                try:
                    self.refs[p.task_id] = Reference.from_json(json.loads(path.read_text()))
                    continue
                except (OSError, ValueError, KeyError, plain.PlainDataError):
                    pass  # recomputed below
            todo.append(p)
        bar = progress_bar(progress, len(todo), "references")
        with ThreadPoolExecutor(max_workers=sandbox.workers, thread_name_prefix="reference") as pool:
            for p, ref in zip(todo, pool.map(lambda p: compute_reference(sandbox, p), todo)):
                self.refs[p.task_id] = ref
                path = self._cache_path(p)
                if path is not None and ref.error is None:
                    write_json_atomic(path, ref.as_json())
                if bar is not None:
                    bar.update()
        if bar is not None:
            bar.close()


def compute_reference(sandbox: Sandbox, problem: Problem) -> Reference:
    """Run the reference solution on every input in the sandbox; its outputs and times per input."""
    base_in, plus_in = inputs(problem, "base"), inputs(problem, "plus")
    n_base = len(base_in)
    program = CallProgram(
        setup=reference_code(problem),
        entry_point=problem.entry_point,
        inputs=plain.encode([list(a) for a in base_in + plus_in]),
        groups=(CallGroup(n_base, None, REFERENCE_WALL_S), CallGroup(len(plus_in), None, REFERENCE_WALL_S)),
        recursion_room=REFERENCE_RECURSION_ROOM,
    )
    outs: list[Any] = []
    times: list[float] = []
    problem_seen: list[str] = []

    def take(i: int, rec: list) -> bool:
        if i == -1:
            if rec != ["ready"]:
                problem_seen.append(f"setup: {rec}")
            return rec == ["ready"]
        if rec[0] != "ok":
            problem_seen.append(f"input {i}: {str(rec)[:MESSAGE_CHARS]}")
            return False
        outs.append(rec[1])
        times.append(float(rec[2]))
        return True

    r = sandbox.run_calls(program, take, limits=Limits(memory_bytes=sandbox.limits.memory_bytes))
    ref = Reference(problem.task_id)
    if problem_seen or len(outs) != len(base_in) + len(plus_in):
        why = (
            problem_seen[0]
            if problem_seen
            else f"{r.end} after {len(outs)} of {len(base_in) + len(plus_in)} inputs"
        )
        ref.error = f"the reference solution failed ({why}) {r.stderr[-300:]}".strip()
        return ref
    outs = plus_family(problem).reference_outputs(problem, outs)
    ref.base, ref.plus = outs[:n_base], outs[n_base:]
    ref.base_time, ref.plus_time = times[:n_base], times[n_base:]
    return ref


def progress_bar(progress: bool, total: int, desc: str) -> Any:
    if not progress or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="program")
