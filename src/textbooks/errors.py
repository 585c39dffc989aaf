"""Errors a user can fix, and the wrapper that prints them as one line instead of a traceback."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class TextbooksError(RuntimeError):
    """Bad input (a config, a file, an endpoint); the message names the thing and the fix."""


class ConfigError(TextbooksError, ValueError):
    """A config value is invalid or inconsistent with another."""


class DataError(TextbooksError):
    """Input data cannot be used; the message names the file and the fix."""


class ConfigValueError(ConfigError):
    """A config value of the wrong type: ``<key>=<value>: expected <what>`` (the key once it is known)."""

    def __init__(self, key: str | None, value: Any, expected: str, where: str | None = None) -> None:
        self.key, self.value, self.expected, self.where = key, value, expected, where
        shown = show_value(value)
        at = f"{key}={shown}" if key else repr(value) if isinstance(value, str) else shown
        super().__init__(f"{at}: expected {expected}" + (f" ({where})" if where else ""))

    def with_key(self, key: str | None) -> ConfigValueError:
        return ConfigValueError(key, self.value, self.expected, self.where)


def show_value(value: Any) -> str:
    """A config value as it is written on the command line (``lots``, ``1.5``, ``[1, 2]``, ``null``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(show_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{show_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def cli_errors(fn: F) -> F:
    """Run ``fn``; a ``TextbooksError`` becomes ``error: <message>`` on stderr and exit status 2.

    Set ``TEXTBOOKS_TRACEBACK=1`` to see the full traceback instead.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TextbooksError as e:
            if os.environ.get("TEXTBOOKS_TRACEBACK"):
                raise
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
