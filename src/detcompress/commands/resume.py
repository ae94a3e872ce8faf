"""`detcompress resume`: continue an interrupted run from its checkpoint alone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from detcompress.commands._common import check_output_file, print_result, user_errors
from detcompress.commands.options import Device, JsonOutput, Launcher, TrustCheckpoint


@user_errors
def resume(
    target: Annotated[
        Path, typer.Argument(help="Checkpoint, or a work dir (its latest checkpoint).")
    ],
    max_iters: Annotated[
        int | None, typer.Option(min=1, help="Train until iteration N (default: as before).")
    ] = None,
    work_dir: Annotated[
        Path | None, typer.Option(help="Write here instead of the run's own work dir.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Check this config's nncf_config against the checkpoint's.")
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="Check this preset against the checkpoint's nncf_config.")
    ] = None,
    trust_checkpoint: TrustCheckpoint = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Resume despite a differing nncf_config or later ones."),
    ] = False,
    device: Device = "auto",
    launcher: Launcher = "none",
    json_path: JsonOutput = None,
) -> None:
    """Resume compression or fine-tuning where the checkpoint left off: same iteration,
    optimizer state and learning rate; config, data and compression come from the checkpoint."""
    from detcompress import api

    check_output_file(json_path, "--json")
    result = api.resume(
        target,
        max_iters=max_iters,
        work_dir=work_dir,
        config=config,
        preset=preset,
        trust_checkpoint=trust_checkpoint,
        force=force,
        device=device,
        launcher=launcher,
    )
    if result.is_main:  # one report per run, not one per process
        print_result(result.summary(), json_path, result.to_json())
