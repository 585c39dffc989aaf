"""The checks behind ``cli.hydra_app``: values set on the command line against the configs' own types,
and Hydra's and OmegaConf's errors as one line naming the key.

* ``check_overrides``: each ``key=value`` of a Hydra job is checked against the type of the key's default
  (the same configs composed without the command line's values, so the configs are their own schema), and
  the keys an app declares (those whose default is null) against their declared types;
* ``config_error_line``: an error raised while Hydra composes or resolves the config (a resolver refusing a
  value, an unknown key, a bad interpolation, a structured config refusing a value of the wrong type)
  becomes ``key=value: expected <type>`` or one line naming the key, instead of a formatted traceback.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from collections.abc import Iterator, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from textbooks.config import coerce, describe
from textbooks.errors import ConfigError, ConfigValueError, TextbooksError


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
