"""Pack documents into memmap token shards.

Output directory::

    manifest.json            stage manifest: config, inputs, shards, document and token counts
    shard-00000.bin          flat uint16 (vocab <= 65536) or uint32 token ids
    shard-00000.json         sidecar: dtype, tokenizer name + fingerprint, EOT id, documents, tokens

Each document is encoded as ordinary text (special-token text inside documents stays ordinary text;
``encode_to_numpy``, so no Python list of ints is ever built) and followed by ``<|endoftext|>``. Files
are read in a background thread while the tokenizer threads encode the previous batch. Shard ``k`` holds documents ``[k * docs_per_shard, (k + 1) *
docs_per_shard)`` of the deterministic input order, so a killed run keeps its finished shards and a rerun
only encodes the missing ones.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from textbooks.data.documents import Document, ReadStats, iter_documents
from textbooks.data.manifest import Stage, read_manifest
from textbooks.data.records import batched
from textbooks.io import atomic_path, config_hash, write_json_atomic
from textbooks.tokenizer import eot_token, fingerprint, load_tokenizer


@dataclass
class PackConfig:
    inputs: list[str]  # source directories, JSONL or Parquet files/directories, earlier stages' outputs
    out_dir: str
    tokenizer: str = "p50k_base"  # tiktoken name or a trained .tiktoken path
    pattern: str = "**/*.py"  # files to read inside source directories
    text_field: str = "text"
    id_field: str = "id"
    max_file_bytes: int | None = 1_000_000
    docs_per_shard: int = 50_000
    batch_docs: int = 1024  # documents per encode_ordinary_batch call
    num_threads: int = 0  # 0 = one per CPU
    max_bad_fraction: float = 0.01
    extra: dict = field(default_factory=dict)  # free-form provenance (e.g. the mixture name)


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


def pack(cfg: PackConfig, *, progress: bool = True) -> dict:
    """Encode ``cfg.inputs`` into token shards under ``cfg.out_dir``; returns the manifest.

    Skipped (manifest returned as is) when an identical pack already exists.
    """
    enc = load_tokenizer(cfg.tokenizer)
    eot = eot_token(enc)
    dtype = token_dtype(enc.n_vocab)
    tok_info = {
        "name": enc.name,
        "path": cfg.tokenizer,
        "fingerprint": fingerprint(enc),
        "n_vocab": enc.n_vocab,
    }
    stage_cfg = {k: v for k, v in asdict(cfg).items() if k not in ("out_dir", "num_threads", "batch_docs")}
    stage_cfg["tokenizer_fingerprint"] = tok_info["fingerprint"]
    stage = Stage("pack", cfg.out_dir, stage_cfg, cfg.inputs, cfg.pattern)
    if stage.is_current():
        return read_manifest(cfg.out_dir)  # type: ignore[return-value]
    stage.prepare(clear=())  # finished shards of a killed run are kept and reused
    key = config_hash(stage.key)
    out = Path(cfg.out_dir)
    threads = cfg.num_threads or os.cpu_count() or 1
    stats = ReadStats()
    docs = iter_documents(
        cfg.inputs,
        pattern=cfg.pattern,
        text_field=cfg.text_field,
        id_field=cfg.id_field,
        max_bytes=cfg.max_file_bytes,
        stats=stats,
    )
    shards: list[dict] = []
    bar = tqdm(desc=f"pack {out.name}", unit="doc", disable=not progress)
    read_ahead = itertools.chain.from_iterable(prefetch(batched(docs, 256)))
    with ThreadPoolExecutor(threads, thread_name_prefix="encode") as pool:
        encode = functools.partial(pool.map, ordinary_encoder(enc))
        for k, chunk in enumerate(batched(read_ahead, cfg.docs_per_shard)):
            name = f"shard-{k:05d}"
            sidecar = out / f"{name}.json"
            done = json.loads(sidecar.read_text()) if sidecar.is_file() else None
            if done and done.get("stage_key") == key and (out / f"{name}.bin").is_file():
                shards.append(done)  # finished by an earlier (killed) run
                bar.update(len(chunk))
                continue
            meta = _write_shard(out / f"{name}.bin", chunk, encode, eot, dtype, cfg.batch_docs, bar)
            meta.update(
                {
                    "dtype": dtype.name,
                    "tokenizer": tok_info,
                    "eot_token": eot,
                    "stage_key": key,
                    "first_document": chunk[0].id,
                    "last_document": chunk[-1].id,
                }
            )
            write_json_atomic(sidecar, meta)
            shards.append(meta)
    bar.close()
    stats.check(cfg.max_bad_fraction, f"pack {cfg.inputs}")
    # shards beyond the current count belong to an older, larger input: remove them
    for stale in out.glob("shard-*.bin"):
        if int(stale.stem.split("-")[1]) >= len(shards):
            stale.unlink()
            stale.with_suffix(".json").unlink(missing_ok=True)
    outputs = [f"shard-{k:05d}.{ext}" for k in range(len(shards)) for ext in ("bin", "json")]
    return stage.finish(
        outputs,
        dtype=dtype.name,
        tokenizer=tok_info,
        eot_token=eot,
        documents=sum(s["documents"] for s in shards),
        tokens=sum(s["tokens"] for s in shards),
        shards=[
            {"path": f"shard-{k:05d}.bin", "tokens": s["tokens"], "documents": s["documents"]}
            for k, s in enumerate(shards)
        ],
        read=stats.to_dict(),
        extra=cfg.extra,
    )


def _write_shard(
    path: Path,
    docs: list[Document],
    encode: Callable[[Iterable[str]], Iterator[np.ndarray]],
    eot: int,
    dtype: np.dtype,
    batch: int,
    bar,
) -> dict:
    n_tokens = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for i in range(0, len(docs), batch):
            part = docs[i : i + batch]
            ids = list(encode([d.text for d in part]))
            ends = np.cumsum([len(x) + 1 for x in ids])
            arr = np.empty(int(ends[-1]), dtype=dtype)
            for x, end in zip(ids, ends, strict=True):
                arr[end - 1 - len(x) : end - 1] = x
            arr[ends - 1] = eot
            arr.tofile(f)
            n_tokens += len(arr)
            bar.update(len(part))
    return {"documents": len(docs), "tokens": n_tokens, "bytes": path.stat().st_size}


def pack_texts(texts: Iterable[str], out_dir: str | os.PathLike, tokenizer: str, **kwargs) -> dict:
    """Pack an in-memory list of texts (via a temporary JSONL file next to ``out_dir``)."""
    out_dir = Path(out_dir)
    src = out_dir.with_name(out_dir.name + ".input.jsonl")
    src.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(src) as tmp, open(tmp, "w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": str(i), "text": t}) + "\n")
    return pack(PackConfig(inputs=[str(src)], out_dir=str(out_dir), tokenizer=tokenizer, **kwargs))


def run_stage(cfg) -> dict:
    """``textbooks-data stage=pack``: pack a named component, or ``stage.inputs`` into ``stage.out_dir``."""
    from omegaconf import OmegaConf

    from textbooks.errors import ConfigError

    s = OmegaConf.to_container(cfg.stage, resolve=True)
    s.pop("name")
    component, components = s.pop("component"), s.pop("components")
    tau = s.pop("tau")
    if component is not None:
        if component not in components:
            raise ConfigError(f"stage.component={component!r}: choose one of {sorted(components)}")
        s["inputs"] = s["inputs"] or components[component]
        name = f"{component}-tau{tau}" if component == "exercises" else component
        s["out_dir"] = s["out_dir"] or str(Path(cfg.paths.data) / "tokens" / cfg.tokenizer.tag / name)
        s["extra"] = {"component": component} | ({"tau": tau} if component == "exercises" else {})
    if not s["inputs"] or not s["out_dir"]:
        raise ConfigError(
            "stage=pack needs stage.component=<name> or both stage.inputs=[...] and stage.out_dir=..."
        )
    if isinstance(s["inputs"], str):
        s["inputs"] = [s["inputs"]]
    return pack(PackConfig(**s), progress=cfg.get("progress", True))
