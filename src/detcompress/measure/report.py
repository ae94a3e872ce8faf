"""Tables and plots of benchmark results (and the demo's report built from them)."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from detcompress.errors import DetcompressError
from detcompress.measure.latency import BenchReport, Measurement


def _ms(result: Measurement, key: str) -> str:
    return f"{result.latency_ms[key]:.2f}" if result.latency_ms else "-"


def _ratio(result: Measurement, name: str) -> str:
    """`1.52x (1.48-1.57)`, or `1.01x (0.97-1.05, within noise)` when the interval holds 1."""
    value = getattr(result, name)
    if value is None:
        return "-"
    interval = result.rounds.get(f"{name}_interval")
    if interval is None or interval["low"] == interval["high"] == 1.0:
        return f"{value:.2f}x"
    noise = ", within noise" if interval["within_noise"] else ""
    return f"{value:.2f}x ({interval['low']:.2f}-{interval['high']:.2f}{noise})"


def short_name(result: Measurement) -> str:
    """The last two path parts: enough to tell fp32/model.xml from int8/model.xml."""
    parts = Path(result.model).parts
    return "/".join(parts[-2:])


def bench_rows(report: BenchReport) -> tuple[list[str], list[list[str]]]:
    with_map = any(r.metrics for r in report.results)
    header = [
        "model",
        "backend",
        "precision",
        "batch",
        "latency ms (median)",
        "p90",
        "p99",
        "throughput fps",
        "size MB",
        "speed-up (latency)",
        "speed-up (throughput)",
    ]
    if with_map:
        header.append("bbox mAP")
    rows = []
    for r in report.results:
        row = [
            short_name(r),
            r.backend,
            r.precision,
            str(r.batch),
            _ms(r, "median"),
            _ms(r, "p90"),
            _ms(r, "p99"),
            f"{r.throughput_fps:.1f}" if r.throughput_fps is not None else "-",
            f"{r.size_mb:.1f}",
            _ratio(r, "speedup"),
            _ratio(r, "throughput_speedup"),
        ]
        if with_map:
            row.append(f"{r.metrics['bbox_mAP']:.3f}" if "bbox_mAP" in r.metrics else "-")
        rows.append(row)
    return header, rows


def bench_table(report: BenchReport) -> str:
    header, rows = bench_rows(report)
    table = Table(
        title=f"{report.machine['cpu']}, {report.machine['usable_cores']} cores, "
        f"OpenVINO {report.machine['openvino']}"
    )
    for column in header:
        table.add_column(column, justify="left" if column in ("model", "backend") else "right")
    for row in rows:
        table.add_row(*row)
    out = io.StringIO()
    Console(file=out, width=200, force_terminal=False, highlight=False).print(table)
    return out.getvalue().rstrip()


def layer_tables(report: BenchReport) -> str:
    """Per IR: time by (layer type, precision), then its slowest layers (`bench --layers`)."""
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False, highlight=False)
    for result in report.results:
        profile = result.details.get("layers")
        if profile is None:
            continue
        by_type = Table(
            title=f"{short_name(result)}: {profile['total_ms']:.2f} ms in layers (mean of "
            f"{profile['calls']} profiled calls)"
        )
        for column in ("layer type", "precision", "layers", "ms", "share"):
            by_type.add_column(column, justify="left" if column == "layer type" else "right")
        for group in profile["by_type"]:
            by_type.add_row(
                group["type"],
                group["precision"],
                str(group["layers"]),
                f"{group['ms']:.3f}",
                f"{group['share']:.0%}",
            )
        console.print(by_type)
        slowest = Table(title=f"{short_name(result)}: slowest layers")
        for column in ("layer", "type", "kernel", "ms"):
            slowest.add_column(column, justify="right" if column == "ms" else "left")
        for layer in profile["top"]:
            name = layer["name"] if len(layer["name"]) <= 70 else "..." + layer["name"][-67:]
            slowest.add_row(name, layer["type"], layer["kernel"], f"{layer['ms']:.3f}")
        console.print(slowest)
    return out.getvalue().rstrip()


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def check_plot_path(path: Path) -> None:
    if path.suffix.lower() != ".png":
        raise DetcompressError(f"--plot {path}: must be a .png file")
    if not path.parent.is_dir():
        raise DetcompressError(f"--plot {path}: folder {path.parent} does not exist")
    from detcompress.files import check_output_file

    check_output_file(path, "--plot")


def write_plot(report: BenchReport, path: Path) -> None:
    """PNG: latency vs bbox mAP when every model has an mAP, else latency (or throughput) bars.
    Written beside the target, then renamed into place."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report.results
    labels = [f"{short_name(r)}\n{r.backend} {r.precision}" for r in results]
    use_latency = all(r.latency_ms for r in results)
    values = [
        r.latency_ms["median"] if use_latency and r.latency_ms else (r.throughput_fps or 0.0)
        for r in results
    ]
    unit = "median latency (ms)" if use_latency else "throughput (frames/s)"
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    if all("bbox_mAP" in r.metrics for r in results):
        for index, (label, value, r) in enumerate(zip(labels, values, results, strict=True)):
            ax.scatter(value, r.metrics["bbox_mAP"], s=60)
            # alternate above/below: models of equal mAP would print over each other
            offset = ((6, 6), (6, -14), (6, 18), (6, -26))[index % 4]
            ax.annotate(
                label.replace("\n", ", "),
                (value, r.metrics["bbox_mAP"]),
                textcoords="offset points",
                xytext=offset,
                fontsize=8,
            )
        if min(values) > 0 and max(values) / min(values) > 5:
            ax.set_xscale("log")
        ax.set_xlabel(unit)
        ax.set_ylabel("bbox mAP@[.5:.95]")
        ax.set_title(f"accuracy vs speed, batch {results[0].batch}")
        ax.grid(alpha=0.3)
        ax.margins(x=0.25, y=0.2)
    else:
        bars = ax.bar(range(len(values)), values, color="tab:blue")
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
        ax.set_xticks(range(len(values)), labels, fontsize=7)
        ax.set_ylabel(unit)
        ax.set_title(f"batch {results[0].batch}")
    fig.text(
        0.01,
        0.01,
        f"{report.machine['cpu']}, {report.machine['usable_cores']} cores",
        fontsize=7,
        color="gray",
    )
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
