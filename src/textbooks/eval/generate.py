"""Batched text generation behind one interface, for ``textbooks`` checkpoints, ``transformers`` models and
models behind an OpenAI-compatible endpoint (``ServedLM``: the same ``iter_generate``, see its docstring).

``load_lm(checkpoint=...)`` wraps a ``PhiForCausalLM`` from ``load_pretrained`` (tokenizer: its tiktoken
encoding); ``load_lm(hf_model=...)`` wraps any ``transformers`` causal LM with its tokenizer, by hub name
(``microsoft/phi-1`` where the hub is reachable) or local path. Both run the same decoding loop:

* prompts are tokenized, cut from the left when ``prompt + max_new_tokens`` exceeds the context, sorted by
  length (longest first) and decoded ``batch_size`` rows at a time, left-padded with an attention mask and
  position ids; results are handed back in the caller's order;
* a KV cache (``use_cache=False`` recomputes the whole prefix each step: the benchmark's baseline);
* greedy (``temperature == 0``) or nucleus sampling; every row draws from its own RNG, seeded from
  ``(seed, key, sample index)``, so a sample does not depend on the batch it ran in (a resumed run draws
  the same numbers);
* each row stops at end-of-text, at ``max_new_tokens`` or as soon as its text contains a stop sequence,
  and its completion is cut at the first one; finished rows leave the batch.

Greedy decoding of one prompt does not depend on the batch size in exact arithmetic (padding is masked,
positions count real tokens only); in float32, kernels of different shapes may round differently, so
near-ties can flip; in float64 they do not (the tests check batch sizes 1, 3 and 8). With greedy decoding,
``n`` samples of a prompt are one decoding copied ``n`` times.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import dataclasses
import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from textbooks.errors import ConfigError, TextbooksError
from textbooks.model import KVCache, PhiForCausalLM

FINISH_REASONS = ("stop", "eos", "length")


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode. ``n`` samples per prompt; ``stop`` sequences end a completion (and are cut off)."""

    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    n: int = 1
    seed: int = 0
    batch_size: int = 8  # rows decoded together
    stop: tuple[str, ...] = ()
    stop_at_eos: bool = True
    use_cache: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))
        checks = [
            (self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
            (self.temperature >= 0, "temperature must be >= 0 (0 = greedy)"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.n >= 1, "n (samples per prompt) must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (all(isinstance(s, str) and s for s in self.stop), "stop sequences must be non-empty strings"),
        ]
        for ok, why in checks:
            if not ok:
                raise ConfigError(f"generation: {why} (got {self})")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "stop": list(self.stop)}


@dataclass(frozen=True)
class Completion:
    """One sample: the text after the prompt, cut at the first stop sequence."""

    index: int  # which prompt
    sample: int  # which of its n samples
    text: str
    finish_reason: str  # one of FINISH_REASONS
    n_tokens: int  # tokens generated (up to and including the one completing a stop sequence)
    prompt_tokens: int  # prompt tokens the model saw
    prompt_dropped: int  # prompt tokens cut from the left to fit the context
    token_ids: tuple[int, ...] = field(default=(), repr=False)  # the generated tokens, eos excluded


# ----------------------------------------------------------------------------------------------- codecs


class Codec(abc.ABC):
    """Text <-> token ids for one model."""

    name: str
    eos_token_id: int | None
    n_vocab: int  # ids the tokenizer can decode; the model's padded embedding rows beyond are never picked

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """UTF-8 bytes of ``ids`` (stop sequences are searched in bytes, exact across token boundaries)."""
        return self.decode(ids).encode("utf-8", "surrogatepass")

    def token_bytes(self, token: int) -> bytes | None:
        """The bytes one token adds, when that is well defined (byte-level BPE); None otherwise."""
        return None


class TiktokenCodec(Codec):
    """A ``tiktoken.Encoding`` (``p50k_base`` or a trained BPE); special tokens in text are plain text."""

    def __init__(self, encoding: Any) -> None:
        from textbooks.tokenizer import TokenizerError, eot_token

        self.encoding = encoding
        self.name = encoding.name
        self.n_vocab = encoding.n_vocab
        try:
            self.eos_token_id = eot_token(encoding)
        except TokenizerError:
            self.eos_token_id = None

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.encoding.decode(list(ids), errors="replace")

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return self.encoding.decode_bytes(list(ids))

    def token_bytes(self, token: int) -> bytes | None:
        return self.encoding.decode_single_token_bytes(token)


class HFCodec(Codec):
    """A ``transformers`` tokenizer, without added special tokens and without clean-up of spaces."""

    def __init__(self, tokenizer: Any, eos_token_id: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        self.n_vocab = len(tokenizer)
        self.eos_token_id = eos_token_id if eos_token_id is not None else tokenizer.eos_token_id

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


# ----------------------------------------------------------------------------------------------- models


def row_seed(seed: int, key: str, sample: int) -> int:
    """The RNG seed of one sample: a hash of (run seed, prompt key, sample index)."""
    digest = hashlib.sha256(f"{seed}\0{key}\0{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


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


class LM(abc.ABC):
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

    def prompt_ids(self, prompt: str, max_new_tokens: int) -> tuple[list[int], int]:
        """The prompt's tokens, cut from the left to leave room for ``max_new_tokens``; and how many were cut."""
        budget = self.context_length - max_new_tokens
        if budget < 1:
            raise ConfigError(
                f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's context of "
                f"{self.context_length} tokens; lower max_new_tokens"
            )
        ids = self.codec.encode(prompt)
        if not ids:  # an empty prompt: condition on end-of-text, as at a document boundary
            ids = [self.pad_id]
        dropped = max(0, len(ids) - budget)
        return ids[dropped:], dropped

    def iter_generate(
        self,
        prompts: Sequence[str],
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
        self, prompts: Sequence[str], config: GenerationConfig, keys: Sequence[str] | None = None
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


class HFLM(LM):
    """A ``transformers`` causal LM (``AutoModelForCausalLM``) with its tokenizer."""

    def __init__(self, model: Any, codec: Codec | Any, *, source: str | None = None) -> None:
        self.model = model
        self.codec = codec if isinstance(codec, Codec) else HFCodec(codec, _hf_eos(model, codec))
        cfg = model.config
        self.context_length = int(
            getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048)
        )
        self.source = source

    @property
    def module(self) -> torch.nn.Module:
        return self.model

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, *, device: str = "cpu", dtype: torch.dtype | None = None
    ) -> HFLM:
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:
            raise TextbooksError("hf_model needs the transformers package: pip install -e '.[hf]'") from e
        try:
            tok = AutoTokenizer.from_pretrained(name_or_path)
            model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype or torch.float32)
        except (OSError, ValueError) as e:
            raise TextbooksError(
                f"hf_model={name_or_path!r}: cannot load it with transformers ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}). Give a local directory with config.json, the "
                "weights and the tokenizer files, or a hub id on a machine that can reach the hub"
            ) from e
        return cls(model.to(device).eval(), tok, source=name_or_path)

    def _new_cache(self, batch: int, max_len: int) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def _forward(self, ids: Tensor, mask: Tensor, positions: Tensor, cache: Any, keep: int) -> Tensor:
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=cache is not None,
            logits_to_keep=keep,
        )
        return out.logits

    def _select(self, cache: Any, rows: Tensor) -> Any:
        cache.batch_select_indices(rows)
        return cache

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "transformers",
            "path": self.source,
            "name": getattr(self.model.config, "name_or_path", None) or self.source,
            "params": sum(p.numel() for p in self.model.parameters()),
            "context": self.context_length,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "tokenizer": self.codec.name,
        }


