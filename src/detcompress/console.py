"""What a command prints while it works: one logger, `detcompress`, and how much of mmengine's
log reaches the terminal. Results (tables, summaries) are the commands' own output, not logs.

Verbosity (`detcompress -q|-v COMMAND`): quiet shows warnings and results only; the default
adds detcompress's plan lines, training progress (one line per logging interval) and
validation results; verbose passes everything mmengine, NNCF and Python warn about, as they
print it. mmengine's full log always goes to the work dir's log file.

Imports nothing heavy: the CLI configures this before it knows which command runs.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import warnings
from collections.abc import Iterator

QUIET, DEFAULT, VERBOSE = -1, 0, 1

log = logging.getLogger("detcompress")
_verbosity = DEFAULT
_mmengine_output_active = False

# mmengine log lines that are progress or results: "Iter(train) [ 4/20] ... loss: ...",
# "Epoch(train) [1][ 4/10] ...", and the line after a validation with its metrics (the
# per-batch validation lines carry an "eta:" and are left to the log file).
_PROGRESS = re.compile(r"^(Iter|Epoch)\((train|val|test)\)")
# "[ 40/900]" (iterations of the run) or "[1][ 4/10]" (iterations of epoch 1): the last pair.
_POSITION = re.compile(r"\[\s*(\d+)/(\d+)\]")
# Training progress lines shown per run (iteration-based) or per epoch (epoch-based) at most.
PROGRESS_LINES = 20

# mmengine warnings that say nothing to our users: deprecations inside mmengine and mmdet; a
# note about saving the best checkpoint, which detcompress does not configure; and the optimizer
# skipping NNCF's quantizer settings (bit width, signedness: not trained) and quantizers shared
# by two hooks, one line per quantizer.
_HARMLESS_MMENGINE = re.compile(
    r'"FileClient" will be deprecated|"HardDiskBackend" is the alias'
    r"|Since `metrics` is an empty dict"
    r"|^__nncf_hooks\..* is (skipped since its requires_grad=False|duplicate\. It is skipped)"
)

# Python warnings raised inside mmdet and torch on every run, which users cannot act on:
# mmdet 3.3 calls the deprecated torch.cuda.amp.autocast and torch.meshgrid without indexing.
_HARMLESS_PYTHON = (
    (FutureWarning, r"`torch\.cuda\.amp\.autocast\(args\.\.\.\)` is deprecated"),
    (UserWarning, r"torch\.meshgrid: in an upcoming release"),
)


class _CurrentStdout(logging.Handler):
    """Writes to whatever sys.stdout is at the time (a test runner swaps it per command)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(self.format(record) + "\n")
            sys.stdout.flush()
        except Exception:
            self.handleError(record)


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        warning = "warning: " if record.levelno >= logging.WARNING else ""
        return f"[detcompress] {warning}{record.getMessage()}"


def configure(verbosity: int = DEFAULT) -> None:
    """Set how much goes to the terminal for the rest of this process (idempotent)."""
    global _verbosity
    _verbosity = verbosity
    if not any(isinstance(handler, _CurrentStdout) for handler in log.handlers):
        handler = _CurrentStdout()
        handler.setFormatter(_Format())
        log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.WARNING if verbosity <= QUIET else logging.INFO)
    if verbosity < VERBOSE:
        for category, message in _HARMLESS_PYTHON:
            warnings.filterwarnings("ignore", message=message, category=category)


class MMEngineTerminalFilter(logging.Filter):
    """Decides which of mmengine's log records reach the terminal (the log file gets all):
    warnings and errors; detcompress's own lines; training progress, thinned to about
    PROGRESS_LINES lines; the line after each validation, with its metrics."""

    def __init__(self) -> None:
        super().__init__()
        self._shown_part = -1

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return not _HARMLESS_MMENGINE.search(message)
        if _verbosity <= QUIET:
            return False
        if message.startswith("[detcompress]"):
            return True
        progress = _PROGRESS.match(message)
        if progress is None:
            return False
        if progress.group(2) != "train":
            return "eta:" not in message  # per-batch validation lines carry an eta
        return self._due(message)

    def _due(self, message: str) -> bool:
        positions = _POSITION.findall(message)
        if not positions:
            return True
        done, total = (int(number) for number in positions[-1])
        part = done * PROGRESS_LINES // max(total, 1)
        if part < self._shown_part:  # a new epoch (or run) started over
            self._shown_part = -1
        if part == self._shown_part and done != total:
            return False
        self._shown_part = part
        return True


@contextlib.contextmanager
def mmengine_output() -> Iterator[None]:
    """While mmengine runs, its terminal output as the verbosity says (verbose: untouched).
    Nested use is the outer one's."""
    global _mmengine_output_active
    if _verbosity >= VERBOSE or _mmengine_output_active:
        yield
        return
    from detcompress import patches

    _mmengine_output_active = True
    try:
        with (
            patches.mmengine_terminal_filtered(MMEngineTerminalFilter()),
            patches.coco_prints_to_log(),
        ):
            yield
    finally:
        _mmengine_output_active = False


# Library callers (tests, benchmarks, notebooks) see detcompress's lines as the CLI's default
# does, as they did when these were prints; the CLI sets the verbosity it was given.
configure(DEFAULT)
