"""The one decoding loop: every text the library generates with a local model goes through ``LM``.

The evaluation (``textbooks-eval``), the in-training callback and the demo decode with it, for
``textbooks`` models (``TextbooksLM``, here) and ``transformers`` models (``textbooks.eval.models.load.HFLM``);
models behind an OpenAI-compatible endpoint answer the same ``iter_generate`` (``textbooks.eval.models.served``).

* prompts (text, or token ids) are cut from the left when ``prompt + max_new_tokens`` exceeds the context,
  sorted by length (longest first) and decoded ``batch_size`` rows at a time, left-padded with an
  attention mask and position ids; results are handed back in the caller's order;
* a KV cache (``use_cache=False`` recomputes the whole prefix each step: the benchmark's baseline);
* greedy (``temperature == 0``) or nucleus sampling; every row draws from its own RNG, seeded from
  ``(seed, key, sample index)``, so a sample does not depend on the batch it ran in (a resumed run draws
  the same numbers); ids past the tokenizer's (the embedding's padding rows) are never picked;
* each row stops at end-of-text, at ``max_new_tokens`` or as soon as its text contains a stop sequence,
  and its completion is cut at the first one; finished rows leave the batch.

Greedy decoding of one prompt does not depend on the batch size in exact arithmetic (padding is masked,
positions count real tokens only); in float32, kernels of different shapes may round differently, so
near-ties can flip; in float64 they do not (the tests check batch sizes 1, 3 and 8). With greedy decoding,
``n`` samples of a prompt are one decoding copied ``n`` times.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from textbooks.errors import ConfigError
from textbooks.eval.models.codecs import Codec, TiktokenCodec
from textbooks.eval.models.completions import Completion, GenerationConfig, TextModel, row_seed
from textbooks.model import KVCache, PhiForCausalLM

Prompt = str | Sequence[int]  # text, or token ids already encoded


@dataclass
class _Row:
    index: int
    sample: int  # -1: greedy, stands for all n samples
    ids: list[int]
    dropped: int
    seed: int


class _RowText:
    """A row's generated tokens and text bytes, with incremental stop-sequence search."""

    def __init__(self, codec: Codec, stops: Sequence[bytes]) -> None:
        self.codec = codec
        self.stops = stops
        self.longest = max((len(s) for s in stops), default=0)
        self.ids: list[int] = []
        self.buf = b""

    def add(self, token: int) -> int | None:
        """Append ``token``; the byte offset of the earliest stop sequence now in the text, or None."""
        self.ids.append(token)
        if not self.stops:
            return None
        old = len(self.buf)
        piece = self.codec.token_bytes(token)
        self.buf = self.buf + piece if piece is not None else self.codec.decode_bytes(self.ids)
        start = max(0, min(old, len(self.buf)) - self.longest + 1)
        hits = [i for s in self.stops if (i := self.buf.find(s, start)) >= 0]
        return min(hits) if hits else None

    def text(self, cut: int | None = None) -> str:
        data = self.codec.decode_bytes(self.ids) if cut is None else self.buf[:cut]
        return data.decode("utf-8", errors="replace")


