"""`detcompress bench`: latency and throughput of models side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from detcompress.commands._common import check_output_file, user_errors, write_json


@user_errors
def bench(
    models: Annotated[
        list[Path], typer.Argument(help=".xml, .onnx or .pth models; speed-ups are vs the first.")
    ],
    device: Annotated[str, typer.Option(help="CPU, GPU or AUTO.")] = "CPU",
    batch: Annotated[
        int | None, typer.Option(help="Images per call (default: the model's own batch, or 1).")
    ] = None,
    mode: Annotated[str, typer.Option(help="latency, throughput or both.")] = "both",
    precision: Annotated[
        str, typer.Option(help="auto (the runtime's default, bf16 on AMX CPUs) or f32.")
    ] = "auto",
    seconds: Annotated[float, typer.Option(help="Measuring time per model and mode.")] = 10.0,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all).")] = None,
    eval_json: Annotated[
        list[Path] | None,
        typer.Option(help="'detcompress eval --json' results: adds mAP to the table and plot."),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(help="Write a PNG: latency vs mAP with --eval-json, else latency bars."),
    ] = None,
    trust_checkpoint: Annotated[
        bool, typer.Option(help="Allow full unpickling of a checkpoint you trust.")
    ] = False,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write every number as JSON.")
    ] = None,
) -> None:
    """Latency (median, p90, p99 of synchronous calls) and throughput (concurrent requests) of
    each model, side by side, with the precision each one really runs in."""
    from detcompress.measure.latency import bench as run_bench
    from detcompress.measure.report import bench_table, check_plot_path, write_plot

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
        eval_jsons=eval_json,
        trust_checkpoint=trust_checkpoint,
        progress=lambda line: typer.echo(line, err=True),
    )
    typer.echo(bench_table(report))
    write_json(json_path, report.to_json())
    if plot is not None:
        write_plot(report, plot)
