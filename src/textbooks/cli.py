"""The console scripts as Hydra apps: ``hydra_app`` is ``@hydra.main`` plus the config checks and one-line errors.

Every ``textbooks-*`` command is declared with it, so a bad value on the command line, an error Hydra raises
while composing, or a ``TextbooksError`` ends the command with ``error: <one line>`` and exit status 2.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from omegaconf import DictConfig

from textbooks.config import CONF_DIR
from textbooks.config_checks import check_overrides, config_error_line


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
