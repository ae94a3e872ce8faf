"""`detcompress export`: a checkpoint -> OpenVINO IR and/or ONNX, verified."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from detcompress.commands._common import check_output_file, print_result, user_errors
from detcompress.commands.options import JsonOutput, TrustCheckpoint


@user_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint (.pth), FP32 or compressed.")],
    to: Annotated[
        str, typer.Option(metavar="openvino|onnx|all", help="Format(s) to write.")
    ] = "openvino",
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: <checkpoint>_export beside it).")
    ] = None,
    input_shape: Annotated[
        tuple[int, int] | None,
        typer.Option(help="Input height and width (default: the test pipeline's size)."),
    ] = None,
    batch: Annotated[int, typer.Option(help="Static batch size.")] = 1,
    dynamic_batch: Annotated[
        bool, typer.Option("--dynamic-batch", help="Leave the batch dimension dynamic.")
    ] = False,
    dynamic_shape: Annotated[
        bool,
        typer.Option(
            "--dynamic-shape",
            help="Leave batch, height and width dynamic (--input-shape: the size verified "
            "first; a second one is verified too).",
        ),
    ] = False,
    postprocessing: Annotated[
        bool | None,
        typer.Option(
            "--postprocessing/--no-postprocessing",
            help="Box decoding and NMS inside the graph (default: the checkpoint's "
            "nncf_compress_postprocessing).",
        ),
    ] = None,
    fp16_weights: Annotated[
        bool, typer.Option("--fp16-weights", help="Store the IR's float weights as FP16.")
    ] = False,
    config: Annotated[
        Path | None, typer.Option(help="mmdet config (needed for a plain mmdet checkpoint).")
    ] = None,
    trust_checkpoint: TrustCheckpoint = False,
    verify_images: Annotated[
        int, typer.Option(min=1, help="Validation images to verify the exported model on.")
    ] = 4,
    input_format: Annotated[
        str,
        typer.Option(
            "--input",
            metavar="f32-nchw|u8-nhwc",
            help="What the model's input takes: float32 NCHW (default), or uint8 NHWC frames "
            "as decoded (BGR), converted inside the graph.",
        ),
    ] = "f32-nchw",
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing output folder.")
    ] = False,
    json_path: JsonOutput = None,
) -> None:
    """Export to OpenVINO IR and/or ONNX (compression stripped, int8 kept), write the model's
    description beside it, and verify the exported model against PyTorch."""
    from detcompress.deploy.export import export as run_export

    check_output_file(json_path, "--json")
    result = run_export(
        checkpoint,
        to=to,
        out=out,
        input_shape=input_shape,
        batch=batch,
        dynamic_batch=dynamic_batch,
        postprocessing=postprocessing,
        fp16_weights=fp16_weights,
        force=force,
        config=config,
        trust_checkpoint=trust_checkpoint,
        verify_images=verify_images,
        input_format=input_format,
        dynamic_shape=dynamic_shape,
    )
    print_result(result.summary(), json_path, result.to_json())
