"""Gold-solution bits per byte: how well a model predicts the reference solution of each problem.

For a problem with context ``c`` (the prompt the model is evaluated with) and reference solution ``s``::

    bpb = -sum_i ln p(s_i | c, s_<i) / ln 2 / len(s.encode("utf-8"))

over the solution's tokens ``s_i`` (``s`` as scored: see the tokenization below). ``c`` is the prompt of
the format in use and ``s`` the family's gold solution (``Family.gold_solution``): for HumanEval(+) the code
prompt and ``canonical_solution`` (the body); for MBPP variants bigcode's 0-shot docstring by default (or
the 3-shot prompt) and the reference code with ``\\r\\n`` normalised to ``\\n``.

Tokenization follows lm-eval-harness (and OLMo's gold bpb tasks): the context's trailing whitespace
(HumanEval's final ``\\n``) is moved to the front of the solution, the context is tokenized alone and
``context + solution`` together, and the solution's tokens are those after the context's. So the token at
the boundary is the one the model meets in training data (``\\n`` + indentation), and the bytes divided
by are those of the text scored: the solution plus the moved whitespace (usually one ``\\n``). Where a
tokenizer does not split at that boundary (not the case for GPT-2-style BPEs, which never merge across
a non-space/space boundary), the solution is tokenized on its own.

When context and solution do not fit in the model's context ``C`` together, the solution is scored in
windows of at most ``C // 2`` targets, each window seeing the ``C`` tokens before its last target (the
context is cut from the left), so every solution token sees at least ``C // 2`` tokens before it.
Summary: the byte-weighted ``bpb`` (total bits / total bytes) and the ``mean_bpb`` over problems.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from textbooks.benchmarks import Problem, build_prompt, default_format, gold_solution
from textbooks.errors import ConfigError
from textbooks.eval.models.decoding import LM

LN2 = math.log(2.0)


def gold_pair(
    problem: Problem, prompt_format: str | None = None, examples: Sequence[Problem] = ()
) -> tuple[str, str]:
    """``(context, solution)`` for ``problem`` under ``prompt_format`` (see ``benchmarks.build_prompt``)."""
    return build_prompt(problem, prompt_format, examples), gold_solution(problem)


@dataclass(frozen=True)
class ProblemBPB:
    """One problem's gold-solution likelihood."""

    task_id: str
    nats: float  # -sum ln p over the solution's tokens
    bytes: int  # UTF-8 bytes of the text scored: the solution (+ the context's trailing whitespace)
    tokens: int  # solution tokens
    context_tokens: int  # context tokens seen before the first solution token
    context_dropped: int  # context tokens cut from the left to fit the model

    @property
    def bits(self) -> float:
        return self.nats / LN2

    @property
    def bpb(self) -> float:
        return self.bits / self.bytes if self.bytes else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bits": self.bits, "bpb": self.bpb}


@dataclass(frozen=True)
class BPBReport:
    """Per-problem results and their summary."""

    problems: tuple[ProblemBPB, ...]

    @property
    def bpb(self) -> float:
        """Byte-weighted: total bits over total bytes."""
        n = sum(p.bytes for p in self.problems)
        return sum(p.bits for p in self.problems) / n if n else float("nan")

    @property
    def mean_bpb(self) -> float:
        """Unweighted mean of the problems' bpb."""
        scored = [p.bpb for p in self.problems if p.bytes]
        return sum(scored) / len(scored) if scored else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "bpb": self.bpb,
            "mean_bpb": self.mean_bpb,
            "n_problems": len(self.problems),
            "bytes": sum(p.bytes for p in self.problems),
            "tokens": sum(p.tokens for p in self.problems),
            "nats": sum(p.nats for p in self.problems),
            "contexts_truncated": sum(p.context_dropped > 0 for p in self.problems),
        }

    def write_jsonl(self, path: str | os.PathLike) -> Path:
        from textbooks.io import atomic_path

        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for p in self.problems:
                f.write(json.dumps(p.as_dict()) + "\n")
        return Path(path)


@dataclass(frozen=True)
class _Window:
    item: int  # which pair
    inputs: list[int]  # model input; its last len(targets) positions predict the targets
    targets: list[int]