class LM(TextModel, abc.ABC):
    """A causal LM and its codec: batched generation (``generate``) and last-positions logits (``logits``)."""

    codec: Codec
    context_length: int

    # -- what a backend provides ---------------------------------------------------------------------------
    @abc.abstractmethod
    def _new_cache(self, batch: int, max_len: int) -> Any: ...

    @abc.abstractmethod
    def _forward(self, ids: Tensor, mask: Tensor, positions: Tensor, cache: Any, keep: int) -> Tensor:
        """Logits ``[B, keep, V]`` of the last ``keep`` positions (appending to ``cache`` when given)."""

    @abc.abstractmethod
    def _select(self, cache: Any, rows: Tensor) -> Any:
        """The cache restricted to batch ``rows``."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """What model this is (kind, path, parameters, dtype, device, tokenizer), for results files."""

    @property
    @abc.abstractmethod
    def module(self) -> torch.nn.Module:
        """The underlying ``torch.nn.Module``."""

    # -- shared ------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode and ``no_grad`` inside; the module's previous mode is restored after."""
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.module.train(was_training)

    @property
    def pad_id(self) -> int:
        return self.codec.eos_token_id if self.codec.eos_token_id is not None else 0

    def encode(self, text: str) -> list[int]:
        return self.codec.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.codec.decode(ids)

    @torch.no_grad()
    def logits(self, input_ids: Tensor, attention_mask: Tensor, keep: int = 1) -> Tensor:
        """Logits ``[B, keep, V]`` of the last ``keep`` positions of a left-padded batch (no cache)."""
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return self._forward(input_ids, attention_mask, positions, None, keep)

    def left_pad(self, seqs: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        """``(input_ids, attention_mask)`` ``[B, max len]`` on the model's device, padded on the left."""
        T = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), T), dtype=torch.long)
        for i, s in enumerate(seqs):
            if len(s):
                ids[i, T - len(s) :] = torch.tensor(list(s), dtype=torch.long)
                mask[i, T - len(s) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def prompt_ids(self, prompt: Prompt, max_new_tokens: int) -> tuple[list[int], int]:
        """The prompt's tokens (text is encoded, ids are taken as they are), cut from the left to leave room
        for ``max_new_tokens``; and how many were cut."""
        budget = self.context_length - max_new_tokens
        if budget < 1:
            raise ConfigError(
                f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's context of "
                f"{self.context_length} tokens; lower max_new_tokens"
            )
        ids = self.codec.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:  # an empty prompt: condition on end-of-text, as at a document boundary
            ids = [self.pad_id]
        dropped = max(0, len(ids) - budget)
        return ids[dropped:], dropped

    def iter_generate(
        self,
        prompts: Sequence[Prompt],
        config: GenerationConfig,
        keys: Sequence[str] | None = None,
    ) -> Iterator[Completion]:
        """Yield every ``Completion`` (``n`` per prompt) as its batch finishes, in no particular order.

        ``keys`` (default: the prompt indices) name the prompts for the per-sample RNG seeds, so a sample
        stays the same whichever other prompts are generated with it.
        """
        if keys is not None and len(keys) != len(prompts):
            raise ConfigError(f"generate: {len(keys)} keys for {len(prompts)} prompts")
        keys = [str(k) for k in keys] if keys is not None else [str(i) for i in range(len(prompts))]
        rows: list[_Row] = []
        for i, prompt in enumerate(prompts):
            ids, dropped = self.prompt_ids(prompt, config.max_new_tokens)
            samples = [-1] if config.greedy else range(config.n)
            rows += [_Row(i, j, ids, dropped, row_seed(config.seed, keys[i], j)) for j in samples]
        rows.sort(key=lambda r: (-len(r.ids), r.index, r.sample))
        for b in range(0, len(rows), config.batch_size):
            with self.evaluating():  # not held across yields: the caller's grad mode stays its own
                finished = list(self._decode(rows[b : b + config.batch_size], config))
            for row, c in finished:
                if row.sample >= 0:
                    yield c
                else:
                    for j in range(config.n):
                        yield dataclasses.replace(c, sample=j)

    def generate(
        self, prompts: Sequence[Prompt], config: GenerationConfig, keys: Sequence[str] | None = None
    ) -> list[list[Completion]]:
        """All completions, ``out[i][j]`` = sample ``j`` of prompt ``i``."""
        out: list[list[Completion | None]] = [[None] * config.n for _ in prompts]
        for c in self.iter_generate(prompts, config, keys):
            out[c.index][c.sample] = c
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def _decode(self, rows: list[_Row], cfg: GenerationConfig) -> Iterator[tuple[_Row, Completion]]:
        """Decode one batch; yield each row's completion when it finishes."""
        max_new = cfg.max_new_tokens
        ids, mask = self.left_pad([r.ids for r in rows])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = self._new_cache(len(rows), ids.shape[1] + max_new) if cfg.use_cache else None
        stops = [s.encode() for s in cfg.stop]
        texts = [_RowText(self.codec, stops) for _ in rows]
        gens = None
        if not cfg.greedy:
            gens = [torch.Generator().manual_seed(r.seed) for r in rows]
        eos = self.codec.eos_token_id if cfg.stop_at_eos else None
        alive = list(range(len(rows)))  # batch position -> row
        seq = ids
        logits = self._forward(ids, mask, positions, cache, 1)[:, -1]
        for _ in range(max_new):
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            if logits.shape[-1] > self.codec.n_vocab:  # padding rows of the embedding are not tokens
                logits[:, self.codec.n_vocab :] = -torch.inf
            nxt = _pick(logits, cfg, [gens[i] for i in alive] if gens else None)
            keep: list[int] = []
            for pos, (i, tok) in enumerate(zip(alive, nxt.tolist())):
                r, t = rows[i], texts[i]
                if tok == eos:
                    yield r, self._completion(r, t, "eos", len(t.ids) + 1)
                    continue
                cut = t.add(tok)
                if cut is not None:
                    yield r, self._completion(r, t, "stop", len(t.ids), cut)
                elif len(t.ids) >= max_new:
                    yield r, self._completion(r, t, "length", len(t.ids))
                else:
                    keep.append(pos)
            if not keep:
                return
            if len(keep) < len(alive):
                sel = torch.tensor(keep, device=self.device)
                nxt, mask, seq = nxt[sel], mask[sel], seq[sel]
                cache = self._select(cache, sel) if cache is not None else None
                alive = [alive[p] for p in keep]
            step = nxt[:, None]
            mask = torch.cat((mask, torch.ones_like(step)), dim=1)
            if cache is not None:
                logits = self._forward(step, mask, mask.sum(-1, keepdim=True) - 1, cache, 1)[:, -1]
            else:
                seq = torch.cat((seq, step), dim=1)
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = self._forward(seq, mask, positions, None, 1)[:, -1]

    @staticmethod
    def _completion(r: _Row, t: _RowText, reason: str, n_tokens: int, cut: int | None = None) -> Completion:
        return Completion(
            index=r.index,
            sample=max(r.sample, 0),
            text=t.text(cut),
            finish_reason=reason,
            n_tokens=n_tokens,
            prompt_tokens=len(r.ids),
            prompt_dropped=r.dropped,
            token_ids=tuple(t.ids),
        )


def _pick(logits: Tensor, cfg: GenerationConfig, gens: list[torch.Generator] | None) -> Tensor:
    """Greedy, or nucleus sampling with one uniform draw per row from that row's own generator."""
    if cfg.greedy or gens is None:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.double() / cfg.temperature, dim=-1)
    sorted_p, idx = probs.sort(dim=-1, descending=True, stable=True)
    if cfg.top_p < 1.0:
        sorted_p = sorted_p * (sorted_p.cumsum(-1) - sorted_p < cfg.top_p)  # keeps the most likely token
    cum = sorted_p.cumsum(-1)
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in gens]).to(cum.device)
    choice = torch.searchsorted(cum, (u * cum[:, -1])[:, None], right=True).clamp(max=cum.shape[1] - 1)
    return idx.gather(-1, choice).squeeze(-1)


