"""`detcompress bench`: latency and throughput of models side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from detcompress.commands._common import check_output_file, print_result, user_errors
from detcompress.commands.options import PRECISIONS, Device, JsonOutput, TrustCheckpoint


@user_errors
def bench(
    models: Annotated[
        list[Path], typer.Argument(help=".xml, .onnx or .pth models; speed-ups are vs the first.")
    ],
    device: Device = "cpu",
    batch: Annotated[
        int | None, typer.Option(help="Images per call (default: the model's own batch, or 1).")
    ] = None,
    mode: Annotated[
        str, typer.Option(metavar="latency|throughput|both", help="What to measure.")
    ] = "both",
    precision: Annotated[
        str,
        typer.Option(
            metavar=f"{PRECISIONS}[,...]",
            help="f32: true fp32 where the runtime would use bf16. One value for all models, or "
            "one per model (e.g. f32,auto to compare an IR in f32 with one at the default).",
        ),
    ] = "auto",
    seconds: Annotated[float, typer.Option(help="Measuring time per model and mode.")] = 10.0,
    rounds: Annotated[
        int, typer.Option(help="Measure the models in turn, this many times each (A B, A B, ...).")
    ] = 5,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all).")] = None,
    layers: Annotated[
        int,
        typer.Option(
            metavar="N",
            help="Per-layer times of each IR by layer type and precision, and its N slowest "
            "layers (OpenVINO performance counters).",
        ),
    ] = 0,
    eval_json: Annotated[
        list[Path] | None,
        typer.Option(help="'detcompress eval --json' results: adds mAP to the table and plot."),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(help="Write a PNG: latency vs mAP with --eval-json, else latency bars."),
    ] = None,
    trust_checkpoint: TrustCheckpoint = False,
    json_path: JsonOutput = None,
) -> None:
    """Latency (median, p90, p99 of synchronous calls) and throughput (concurrent requests) of
    each model, side by side, with the precision each one really runs in. The models are
    measured in turn, round after round, and each speed-up is the median of its per-round
    ratios with an interval: a machine that drifts meanwhile slows every model of a round."""
    from detcompress.measure.latency import bench as run_bench
    from detcompress.measure.report import bench_table, check_plot_path, layer_tables, write_plot

    check_output_file(json_path, "--json")
    if plot is not None:
        check_plot_path(plot)
    report = run_bench(
        models,
        device=device,
        batch=batch,
        mode=mode,
        precision=precision,
        seconds=seconds,
        threads=threads,
        rounds=rounds,
        layers=layers,
        eval_jsons=eval_json,
        trust_checkpoint=trust_checkpoint,
        progress=lambda line: typer.echo(line, err=True),
    )
    text = bench_table(report)
    if layers:
        text += "\n\n" + layer_tables(report)
    print_result(text, json_path, report.to_json())
    if plot is not None:
        write_plot(report, plot)