def _chunk(P: int, S: int, C: int) -> int:
    """Targets per window: all ``S`` when context and solution fit in ``C``, else at most ``C // 2``."""
    return S if P + S - 1 <= C else min(S, max(1, C // 2))


def _windows(item: int, context: list[int], solution: list[int], C: int) -> list[_Window]:
    """Model inputs that score ``solution`` after ``context``: each window predicts its targets from the
    (at most ``C``) tokens before its last target."""
    seq = context + solution
    P, S = len(context), len(solution)
    h = _chunk(P, S, C)
    out = []
    for t0 in range(P, P + S, h):
        t1 = min(P + S, t0 + h)
        out.append(_Window(item, seq[max(0, t1 - 1 - C) : t1 - 1], seq[t0:t1]))
    return out


def move_whitespace(context: str, continuation: str) -> tuple[str, str]:
    """The context's trailing whitespace moved to the front of the continuation (lm-eval's rule)."""
    stripped = context.rstrip()
    return stripped, context[len(stripped) :] + continuation


def split_tokens(lm: LM, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of ``context`` and of ``continuation`` after it, the two texts as ``move_whitespace``
    makes them; the continuation's ids are those of the joint tokenization after the context's."""
    context, continuation = move_whitespace(context, continuation)
    ctx_ids = lm.encode(context)
    whole = lm.encode(context + continuation)
    if whole[: len(ctx_ids)] == ctx_ids:
        cont_ids = whole[len(ctx_ids) :]
    else:
        cont_ids = lm.encode(continuation)
    return ctx_ids or [lm.pad_id], cont_ids  # an empty context conditions on end-of-text


@torch.no_grad()
def sequence_nats(
    lm: LM, pairs: Sequence[tuple[str, str]], *, batch_size: int = 8
) -> list[tuple[float, int, int, int]]:
    """For each ``(context, continuation)``: ``(nats, continuation tokens, context tokens seen, context
    tokens dropped)``, the continuation's negative log-likelihood given the context (see
    ``split_tokens`` for where the boundary lies)."""
    if batch_size < 1:
        raise ConfigError(f"bpb: batch_size must be >= 1, got {batch_size}")
    C = lm.context_length
    windows: list[_Window] = []
    meta: list[tuple[int, int, int]] = []
    for i, (context, continuation) in enumerate(pairs):
        ctx_ids, sol_ids = split_tokens(lm, context, continuation)
        P, S = len(ctx_ids), len(sol_ids)
        dropped = max(0, P + _chunk(P, S, C) - 1 - C)  # where the first window starts
        meta.append((S, P - dropped, dropped))
        windows += _windows(i, ctx_ids, sol_ids, C)
    nats = [0.0] * len(pairs)
    order = sorted(range(len(windows)), key=lambda w: -len(windows[w].inputs))
    with lm.evaluating():
        for b in range(0, len(order), batch_size):
            batch = [windows[w] for w in order[b : b + batch_size]]
            ids, mask = lm.left_pad([w.inputs for w in batch])
            K = max(len(w.targets) for w in batch)
            logits = lm.logits(ids, mask, keep=K)  # [B, K, V]
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            targets = torch.full((len(batch), K), -100, dtype=torch.long)
            for r, w in enumerate(batch):
                targets[r, K - len(w.targets) :] = torch.tensor(w.targets)
            loss = F.cross_entropy(
                logits.flatten(0, 1), targets.to(logits.device).flatten(), reduction="none"
            ).view(len(batch), K)
            for r, w in enumerate(batch):
                nats[w.item] += float(loss[r].double().sum())
    return [(nats[i], *meta[i]) for i in range(len(pairs))]


def gold_bpb(
    lm: LM,
    problems: Iterable[Problem],
    *,
    prompt_format: str | None = None,
    examples: Sequence[Problem] = (),
    batch_size: int = 8,
) -> BPBReport:
    """Gold-solution bits per byte of ``lm`` on ``problems`` (prompted in ``prompt_format``)."""
    probs = list(problems)
    pairs = [gold_pair(p, prompt_format or default_format(p.benchmark), examples) for p in probs]
    scored = sequence_nats(lm, pairs, batch_size=batch_size)
    return BPBReport(
        tuple(
            ProblemBPB(
                task_id=p.task_id,
                nats=nats,
                bytes=len(move_whitespace(*pair)[1].encode("utf-8")),
                tokens=n_tok,
                context_tokens=seen,
                context_dropped=dropped,
            )
            for p, pair, (nats, n_tok, seen, dropped) in zip(probs, pairs, scored)
        )
    )
