"""Where the Hydra configs live, the OmegaConf resolvers they use, and how the apps read them.

A value of the wrong type in any config key stops an app with one line, ``error: <key>=<value>: expected
<type>``, exit status 2, before it does any work. Three checks make that hold without a check per key:

* ``dataclass_from`` checks every value against the dataclass field types (stage configs, LLM, eval);
* an app whose config has a structured schema (dataclasses in Hydra's ConfigStore: ``textbooks-train``)
  gets its values checked by OmegaConf while Hydra composes it; the refusal is turned into the same line,
  with the field's type;
* ``textbooks.cli.hydra_app`` checks each ``key=value`` of the command line against the type of the key's default in
  the configs themselves (an int default wants an int, a bool ``true``/``false``, a list a list), and
  against the types an app declares for keys whose default is null;
* errors Hydra and OmegaConf raise while composing or resolving the config (a resolver such as
  ``${count:...}`` refusing a value, an unknown key, a bad interpolation) become one line naming the key,
  instead of Hydra's formatted traceback.

The last two live in ``config_checks``, which ``cli.hydra_app`` runs for every console script.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from textbooks.errors import ConfigError, ConfigValueError, show_value
from textbooks.io import stdlib_dir

# conf/ sits at the repository root (src/textbooks/config.py -> ../../conf); an installed copy without it
# can point Hydra elsewhere with --config-dir.
T = TypeVar("T")

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")

_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
COUNT = "a count such as 4096, 2e6, 500M or 26B"


class Count(int):
    """The type of config values that are counts (``parse_count``), for declared config types."""


def parse_count(value: int | float | str) -> int:
    """``26B`` -> 26_000_000_000, ``1.5M`` -> 1_500_000, ``2e6`` -> 2_000_000, ``4096`` -> 4096.

    Anything else raises ``ConfigValueError`` (a ``ValueError``) carrying the value, so an app can name
    the key that held it."""
    if isinstance(value, bool):
        raise ConfigValueError(None, value, COUNT)
    if isinstance(value, (int, float)):
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMBGT]?)\s*", str(value), flags=re.I)
    if not m:
        raise ConfigValueError(None, value, COUNT)
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


def describe(tp: Any) -> str:
    """What a type hint accepts, in words: ``int | None`` -> ``an integer or null``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(describe(a) for a in typing.get_args(tp)))
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple):
        args = typing.get_args(tp)
        return f"a list of {_plural(describe(args[0]))}" if args and args[0] is not Any else "a list"
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return "a mapping"
    if origin is typing.Literal:
        return "one of " + ", ".join(show_value(a) for a in typing.get_args(tp))
    names = {
        type(None): "null",
        bool: "true or false",
        Count: COUNT,
        int: "an integer",
        float: "a number",
        str: "a string",
    }
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _plural(what: str) -> str:
    return {"an integer": "integers", "a number": "numbers", "a string": "strings"}.get(what, what)


def coerce(value: Any, tp: Any, key: str | None, where: str | None = None) -> Any:
    """``value`` as a field of type hint ``tp`` wants it, or ``ConfigValueError`` naming ``key``.

    Lenient where the command line is ambiguous: an integral number is an int (``1e6``), an int is a
    float, a number is a string (``tag=2024``), and a single item stands for a list of it (callers
    accept ``inputs=dir`` for ``inputs=[dir]``); never a string for a number or a bool.
    """

    def fail() -> ConfigValueError:
        return ConfigValueError(key, value, describe(tp), where)

    if tp is Any or isinstance(tp, (TypeVar, str)):
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arm in args:
            if arm is type(None):
                continue
            try:
                return coerce(value, arm, key, where)
            except ConfigValueError:
                pass
        raise fail()
    if value is None:
        if tp is type(None):
            return None
        raise fail()
    if origin is typing.Literal:
        if value in args:
            return value
        raise fail()
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if tp is Count:
        try:
            parse_count(value)
        except ConfigValueError:
            raise fail() from None
        return value
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise fail()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise fail()
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise fail()
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple):
        item = args[0] if args else Any
        if isinstance(value, (list, tuple)):
            items = [coerce(v, item, f"{key}[{i}]" if key else None, where) for i, v in enumerate(value)]
            return tuple(items) if origin is tuple or tp is tuple else items
        if not isinstance(value, Mapping):
            try:
                coerce(value, item, key, where)  # a single item
            except ConfigValueError:
                raise fail() from None
            return value
        raise fail()
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if isinstance(value, Mapping):
            vt = args[1] if len(args) == 2 else Any
            return {k: coerce(v, vt, f"{key}.{k}" if key else None, where) for k, v in value.items()}
        raise fail()
    if isinstance(tp, type) and dataclasses.is_dataclass(tp) and isinstance(value, (tp, Mapping)):
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise fail()
    return value


def dataclass_from(cls: type[T], node: Any, where: str, drop: tuple[str, ...] = ("name",)) -> T:
    """The dataclass ``cls`` from a config node (a stage's ``name`` key is dropped unless ``cls`` has it).

    Unknown or missing keys are one ``ConfigError`` naming ``where`` and the valid keys; a value of the
    wrong type is one ``ConfigValueError`` naming its key (``stage.tau``, from the node's place in the
    config when it has one), the value and the field's type (``coerce``)."""
    prefix = node._get_full_key(None) if isinstance(node, DictConfig) else ""
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
    hints = typing.get_type_hints(cls)
    for k, v in d.items():
        d[k] = coerce(v, hints.get(k, Any), f"{prefix}.{k}" if prefix else k, where)
    return cls(**d)
