"""`detcompress eval`: evaluate a checkpoint, an OpenVINO IR or an ONNX model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from detcompress.commands._common import user_errors
from detcompress.errors import NotAvailableError


@user_errors
def evaluate(
    target: Annotated[Path, typer.Argument(help=".pth checkpoint, .xml IR or .onnx model.")],
) -> None:
    """Evaluate a model with the config's metric (not available yet)."""
    raise NotAvailableError("'detcompress eval' is not available yet in this version")
