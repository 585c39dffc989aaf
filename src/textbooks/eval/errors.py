"""What stops an evaluation: ``EvalError``, and the refusal to mix two evaluations with other settings in one
output directory (``mismatch``: a rerun with equal settings is skipped or resumed, one with other settings is
refused unless ``force=true``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textbooks.errors import TextbooksError


class EvalError(TextbooksError):
    """An evaluation cannot run as configured (conflicting modes, settings that differ on rerun)."""


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def mismatch(what: Path, old: dict[str, Any], new: dict[str, Any]) -> EvalError:
    diff = ", ".join(_differences(old, new)[:8])
    return EvalError(
        f"{what} holds an evaluation with other settings (differs in: {diff}). Pass force=true to replace "
        "it, or tag=<name> (or out_dir=<dir>) to keep both"
    )