def _hf_eos(model: Any, tokenizer: Any) -> int | None:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos = eos[0] if isinstance(eos, list | tuple) and eos else eos
    return eos


# ---------------------------------------------------------------------------------------------- served

CHAT_INSTRUCTION = (  # EvalPlus's instruction for chat models; the problem follows in a code block
    "Please provide a self-contained Python script that solves the following problem in a markdown code block:"
)
SERVED_APIS = ("chat", "completions")


class ServedLM:
    """A model behind an OpenAI-compatible endpoint, generating through ``textbooks.data.llm``'s client
    (response cache, retries, concurrency): the same ``iter_generate`` as a local ``LM``.

    ``api="completions"`` (base models): the prompt is continued as is, with the stop sequences sent to the
    server and applied again here (servers cap how many they take). ``api="chat"`` (instruct models): one
    user message, ``instruction`` then the prompt in a code block; the answer comes back whole, for the
    caller to sanitize. Greedy decoding asks once per prompt (copied ``n`` times); sampling asks ``n``
    times with per-sample seeds (``row_seed``), so a rerun asks the same requests and the cache answers.
    Failed requests (after the client's retries) are not yielded; when the others are done,
    ``GenerationError`` says how many failed and why (their problems are generated on the rerun).
    """

    def __init__(self, llm: Any, *, api: str = "chat", instruction: str = CHAT_INSTRUCTION) -> None:
        if api not in SERVED_APIS:
            raise ConfigError(f"api={api!r}: use chat (instruct models) or completions (base models)")
        self.llm = llm  # textbooks.data.llm.LLMConfig, with base_url set
        self.api = api
        self.instruction = instruction

    def chat_prompt(self, prompt: str) -> str:
        return f"{self.instruction}\n```python\n{prompt.strip()}\n```\n"

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "served",
            "name": self.llm.model,
            "endpoint": self.llm.base_url,
            "api": self.api,
            **({"instruction": self.instruction} if self.api == "chat" else {}),
        }

    def iter_generate(
        self, prompts: Sequence[str], config: GenerationConfig, keys: Sequence[str] | None = None
    ) -> Iterator[Completion]:
        """Yield a ``Completion`` for every answered request, in prompt order (see the class docstring)."""
        from textbooks.data.llm import LLMClient

        if keys is not None and len(keys) != len(prompts):
            raise ConfigError(f"generate: {len(keys)} keys for {len(prompts)} prompts")
        keys = [str(k) for k in keys] if keys is not None else [str(i) for i in range(len(prompts))]
        llm = dataclasses.replace(self.llm, progress=False)
        rows: list[tuple[int, int]] = []
        with LLMClient(llm) as client:
            requests = []
            for i, prompt in enumerate(prompts):
                for j in [-1] if config.greedy else range(config.n):
                    params: dict[str, Any] = {"max_tokens": config.max_new_tokens, "temperature": 0.0}
                    if not config.greedy:
                        params.update(temperature=config.temperature, seed=row_seed(config.seed, keys[i], j))
                        params["top_p"] = config.top_p if config.top_p < 1 else None
                    if self.api == "completions":
                        requests.append(
                            client.completion_request(prompt, stop=list(config.stop) or None, **params)
                        )
                    else:
                        requests.append(client.request(self.chat_prompt(prompt), **params))
                    rows.append((i, j))
            failed: collections.Counter[str] = collections.Counter()
            example = ""
            for (i, j), res in zip(rows, client.iter_results(requests, desc="generating")):
                if not res.ok:
                    failed[str(res.error_kind)] += 1
                    example = example or str(res.error)
                    continue
                c = self._completion(i, j, res, config)
                if j >= 0:
                    yield c
                else:
                    for k in range(config.n):
                        yield dataclasses.replace(c, sample=k)
        if failed:
            raise GenerationError(
                f"{sum(failed.values())} of {len(requests)} requests to {self.llm.base_url} failed after "
                f"{self.llm.max_attempts} attempts ({dict(failed)}; e.g. {example[:200]}). The samples of every "
                "other problem are saved: fix the endpoint and rerun the same command to generate only the rest"
            )

    def _completion(self, i: int, j: int, res: Any, config: GenerationConfig) -> Completion:
        """An answer as a ``Completion``: "length" when cut at max_tokens, "stop" when cut here at a stop
        sequence, else "eos" (a stop sequence the server applied counts here: servers do not say which)."""
        from textbooks.eval.prompts import truncate

        text, reason = res.text, "length" if res.finish_reason == "length" else "eos"
        if self.api == "completions" and config.stop:
            cut = truncate(text, config.stop)
            if cut != text:
                text, reason = cut, "stop"
        return Completion(
            index=i,
            sample=max(j, 0),
            text=text,
            finish_reason=reason,
            n_tokens=res.completion_tokens,
            prompt_tokens=res.prompt_tokens,
            prompt_dropped=0,
        )


