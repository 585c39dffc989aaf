"""Where the Hydra configs live, and the OmegaConf resolvers they use."""

from __future__ import annotations

import math
import re
from pathlib import Path

from omegaconf import OmegaConf

# conf/ sits at the repository root (src/textbooks/config.py -> ../../conf); an installed copy without it
# can point Hydra elsewhere with --config-dir.
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


def _stdlib() -> Path:
    from textbooks.data.documents import stdlib_dir

    return stdlib_dir()


def register_resolvers() -> None:
    """``${count:26B}`` -> int, ``${human:...}`` -> short string, ``${stdlib:}`` -> the standard library dir."""
    if not OmegaConf.has_resolver("count"):
        OmegaConf.register_new_resolver("count", parse_count)
    if not OmegaConf.has_resolver("human"):
        OmegaConf.register_new_resolver("human", format_count)
    if not OmegaConf.has_resolver("stdlib"):
        OmegaConf.register_new_resolver("stdlib", lambda: str(_stdlib()))


register_resolvers()
