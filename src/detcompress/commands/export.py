"""`detcompress export`: export a checkpoint to ONNX and OpenVINO IR."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from detcompress.commands._common import user_errors
from detcompress.errors import NotAvailableError


@user_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint to export.")],
) -> None:
    """Export to ONNX / OpenVINO IR (not available yet)."""
    raise NotAvailableError("'detcompress export' is not available yet in this version")
