"""Stage manifests and input fingerprints: what tells a stage whether it is current.

A stage's ``manifest.json`` (written last by ``textbooks.data.engine.stage``) records its config, a fingerprint of
its inputs, its outputs with their sizes, counts and timings. A rerun whose config and inputs match an existing
manifest (and whose outputs are all present) is skipped; anything else reruns.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from textbooks.io import (
    scan_source_files,
    sha256_file,
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
    for f in scan_source_files(p, pattern):
        h.update(f"{f.rel}\0{f.size}\0{f.mtime_ns}\n".encode())
        n += 1
        size += f.size
    return {"path": str(p), "files": n, "bytes": size, "listing_sha256": h.hexdigest()}


def read_manifest(directory: str | os.PathLike) -> dict[str, Any] | None:
    p = Path(directory) / MANIFEST
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None
