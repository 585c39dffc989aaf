"""Stage ``pack``: documents into memmap token shards for training.

Output directory::

    manifest.json            stage manifest: config, inputs, shards (in order), document and token counts
    shard-00000.bin          flat uint16 (vocab <= 65536) or uint32 token ids
    shard-00000.json         sidecar: dtype, tokenizer name + fingerprint, EOT id, documents, tokens

Token shard ``k`` holds the documents of input shard ``k`` (``textbooks.data.engine.reader``; none when it has no
documents), each encoded as
ordinary text (special-token text inside documents stays ordinary text; ``encode_to_numpy``, so no Python list
of ints is ever built) and followed by ``<|endoftext|>``. The token stream a dataset reads is the shards in
order, i.e. the documents in input order, whatever the number of tasks that wrote them, so the training data
order does not depend on how the data was packed. Within a task, files are read in a background thread while
the tokenizer threads encode the previous batch; a shard finished by a killed run is not encoded again.
"""

from __future__ import annotations

import functools
import itertools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from textbooks.config import dataclass_from
from textbooks.data.engine.executor import ExecutorConfig
from textbooks.data.engine.executor import run as run_on
from textbooks.data.engine.inputs import Shard, Source, plan_shards, resolve
from textbooks.data.engine.reader import Fields, ReadStats, batched, read_shard
from textbooks.data.engine.stage import Stage, Step, Task, execution_only, summed
from textbooks.errors import ConfigError
from textbooks.io import atomic_path, write_json_atomic
from textbooks.sandbox.pool import default_workers
from textbooks.tokenizer import encoding_pool, eot_token, fingerprint, load_tokenizer


@dataclass
class PackConfig:
    inputs: Any = None  # source directories, JSONL or Parquet files/directories, earlier stages' outputs
    out_dir: str | None = None
    tokenizer: str = "p50k_base"  # tiktoken name or a trained .tiktoken path
    pattern: str = "**/*.py"  # files to read inside source directories
    text_field: str = "text"
    id_field: str = "id"
    max_file_bytes: int | None = 1_000_000
    shard_bytes: int = 8 << 20  # source files per shard (a JSONL/Parquet file is a shard of its own)
    batch_docs: int = execution_only(1024)  # documents per encode_ordinary_batch call
    num_threads: int = execution_only(0)  # tokenizer threads per task (0 = one per CPU it may use)
    max_bad_fraction: float = execution_only(0.01)
    extra: dict = field(default_factory=dict)  # free-form provenance (e.g. the mixture name)
    # or a named piece of the dataset mixtures: its inputs are components[component], its out_dir
    # ${paths.data}/tokens/<tokenizer tag>/<component> (exercises: the set decontaminated at tau)
    component: str | None = execution_only(None)
    components: dict[str, list[str]] = field(default_factory=dict, metadata={"execution": True})
    tau: float = execution_only(0.95)
    name: str = "pack"  # the stage (conf/stage/pack.yaml)


def token_dtype(n_vocab: int) -> np.dtype:
    return np.dtype(np.uint16) if n_vocab <= 65536 else np.dtype(np.uint32)


_DONE = object()


