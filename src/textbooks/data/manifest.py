"""Stage manifests and atomic writes: what makes every stage skippable, killable and rerunnable.

A stage writes its outputs under one directory, each file through a temporary name that is renamed into
place when complete, then ``manifest.json`` last. The manifest records the stage's config, a fingerprint
of its inputs, the outputs with their sizes, counts and timings. A rerun whose config and inputs match an
existing manifest (and whose outputs are all present) is skipped; anything else reruns. A killed stage
leaves no manifest (or an old one that no longer matches), so it is simply redone.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from textbooks.io import (
    config_hash,
    list_source_files,
    remove_stale_temporaries,
    sha256_file,
    write_json_atomic,
)

MANIFEST = "manifest.json"


def fingerprint_input(path: str | os.PathLike, pattern: str = "**/*") -> dict[str, Any]:
    """Identify an input cheaply but reliably.

    A stage output (a directory with ``manifest.json``) is identified by its manifest's hash; a file by
    its content hash; a raw directory by the listing of (relative path, size, mtime) of the files that
    ``pattern`` selects (what a reader of it sees), which changes when the corpus does, without reading
    terabytes.
    """
    p = Path(path)
    if not p.exists():
        return {"path": str(p), "missing": True}
    if p.is_dir() and (p / MANIFEST).is_file():
        return {"path": str(p), "manifest_sha256": sha256_file(p / MANIFEST)}
    if p.is_file():
        return {"path": str(p), "size": p.stat().st_size, "sha256": sha256_file(p)}
    h = hashlib.sha256()
    n = size = 0
    for f in list_source_files(p, pattern):
        st = f.stat()
        h.update(f"{f.relative_to(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        n += 1
        size += st.st_size
    return {"path": str(p), "files": n, "bytes": size, "listing_sha256": h.hexdigest()}


def read_manifest(directory: str | os.PathLike) -> dict[str, Any] | None:
    p = Path(directory) / MANIFEST
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


class Stage:
    """One run of a stage into ``out_dir``: decides whether it is current, and writes its manifest."""

    def __init__(
        self,
        name: str,
        out_dir: str | os.PathLike,
        config: dict[str, Any],
        inputs: list[Any],
        pattern: str = "**/*",
    ) -> None:
        self.name = name
        self.out_dir = Path(out_dir)
        self.config = config
        self.inputs = [fingerprint_input(i, pattern) for i in inputs]
        self.started = dt.datetime.now(dt.timezone.utc)

    @property
    def key(self) -> dict[str, Any]:
        return {"stage": self.name, "config_hash": config_hash(self.config), "inputs": self.inputs}

    def is_current(self) -> bool:
        """True when a manifest with this stage, config and inputs exists and all its outputs are present."""
        m = read_manifest(self.out_dir)
        if m is None or {k: m.get(k) for k in self.key} != self.key:
            return False
        return all(
            (self.out_dir / o["path"]).is_file() and (self.out_dir / o["path"]).stat().st_size == o["bytes"]
            for o in m.get("outputs", [])
        )

    def prepare(self, clear: tuple[str, ...] = ("part-*.parquet",)) -> None:
        """Create the output directory, clear leftovers of killed runs, invalidate an old manifest and
        delete outputs of an earlier run matching ``clear`` (so a rerun that writes fewer parts leaves no
        stale ones; pass ``()`` to keep them, e.g. for a stage that resumes part by part)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.out_dir)
        m = self.out_dir / MANIFEST
        if m.exists() and not self.is_current():
            m.unlink()
        for pattern in clear:
            for f in self.out_dir.glob(pattern):
                f.unlink()

    def finish(self, outputs: list[str | os.PathLike], **extra: Any) -> dict[str, Any]:
        """Write ``manifest.json`` listing ``outputs`` (paths relative to ``out_dir`` or absolute)."""
        ended = dt.datetime.now(dt.timezone.utc)
        files = []
        for o in outputs:
            p = Path(o)
            p = p if p.is_absolute() else self.out_dir / p
            files.append({"path": str(p.relative_to(self.out_dir)), "bytes": p.stat().st_size})
        manifest = {
            **self.key,
            "config": self.config,
            "outputs": files,
            **extra,
            "started": self.started.isoformat(),
            "seconds": round((ended - self.started).total_seconds(), 3),
        }
        write_json_atomic(self.out_dir / MANIFEST, manifest)
        return manifest
