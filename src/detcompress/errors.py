"""One error hierarchy. User mistakes raise `DetcompressError` subclasses; the CLI prints their
message as one line on stderr and exits with `exit_code`. Anything else keeps its traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DetcompressError(Exception):
    """A mistake the user can fix: the message names the file, the key and what is valid."""

    exit_code = 2


class PresetError(DetcompressError):
    """A compression preset or nncf_config that does not validate."""


class ConfigError(DetcompressError):
    """An mmdet config that cannot be loaded or lacks what detcompress needs."""


class CheckpointError(DetcompressError):
    """A checkpoint that is missing, unreadable or not loadable safely."""


class OutputExistsError(DetcompressError):
    """An output that already exists and would be overwritten without --force."""


class TrainingDivergedError(DetcompressError):
    """Training produced a non-finite loss or weights: not a usage mistake, but one the user
    can address (learning rate, clipping, starting point)."""

    exit_code = 1


class NotAvailableError(DetcompressError):
    """A command or feature that this version of detcompress does not provide yet."""

    exit_code = 1


def closest(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest candidate, or '' when nothing is close."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""
