"""Where the Hydra configs live, and the OmegaConf resolvers they use."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf

from textbooks.io import stdlib_dir

# conf/ sits at the repository root (src/textbooks/config.py -> ../../conf); an installed copy without it
# can point Hydra elsewhere with --config-dir.
T = TypeVar("T")

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")

_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


def parse_count(value: int | float | str) -> int:
    """``26B`` -> 26_000_000_000, ``1.5M`` -> 1_500_000, ``2e6`` -> 2_000_000, ``4096`` -> 4096."""
    if isinstance(value, bool):
        raise ValueError(f"not a count: {value!r}")
    if isinstance(value, (int, float)):
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMBGT]?)\s*", str(value), flags=re.I)
    if not m:
        raise ValueError(f"not a count: {value!r} (use e.g. 4096, 2e6, 500M, 26B)")
    return int(float(m.group(1)) * _SUFFIX[m.group(2).upper()])


def format_count(value: int | float | str) -> str:
    """The inverse of ``parse_count`` for display and run names: 26_000_000_000 -> ``26B``."""
    n = parse_count(value)
    for suffix, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            q = n / scale
            return f"{q:.3g}{suffix}" if not math.isclose(q, round(q)) else f"{round(q)}{suffix}"
    return str(n)


def register_resolvers() -> None:
    """``${count:26B}`` -> int, ``${human:...}`` -> short string, ``${stdlib:}`` -> the standard library dir."""
    if not OmegaConf.has_resolver("count"):
        OmegaConf.register_new_resolver("count", parse_count)
    if not OmegaConf.has_resolver("human"):
        OmegaConf.register_new_resolver("human", format_count)
    if not OmegaConf.has_resolver("stdlib"):
        OmegaConf.register_new_resolver("stdlib", lambda: str(stdlib_dir()))


register_resolvers()


def to_plain(node: Any) -> dict[str, Any]:
    """A resolved plain dict from an OmegaConf node or a mapping."""
    if isinstance(node, Mapping) and not type(node).__module__.startswith("omegaconf"):
        return dict(node)
    return dict(OmegaConf.to_container(node, resolve=True))  # type: ignore[arg-type]


def dataclass_from(cls: type[T], node: Any, where: str, drop: tuple[str, ...] = ("name",)) -> T:
    """The dataclass ``cls`` from a config node (a stage's ``name`` key is dropped unless ``cls`` has it);
    unknown or missing keys are one ``ConfigError`` naming ``where`` and the valid keys."""
    from textbooks.errors import ConfigError

    d = to_plain(node)
    known = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    for k in drop:
        if k not in known:
            d.pop(k, None)
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; valid keys are {sorted(known)}")
    missing = sorted(
        f.name
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.init
        and f.name not in d
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise ConfigError(f"{where}: missing keys {missing}")
    return cls(**d)
