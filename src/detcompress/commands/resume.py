"""`detcompress resume`: continue an interrupted compression run from its checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from detcompress.commands._common import user_errors
from detcompress.errors import NotAvailableError


@user_errors
def resume(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint or work dir to resume from.")],
) -> None:
    """Resume compression from a checkpoint (not available yet)."""
    raise NotAvailableError("'detcompress resume' is not available yet in this version")
