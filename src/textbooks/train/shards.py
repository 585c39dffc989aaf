"""Read packed token shards (see ``textbooks.data.stages.pack``) as one contiguous token stream."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from textbooks.data.engine.manifest import read_manifest
from textbooks.errors import DataError


class TokenShards:
    """The shards of one packed directory, memory-mapped read-only and addressed as one stream."""

    def __init__(self, path: str | os.PathLike, *, build_hint: str | None = None) -> None:
        self.path = Path(path)
        manifest = read_manifest(self.path)
        if manifest is None or manifest.get("stage") != "pack":
            how = (
                f"build them with `{build_hint}`"
                if build_hint
                else "build them with `textbooks-data stage=pack`"
            )
            raise DataError(f"no token shards at {self.path}: {how}")
        self.manifest = manifest
        self.dtype = np.dtype(manifest["dtype"])
        self.tokenizer = manifest["tokenizer"]
        self.eot_token = int(manifest["eot_token"])
        self.arrays: list[np.ndarray] = []
        for s in manifest["shards"]:
            f = self.path / s["path"]
            if not f.is_file() or f.stat().st_size != s["tokens"] * self.dtype.itemsize:
                raise DataError(f"token shard {f} is missing or truncated: rebuild {self.path}")
            if s["tokens"]:
                self.arrays.append(np.memmap(f, dtype=self.dtype, mode="r"))
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def n_documents(self) -> int:
        return int(self.manifest["documents"])

    def check_tokenizer(self, fingerprint: str, name: str) -> None:
        """Refuse shards written with another tokenizer than the one training uses."""
        if self.tokenizer["fingerprint"] != fingerprint:
            raise DataError(
                f"token shards at {self.path} were written with tokenizer {self.tokenizer['name']!r} "
                f"({self.tokenizer['fingerprint']}), but this run uses {name!r} ({fingerprint}): "
                "repack the data with this tokenizer or choose the matching tokenizer config"
            )

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start + length)`` of the stream, crossing shard boundaries as needed."""
        if start < 0 or start + length > self.n_tokens:
            raise IndexError(f"tokens [{start}, {start + length}) outside 0..{self.n_tokens}")
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        local = start - int(self.offsets[i])
        a = self.arrays[i]
        if local + length <= len(a):
            return np.asarray(a[local : local + length])
        parts, need = [], length
        while need:
            a = self.arrays[i]
            take = min(need, len(a) - local)
            parts.append(np.asarray(a[local : local + take]))
            need -= take
            i, local = i + 1, 0
        return np.concatenate(parts)
