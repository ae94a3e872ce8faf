"""`detcompress init`: write a demo workspace or a bundled preset to edit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from detcompress.commands._common import user_errors

app = typer.Typer(help="Create a demo workspace or a preset file to edit.", no_args_is_help=True)


@app.command()
@user_errors
def demo(
    directory: Annotated[Path, typer.Argument(help="Workspace folder to create.")],
    seed: Annotated[int, typer.Option(help="Seed of the synthetic dataset.")] = 0,
    force: Annotated[
        bool, typer.Option("--force", help="Refresh its own files in an existing folder.")
    ] = False,
) -> None:
    """Write a demo workspace: synthetic COCO dataset, mmdet config, presets, README."""
    from detcompress import api

    config = api.init_demo(directory, seed=seed, force=force, report=typer.echo)
    typer.echo(f"demo workspace written to {directory}")
    typer.echo(f"next: detcompress compress {config}")


@app.command()
@user_errors
def preset(
    name: Annotated[str, typer.Argument(help="Bundled preset name (e.g. int8).")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (default NAME.yaml).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a bundled preset to a file you can edit."""
    from detcompress import api

    written = api.init_preset(name, output, force=force)
    typer.echo(f"preset '{name}' written to {written}")
