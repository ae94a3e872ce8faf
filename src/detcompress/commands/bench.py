"""`detcompress bench`: latency and throughput of models side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from detcompress.commands._common import user_errors
from detcompress.errors import NotAvailableError


@user_errors
def bench(
    models: Annotated[list[Path], typer.Argument(help=".xml, .onnx or .pth models.")],
) -> None:
    """Measure latency and throughput (not available yet)."""
    raise NotAvailableError("'detcompress bench' is not available yet in this version")
