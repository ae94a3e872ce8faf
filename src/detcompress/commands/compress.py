"""`detcompress compress`: fine-tune a detector, compressed as the preset/nncf_config says."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from detcompress.commands._common import (
    all_cfg_options,
    check_output_file,
    print_result,
    user_errors,
)
from detcompress.commands.options import CfgOptions, Device, JsonOutput, Launcher, TrustCheckpoint
from detcompress.errors import DetcompressError


@user_errors
def compress(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(help="mmdet config file (.py).")],
    preset: Annotated[
        str | None,
        typer.Option(metavar="NAME|FILE", help="Bundled preset (int8, ...) or a .yaml/.json file."),
    ] = None,
    load_from: Annotated[
        Path | None,
        typer.Option(help="Checkpoint to start from (default: the config's load_from)."),
    ] = None,
    work_dir: Annotated[
        Path | None, typer.Option(help="Output folder (default: work_dirs/<config name>).")
    ] = None,
    max_iters: Annotated[
        int | None, typer.Option(min=0, help="Train for N iterations (0: evaluate only).")
    ] = None,
    max_epochs: Annotated[int | None, typer.Option(min=1, help="Train for N epochs.")] = None,
    max_accuracy_drop: Annotated[
        str | None,
        typer.Option(
            metavar="POINTS|PCT%",
            help="The largest validation mAP drop from the uncompressed model allowed: mAP "
            "points (0.5) or a percentage of its mAP (1%). With --max-iters 0, post-training "
            "quantization that keeps the fewest quantizer groups in float; when training, stop "
            "at the first validation within it (NNCF 2's early_exit) and keep it as best_*.pth.",
        ),
    ] = None,
    cfg_options: CfgOptions = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the merged nncf_config and plan; exit.")
    ] = False,
    trust_checkpoint: TrustCheckpoint = False,
    force: Annotated[
        bool, typer.Option("--force", help="Use a work dir that holds checkpoints (kept aside).")
    ] = False,
    device: Device = "auto",
    launcher: Launcher = "none",
    allow_partial_load: Annotated[
        bool,
        typer.Option("--allow-partial-load", help="Accept a --load-from filling under half."),
    ] = False,
    json_path: JsonOutput = None,
) -> None:
    """Fine-tune CONFIG's detector; with a preset or nncf_config, compress it while doing so."""
    from detcompress import api

    if max_iters is not None and max_epochs is not None:
        raise DetcompressError("give --max-iters or --max-epochs, not both")
    check_output_file(json_path, "--json")
    options = all_cfg_options(cfg_options, ctx.args)
    plan = api.plan_compress(
        config,
        preset=preset,
        cfg_options=options,
        load_from=load_from,
        work_dir=work_dir,
        max_iters=max_iters,
        max_epochs=max_epochs,
        max_accuracy_drop=max_accuracy_drop,
    )
    for warning in plan.warnings:
        typer.secho(f"warning: {warning}", fg="yellow", err=True)
    if dry_run:
        typer.echo(plan.describe())
        return
    result = api.compress(
        plan,
        trust_checkpoint=trust_checkpoint,
        force=force,
        device=device,
        launcher=launcher,
        allow_partial_load=allow_partial_load,
    )
    if result.is_main:  # one report per run, not one per process
        print_result(result.summary(), json_path, result.to_json())