class GenerationError(TextbooksError):
    """Generation could not finish; what was generated is kept and a rerun resumes."""


DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str | None, device: str) -> torch.dtype | None:
    """``auto`` -> bfloat16 on CUDA GPUs that support it, else float32; None keeps the weights' dtype."""
    if dtype is None:
        return None
    if dtype == "auto":
        cuda_bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r}: use one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_lm(
    checkpoint: str | os.PathLike | None = None,
    hf_model: str | None = None,
    *,
    device: str = "auto",
    dtype: str | None = "auto",
) -> LM:
    """A ``textbooks`` checkpoint (a run's ``model/`` dir or a ``.ckpt``) or a ``transformers`` model."""
    if (checkpoint is None) == (hf_model is None):
        raise ConfigError("give exactly one of checkpoint=<model dir or .ckpt> and hf_model=<hub id or path>")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if checkpoint is not None:
        return TextbooksLM.from_pretrained(checkpoint, device=dev, dtype=dt)
    return HFLM.from_pretrained(str(hf_model), device=dev, dtype=dt)


@dataclass
class GenerationStats:
    """Counts and timings of a generation run (``add`` each completion)."""

    completions: int = 0
    new_tokens: int = 0
    finish_reasons: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINISH_REASONS, 0))
    samples_with_truncated_prompt: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, c: Completion) -> None:
        self.completions += 1
        self.new_tokens += c.n_tokens
        self.finish_reasons[c.finish_reason] += 1
        self.samples_with_truncated_prompt += c.prompt_dropped > 0

    def as_dict(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.started
        return {
            "completions": self.completions,
            "new_tokens": self.new_tokens,
            "finish_reasons": dict(self.finish_reasons),
            "samples_with_truncated_prompt": self.samples_with_truncated_prompt,
            "wall_s": round(wall, 3),
            "tokens_per_s": round(self.new_tokens / wall, 1) if wall > 0 else None,
        }
