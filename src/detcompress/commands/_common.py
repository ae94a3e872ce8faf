"""What every command shares: turning user mistakes into one red line and an exit code."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console

from detcompress.errors import DetcompressError

# mmdet style `--cfg-options a=1 b=2`: the tokens after the first value arrive as extra args.
CFG_OPTIONS_CONTEXT: dict[str, Any] = {"allow_extra_args": True, "ignore_unknown_options": False}

P = ParamSpec("P")
R = TypeVar("R")

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def user_errors(func: Callable[P, R]) -> Callable[P, R]:
    """A DetcompressError becomes one line on stderr and its exit code; anything else keeps
    its traceback (that is a bug for us to see)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except DetcompressError as exc:
            err_console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def print_result(text: str, json_path: Path | None, data: dict[str, Any]) -> None:
    """A command's result: its table or summary on stdout, its numbers as JSON if asked."""
    typer.echo(text)
    write_json(json_path, data)


def write_json(path: Path | None, data: dict[str, Any]) -> None:
    """Write `data` as JSON to `path` (atomically), or do nothing without a path."""
    if path is None:
        return
    from detcompress.files import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def check_output_file(path: Path | None, option: str) -> None:
    """Refuse an output file that cannot be written, before any work starts."""
    from detcompress.files import check_output_file as check

    check(path, option)


def is_quiet(quiet: bool) -> bool:
    return quiet or not sys.stderr.isatty()


def all_cfg_options(cfg_options: list[str] | None, extra: list[str]) -> list[str]:
    """--cfg-options' first value plus the extra tokens after it, which must be key=value."""
    for token in extra:
        if cfg_options is None or "=" not in token:
            raise DetcompressError(
                f"unexpected argument '{token}'; overrides go after --cfg-options as key=value"
            )
    return list(cfg_options or []) + list(extra)
