"""What a stage reads: its inputs resolved and cut into shards that tasks share out by rank.

An input is a directory of source files, a JSONL file (``.jsonl``/``.json``, optionally ``.gz``), a Parquet
file, a directory of JSONL or Parquet files, an earlier stage's output (a directory with ``manifest.json``),
an alias (``stdlib``, ``site-packages``) or a Hugging Face hub dataset (``{hf: repo, allow_patterns: [...]}``,
fetched as Parquet when the hub is reachable).

``plan_shards`` turns the inputs into a deterministic list of ``Shard``\\ s: each JSONL or Parquet file is a
shard, a stage output contributes the parts its manifest lists (in order), and a directory of source files is
cut into runs of sorted files of about ``shard_bytes``. A stage's task ``rank`` of ``world_size`` reads the
shards ``textbooks.data.engine.stage.balanced`` gives it (tasks of about equal bytes) and names what it writes after
the shard index, so the output is the same for any number of tasks.
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from textbooks.data.engine.manifest import MANIFEST, read_manifest
from textbooks.errors import ConfigError, DataError
from textbooks.io import scan_source_files, stdlib_dir

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)
WORK_DIR = ".stage"  # where a stage keeps its tasks' state until it publishes (textbooks.data.engine.stage)


@dataclass(frozen=True)
class Source:
    """One resolved input: a local path, how to read it, and the label provenance strings start with."""

    path: str
    kind: str  # "files" | "jsonl" | "parquet" | "stage"
    label: str


def _hf_download(spec: dict[str, Any], cache_dir: str | None) -> Path:
    """Fetch (or find cached) files of a hub dataset, e.g. ``bigcode/the-stack-dedup`` ``data/python/*``."""
    repo, allow = spec["hf"], spec.get("allow_patterns")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - huggingface_hub comes with transformers
        raise DataError("reading a hub dataset needs huggingface_hub (pip install huggingface_hub)") from e
    try:
        local = snapshot_download(
            repo_id=repo,
            repo_type="dataset",
            allow_patterns=allow,
            revision=spec.get("revision"),
            cache_dir=cache_dir,
        )
    except Exception as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        why = "HF_HUB_OFFLINE is set" if offline else "the hub is unreachable, or the dataset is gated"
        first = str(e).splitlines()[0] if str(e) else ""
        raise DataError(
            f"could not get dataset {repo!r} (files {allow}) from the Hugging Face hub: {why} "
            f"({type(e).__name__}: {first}). Fix: run on a machine with network (for gated sets such as "
            "bigcode/the-stack-dedup accept the terms and set HF_TOKEN), or download the Parquet files "
            "elsewhere and list their directory in stage.inputs"
        ) from e
    return Path(local)


def input_kind(path: Path) -> str:
    """How ``path`` is read: ``stage``, ``jsonl``, ``parquet`` or ``files`` (a directory of source files)."""
    name = path.name
    if path.is_file():
        if name.endswith(JSONL_SUFFIXES):
            return "jsonl"
        if name.endswith(PARQUET_SUFFIXES):
            return "parquet"
        return "files"
    if (path / MANIFEST).is_file() or (path / WORK_DIR).is_dir():
        return "stage"
    if any(path.glob("*.parquet")):
        return "parquet"
    if any(p.name.endswith(JSONL_SUFFIXES) for p in path.iterdir()):
        return "jsonl"
    return "files"


def resolve(
    spec: Any,
    *,
    where: str,
    cache_dir: str | None = None,
    fix: str = "run the stage that writes it first or set stage.inputs to existing paths",
) -> Source:
    """A ``Source`` for one input spec (aliases and hub datasets resolved); a missing path is a ``DataError``
    naming ``fix``."""
    if isinstance(spec, dict) or hasattr(spec, "keys"):
        spec = dict(spec)
        if "hf" not in spec:
            raise ConfigError(
                f"{where}: input {spec} is a mapping without 'hf' (a Hugging Face dataset repo)"
            )
        path, label = _hf_download(spec, cache_dir), f"hf:{spec['hf']}"
    elif str(spec) == "stdlib":
        path, label = stdlib_dir(), "stdlib"
    elif str(spec) == "site-packages":
        path, label = Path(sysconfig.get_paths()["purelib"]), "site-packages"
    else:
        path, label = Path(str(spec)), str(spec)
    if not path.exists():
        named = label if label == str(path) else f"{label} ({path})"
        raise DataError(f"{where}: input {named} does not exist; {fix}")
    return Source(str(path), input_kind(path), label)


# -- shards -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    """A unit of work: files read in order. ``index`` names the outputs written from it."""

    index: int
    input: int  # which of the stage's inputs it comes from
    kind: str  # "files" | "jsonl" | "parquet"
    label: str  # provenance prefix for hub datasets; the path otherwise
    root: str  # directory that ``files`` of kind "files" are relative to
    files: tuple[str, ...]
    bytes: int
    # bytes of the files a stage reads (``plan_shards``' ``select``), which is what its tasks are shared out
    # by; None: all of them
    read_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Shard:
        return cls(**{**d, "files": tuple(d["files"])})


def stage_parts(path: Path, where: str) -> list[Path]:
    """The document parts of a published stage output, in order (what its manifest lists)."""
    m = read_manifest(path)
    if m is None:
        raise DataError(
            f"{where}: input {path} is a stage output that is not complete (no manifest.json: it is being "
            "built, or its build was interrupted); finish that stage first (rerun its command)"
        )
    if "parts" in m:
        return [path / p for p in m["parts"]]
    return sorted(path.glob("*.parquet"))  # an output written before manifests listed their parts


def _files_of(src: Source, pattern: str) -> list[tuple[str, int, str]]:
    """The files of an input in reading order, with their sizes and paths relative to the input."""
    p = Path(src.path)
    if src.kind == "files" and p.is_dir():
        return [(f.path, f.size, f.rel) for f in scan_source_files(p, pattern)]  # one stat per file
    if src.kind == "stage":
        files = stage_parts(p, src.label)
    elif p.is_file():
        files = [p]
    else:
        suffixes = JSONL_SUFFIXES if src.kind == "jsonl" else PARQUET_SUFFIXES
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(suffixes))
    return [(str(f), f.stat().st_size, f.name) for f in files]


def plan_shards(
    sources: Sequence[Source],
    *,
    pattern: str = "**/*.py",
    shard_bytes: int = 8 << 20,
    select: Callable[[str, int], bool] | None = None,
) -> list[Shard]:
    """The inputs' shards in input order: one per JSONL/Parquet file, runs of ~``shard_bytes`` of source files.

    ``select(path, size)``, the reader's own (``read_shard``), says which source files a stage will read:
    the others stay in their shards (a stage may count them) but not in its ``read_bytes``. A directory
    listed with ``**/*`` holds binaries too (site-packages: a 434 MB ``libtorch_cpu.so``), and tasks shared
    out by all bytes were up to 1.3x the mean (one had no work at all); by the bytes read, within 0.1%."""
    shards: list[Shard] = []

    def add(i: int, kind: str, src: Source, root: Path, files: list[str], size: int, read: int) -> None:
        label = src.label if src.label.startswith("hf:") else str(root)
        shards.append(
            Shard(
                len(shards), i, kind, label, str(root), tuple(files), size, None if select is None else read
            )
        )

    for i, src in enumerate(sources):
        root = Path(src.path)
        files = _files_of(src, pattern)
        if src.kind != "files":
            kind = "parquet" if src.kind == "stage" else src.kind
            for f, n, _ in files:
                add(i, kind, src, root if root.is_dir() else root.parent, [f], n, n)
            continue
        base = root if root.is_dir() else root.parent
        run: list[str] = []
        size = read = 0
        for f, n, rel in files:
            if run and size + n > shard_bytes:
                add(i, "files", src, base, run, size, read)
                run, size, read = [], 0, 0
            run.append(f)
            size += n
            read += n if select is None or select(rel, n) else 0
        if run or not files:
            add(i, "files", src, base, run, size, read)
    return shards