class TextbooksLM(LM):
    """A ``textbooks`` ``PhiForCausalLM`` (KV cache: ``model.KVCache``)."""

    def __init__(self, model: PhiForCausalLM, codec: Codec | Any, *, source: str | None = None) -> None:
        self.model = model
        self.codec = codec if isinstance(codec, Codec) else TiktokenCodec(codec)
        self.context_length = model.config.max_seq_len
        self.source = source

    @property
    def module(self) -> PhiForCausalLM:
        return self.model

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, *, device: str = "cpu", dtype: torch.dtype | None = None
    ) -> TextbooksLM:
        from textbooks.checkpoint import load_pretrained

        model, enc = load_pretrained(path, device=device, dtype=dtype)
        return cls(model, enc, source=str(Path(path).resolve()))

    def _new_cache(self, batch: int, max_len: int) -> KVCache:
        return KVCache(self.model.config, batch, max_len, device=self.device, dtype=self.dtype)

    def _forward(self, ids: Tensor, mask: Tensor, positions: Tensor, cache: Any, keep: int) -> Tensor:
        h = self.model.hidden_states(ids, attention_mask=mask, position_ids=positions, cache=cache)
        return self.model.lm_head(h[:, -keep:])

    def _select(self, cache: KVCache, rows: Tensor) -> KVCache:
        cache.select(rows)
        return cache

    def describe(self) -> dict[str, Any]:
        c = self.model.config
        return {
            "kind": "textbooks",
            "path": self.source,
            "name": c.name,
            "params": self.model.num_params(),
            "context": c.max_seq_len,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "tokenizer": self.codec.name,
        }
