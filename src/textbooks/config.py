"""Where the Hydra configs live, the OmegaConf resolvers they use, and how the apps read them.

A value of the wrong type in any config key stops an app with one line, ``error: <key>=<value>: expected
<type>``, exit status 2, before it does any work. Three checks make that hold without a check per key:

* ``dataclass_from`` checks every value against the dataclass field types (stage configs, LLM, eval);
* an app whose config has a structured schema (dataclasses in Hydra's ConfigStore: ``textbooks-train``)
  gets its values checked by OmegaConf while Hydra composes it; the refusal is turned into the same line,
  with the field's type;
* ``hydra_app`` checks each ``key=value`` of the command line against the type of the key's default in
  the configs themselves (an int default wants an int, a bool ``true``/``false``, a list a list), and
  against the types an app declares for keys whose default is null;
* errors Hydra and OmegaConf raise while composing or resolving the config (a resolver such as
  ``${count:...}`` refusing a value, an unknown key, a bad interpolation) become one line naming the key,
  instead of Hydra's formatted traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from textbooks.errors import ConfigError, ConfigValueError, TextbooksError, show_value
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


# -- the apps ---------------------------------------------------------------------------------------------------
def _select(cfg: DictConfig, key: str, default: Any = None) -> Any:
    """The resolved value at ``key`` as plain Python (lists and dicts, not OmegaConf nodes)."""
    from omegaconf import Container
    from omegaconf.errors import OmegaConfBaseException

    try:
        value = OmegaConf.select(cfg, key, default=default)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{key}: {_omegaconf_message(e)}") from None
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, Container) else value


def _omegaconf_message(e: BaseException) -> str:
    return str(e).split("\n    full_key:")[0].strip().replace("\n", " ")


def _default_type(default: Any) -> Any:
    """The type a config default asks of a value set on the command line (None: any)."""
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    if isinstance(default, list):
        items = {_default_type(v) for v in default}
        return list[items.pop()] if len(items) == 1 and None not in items else list
    if isinstance(default, dict):
        return dict
    return None  # strings (paths, names, counts written as 2M) and nulls: the consumer checks


def check_overrides(cfg: DictConfig, declared: Mapping[str, Any] | None = None) -> None:
    """Check this Hydra job's ``key=value`` overrides against the types of the keys' defaults, and the
    ``declared`` keys (those whose default is null) against their types; ``ConfigValueError`` if not.

    The defaults are the same configs composed with the same config groups but without the values set
    on the command line, so the configs are their own schema."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    declared = dict(declared or {})
    hc = HydraConfig.get()
    choices = dict(hc.runtime.choices)
    task = OmegaConf.to_container(hc.overrides.task, resolve=False)  # values may hold ${...}
    overrides = OverridesParser.create().parse_overrides([str(o) for o in task])  # type: ignore[union-attr]
    keys = [
        o.key_or_group
        for o in overrides
        if o.key_or_group not in choices
        and not o.key_or_group.startswith("hydra")
        and not o.is_delete()
        and not o.is_add()
        and o.key_or_group not in declared
    ]
    defaults: DictConfig | None = None
    if keys:
        groups = [f"{g}={c}" for g, c in choices.items() if isinstance(c, str) and not g.startswith("hydra")]
        try:
            defaults = compose(hc.job.config_name, overrides=groups)
        except Exception:  # an unusual launcher or search path: the other checks remain
            defaults = None
    for key in keys:
        if defaults is None:
            break
        try:
            tp = _default_type(_select(defaults, key))
        except ConfigError:  # a default that resolves only with the job values
            tp = None
        if tp is not None:
            coerce(_select(cfg, key), tp, key)
    for key, tp in declared.items():
        value = _select(cfg, key, default=_ABSENT)
        if value is not _ABSENT:
            coerce(value, tp, key)


_ABSENT = object()


