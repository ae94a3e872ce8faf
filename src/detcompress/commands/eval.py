"""`detcompress eval`: evaluate a checkpoint, an OpenVINO IR or an ONNX model."""

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
from detcompress.commands.options import CfgOptions, Device, JsonOutput, Precision, TrustCheckpoint


@user_errors
def evaluate(
    ctx: typer.Context,
    target: Annotated[
        Path, typer.Argument(help="Checkpoint (.pth), OpenVINO IR (.xml) or ONNX (.onnx).")
    ],
    config: Annotated[
        Path | None,
        typer.Option(help="mmdet config (default: the one stored in the checkpoint or model)."),
    ] = None,
    cfg_options: CfgOptions = None,
    device: Device = "cpu",
    precision: Precision = "auto",
    batch_size: Annotated[int | None, typer.Option(help="Test dataloader batch size.")] = None,
    show_dir: Annotated[
        Path | None, typer.Option(help="Write images with drawn detections here.")
    ] = None,
    trust_checkpoint: TrustCheckpoint = False,
    json_path: JsonOutput = None,
) -> None:
    """Evaluate with the config's test dataloader and metric through mmengine's test loop; the
    same preprocessing and metric code for PyTorch, OpenVINO and ONNX Runtime."""
    from detcompress.measure.evaluation import evaluate

    check_output_file(json_path, "--json")
    result = evaluate(
        target,
        config=config,
        cfg_options=all_cfg_options(cfg_options, ctx.args),
        device=device,
        precision=precision,
        batch_size=batch_size,
        show_dir=show_dir,
        trust_checkpoint=trust_checkpoint,
    )
    print_result(result.table(), json_path, result.to_json())
