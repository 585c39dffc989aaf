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