def _chain(ex: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = ex
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, node


def _key_holding(ex: BaseException, value: Any) -> str | None:
    """The config key whose own (not interpolated) value is ``value``, preferring one set on the command
    line, found from the config an OmegaConf error was raised in."""
    node = next(
        (getattr(e, "parent_node", None) for e in _chain(ex) if getattr(e, "parent_node", None)), None
    )
    if node is None:
        return None
    try:
        root = OmegaConf.to_container(node._get_root(), resolve=False)
    except Exception:  # a config OmegaConf cannot convert: no key to name
        return None
    found = [k for k, v in _leaves(root) if type(v) is type(value) and v == value]
    argv = sys.argv[1:]
    on_cli = [k for k in found if any(a.lstrip("+~").split("=", 1)[0] == k for a in argv)]
    return (on_cli or [k for k in found if not k.startswith("hydra.")] or found or [None])[0]


def _schema_refusal(ex: BaseException) -> ConfigValueError | None:
    """A value a structured config refused (OmegaConf's ``ValidationError`` on a dataclass field), as
    ``key=value: expected <the field's type>``."""
    from omegaconf.errors import ValidationError

    for e in _chain(ex):
        schema = getattr(e, "object_type", None)
        if isinstance(e, ValidationError) and e.full_key and dataclasses.is_dataclass(schema):
            hint = typing.get_type_hints(schema).get(str(e.key))
            if hint is not None:
                return ConfigValueError(e.full_key, e.value, describe(hint))
    return None


def config_error_line(ex: BaseException) -> str | None:
    """One line for an error Hydra or OmegaConf raised about the config (None for any other error)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    for e in _chain(ex):
        if isinstance(e, ConfigValueError):
            return str(e if e.key else e.with_key(_key_holding(ex, e.value)))
    refused = _schema_refusal(ex)
    if refused is not None:
        return str(refused)
    for e in _chain(ex):
        if isinstance(e, TextbooksError):
            return str(e)
    for e in _chain(ex):  # a structured config (a dataclass schema) refused a value of the wrong type
        schema, key = getattr(e, "object_type", None), getattr(e, "key", None)
        if (
            isinstance(e, OmegaConfBaseException)
            and dataclasses.is_dataclass(schema)
            and isinstance(key, str)
        ):
            hint = typing.get_type_hints(schema).get(key)
            if hint is not None:
                return str(ConfigValueError(getattr(e, "full_key", None) or key, e.value, describe(hint)))
    if isinstance(ex, OmegaConfBaseException):
        msg = _omegaconf_message(ex)
        key = getattr(ex, "full_key", None)
        return f"{key}: {msg}" if key else msg
    if isinstance(ex, HydraException):
        text = str(ex).split("\nConfig search path:")[0]
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and set(ln.strip()) != {"^"}]
        if isinstance(getattr(ex, "override", None), str):  # OverrideParseException: name the override
            lines.insert(0, f"{ex.override}:")
        cause = ex.__cause__
        if isinstance(cause, OmegaConfBaseException):
            lines.append(f"({str(cause).split(chr(10))[0].strip()})")
        return " ".join(lines)
    return None


@contextlib.contextmanager
def _env(name: str, value: str | None) -> Iterator[None]:
    before = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def hydra_app(
    config_name: str, types: Mapping[str, Any] | None = None
) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """``@hydra.main`` for a console script: the config ``config_name`` of ``conf/``, the checks of the
    module docstring (``types``: the types of keys whose default is null, e.g. ``{"limit": int | None}``),
    and every config error or ``TextbooksError`` printed as ``error: <one line>`` with exit status 2
    (as ``cli_errors`` does).

    Hydra prints its own errors (a multi-line traceback) unless ``HYDRA_FULL_ERROR=1``; the app sets it
    while Hydra composes the config, so the errors reach this wrapper, and restores it while the task runs.
    ``TEXTBOOKS_TRACEBACK=1`` (or ``HYDRA_FULL_ERROR=1``) shows full tracebacks instead."""
    import hydra

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        user = os.environ.get("HYDRA_FULL_ERROR")

        @functools.wraps(task)  # Hydra names the job after the task's module, as with @hydra.main on it
        def checked(cfg: DictConfig) -> Any:
            with _env("HYDRA_FULL_ERROR", user):
                try:
                    check_overrides(cfg, types)
                    return task(cfg)
                except Exception as e:
                    line = None if os.environ.get("TEXTBOOKS_TRACEBACK") else config_error_line(e)
                    if line is None:
                        raise
            print(f"error: {line}", file=sys.stderr)
            sys.exit(2)

        run = hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)(checked)

        @functools.wraps(task)
        def main() -> Any:
            if os.environ.get("TEXTBOOKS_TRACEBACK") or os.environ.get("HYDRA_FULL_ERROR") == "1":
                return run()
            with _env("HYDRA_FULL_ERROR", "1"):
                try:
                    return run()
                except Exception as e:
                    line = config_error_line(e)
                    if line is None:
                        raise
            print(f"error: {line}", file=sys.stderr)
            sys.exit(2)

        return main

    return decorate