def prefetch(items: Iterator, depth: int = 4) -> Iterator:
    """``items`` produced by a background thread, up to ``depth`` ahead; its exceptions re-raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as e:  # handed to the consumer, raised there
            q.put(e)

    t = threading.Thread(target=work, name="prefetch", daemon=True)
    t.start()
    try:
        while (item := q.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        t.join()


def ordinary_encoder(enc) -> Callable[[str], np.ndarray]:
    """``text -> uint32 token ids`` like ``enc.encode_ordinary`` (special-token text is ordinary text)."""
    return functools.partial(enc.encode_to_numpy, disallowed_special=())


class Pack(Stage):
    """Encode each input shard into ``shard-<k>.bin`` and its sidecar."""

    name = "pack"
    stale = ("shard-*.bin", "shard-*.json")

    def __init__(self, cfg: PackConfig) -> None:
        self.config = cfg
        self.sources: list[Source] = [resolve(s, where="pack") for s in cfg.inputs]
        self.inputs = [s.path for s in self.sources]
        self.pattern = cfg.pattern
        enc = load_tokenizer(cfg.tokenizer)
        self.tokenizer = {
            "name": enc.name,
            "path": cfg.tokenizer,
            "fingerprint": fingerprint(enc),
            "n_vocab": enc.n_vocab,
        }

    def key_config(self) -> dict[str, Any]:
        return super().key_config() | {"tokenizer_fingerprint": self.tokenizer["fingerprint"]}

    def plan(self) -> dict[str, Any]:
        shards = plan_shards(self.sources, pattern=self.config.pattern, shard_bytes=self.config.shard_bytes)
        return {"shards": [s.to_dict() for s in shards]}

    def steps(self) -> list[Step]:
        return [Step("encode", "encode")]

    def encode(self, task: Task) -> dict[str, Any]:
        cfg = self.config
        enc = load_tokenizer(cfg.tokenizer)
        eot, dtype = eot_token(enc), token_dtype(enc.n_vocab)
        shards = [Shard.from_dict(d) for d in task.plan["shards"]]
        fields = Fields((cfg.text_field,), cfg.id_field)
        threads = cfg.num_threads or default_workers()
        bar = task.bar(f"pack {Path(cfg.out_dir).name}")
        encode = functools.partial(encoding_pool(threads).map, ordinary_encoder(enc))

        def one(i: int) -> dict[str, Any]:
            stats = ReadStats()
            docs = read_shard(shards[i], stats, fields=fields, columns=(), max_bytes=cfg.max_file_bytes)
            texts = itertools.chain.from_iterable(prefetch(batched((d["text"] for d in docs), 256)))
            name = f"shard-{i:05d}"
            meta = _write_shard(
                task.publish_path(f"{name}.bin"), texts, encode, eot, dtype, cfg.batch_docs, bar
            )
            if not meta["documents"]:  # an input shard with no documents leaves no token shard
                task.publish_path(f"{name}.bin").unlink()
            else:
                meta.update({"dtype": dtype.name, "tokenizer": self.tokenizer, "eot_token": eot})
                write_json_atomic(task.publish_path(f"{name}.json"), meta)
            return {"documents": meta["documents"], "tokens": meta["tokens"], "read": stats.to_dict()}

        try:
            return task.each_shard(len(shards), one)
        finally:
            bar.close()

    def summarize(self, task: Task) -> dict[str, Any]:
        shards = task.shard_stats("encode")
        read = task.reads("encode", self.config.max_bad_fraction, f"pack {self.config.inputs}")
        enc = load_tokenizer(self.config.tokenizer)
        total = summed(shards, ("documents", "tokens"))
        return {
            "dtype": token_dtype(enc.n_vocab).name,
            "tokenizer": self.tokenizer,
            "eot_token": eot_token(enc),
            "documents": total.get("documents", 0),
            "tokens": total.get("tokens", 0),
            "shards": [
                {"path": f"shard-{k:05d}.bin", "tokens": s["tokens"], "documents": s["documents"]}
                for k, s in enumerate(shards)
                if s["documents"]
            ],
            "read": read.to_dict(),
            "extra": self.config.extra,
        }


def _write_shard(
    path: Path,
    texts: Iterable[str],
    encode: Callable[[Iterable[str]], Iterator[np.ndarray]],
    eot: int,
    dtype: np.dtype,
    batch: int,
    bar: Any,
) -> dict[str, Any]:
    n_docs = n_tokens = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for part in batched(texts, batch):
            ids = list(encode(part))
            ends = np.cumsum([len(x) + 1 for x in ids])
            arr = np.empty(int(ends[-1]), dtype=dtype)
            for x, end in zip(ids, ends, strict=True):
                arr[end - 1 - len(x) : end - 1] = x
            arr[ends - 1] = eot
            arr.tofile(f)
            n_tokens += len(arr)
            n_docs += len(part)
            bar.update(len(part))
    return {"documents": n_docs, "tokens": n_tokens, "bytes": path.stat().st_size}


def pack(cfg: PackConfig, executor: ExecutorConfig | None = None, *, progress: bool = True) -> dict:
    """Encode ``cfg.inputs`` into token shards under ``cfg.out_dir``; returns the manifest (skipped when an
    identical pack exists)."""
    return run_on(Pack(cfg), executor, progress=progress)


CONFIG = PackConfig  # the schema of conf/stage/pack.yaml (registered as stage/pack_schema)


def from_config(cfg: Any) -> Pack:
    """The stage ``textbooks-data stage=pack`` runs: a named component, or ``stage.inputs`` into ``stage.out_dir``."""
    c = dataclass_from(PackConfig, cfg.stage, "stage pack")
    if c.component is not None:
        if c.component not in c.components:
            raise ConfigError(f"stage.component={c.component!r}: choose one of {sorted(c.components)}")
        name = f"{c.component}-tau{c.tau}" if c.component == "exercises" else c.component
        c.inputs = c.inputs or c.components[c.component]
        c.out_dir = c.out_dir or str(Path(cfg.paths.data) / "tokens" / cfg.tokenizer.tag / name)
        c.extra = {"component": c.component} | ({"tau": c.tau} if c.component == "exercises" else {})
    if not c.inputs or not c.out_dir:
        raise ConfigError(
            "stage=pack needs stage.component=<name> or both stage.inputs=[...] and stage.out_dir=..."
        )
    c.inputs = [c.inputs] if isinstance(c.inputs, str) else list(c.inputs)
    return Pack(c)
