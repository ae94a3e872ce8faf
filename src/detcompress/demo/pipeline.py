"""`make demo`: the main job end to end on the built-in demo workspace, through the CLI a user
types — FP32 baseline, int8 QAT, export of both, eval of all, bench of all — then report.md and
report.png in the workspace and the summary table on stdout.

    python -m detcompress.demo.pipeline [WORKSPACE] [--qat-iters N] [--bench-seconds S]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from detcompress.errors import DetcompressError

# int8 with asymmetric activations: the demo's YOLOX has SiLU activations, partly negative, and
# symmetric int8 loses 1.5 points in PTQ there (README, "Measured on the demo (int8)").
QAT_PRESET = "int8_mixed"
QAT_LR = 1e-4
QAT_ITERS = 200
BENCH_SECONDS = 5.0


@dataclass
class Step:
    title: str
    args: list[str]
    seconds: float = 0.0


@dataclass
class DemoRun:
    workspace: Path
    steps: list[Step] = field(default_factory=list)

    @property
    def results(self) -> Path:
        return self.workspace / "results"

    def run(self, title: str, *args: str) -> None:
        """One `detcompress` command, its output shown as it comes; a failure stops the demo."""
        step = Step(title, ["detcompress", *args])
        number = len(self.steps) + 1
        print(f"\n=== [{number}] {title}\n$ {shlex.join(step.args)}", flush=True)
        start = time.perf_counter()
        completed = subprocess.run([*_detcompress_command(), *args], check=False)
        step.seconds = time.perf_counter() - start
        self.steps.append(step)
        if completed.returncode != 0:
            raise DetcompressError(
                f"demo step [{number}] '{title}' failed (exit {completed.returncode}); "
                "its output is above"
            )
        print(f"=== [{number}] done in {step.seconds:.0f} s", flush=True)

    def json(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.results / name).read_text())
        return data


def _detcompress_command() -> list[str]:
    script = Path(sys.executable).with_name("detcompress")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from detcompress.cli import main; main()"]


def run_demo(
    workspace: Path,
    qat_iters: int = QAT_ITERS,
    bench_seconds: float = BENCH_SECONDS,
    fp32_iters: int | None = None,
    qat_options: tuple[str, ...] = (),
) -> Path:
    """Every step of the demo; returns the path of report.md. `qat_options`: more
    --cfg-options for the QAT step (the tests' fast calibration)."""
    # Long on purpose: the demo is a script of CLI steps, read top to bottom.
    start = time.perf_counter()
    demo = DemoRun(workspace)
    config = workspace / "configs" / "demo.py"
    if not config.is_file():
        demo.run("demo workspace: synthetic data, config, presets", "init", "demo", str(workspace))
    demo.results.mkdir(exist_ok=True)
    res = demo.results
    fp32_iter_args = ["--max-iters", str(fp32_iters)] if fp32_iters else []
    demo.run(
        "FP32 baseline: train the demo detector",
        "compress",
        str(config),
        "--work-dir",
        str(workspace / "work_dirs" / "fp32"),
        *fp32_iter_args,
        "--force",
        "--json",
        str(res / "train_fp32.json"),
    )
    fp32_ckpt = demo.json("train_fp32.json")["checkpoint"]
    demo.run(
        f"int8 QAT: {qat_iters} iterations from the FP32 checkpoint ({QAT_PRESET})",
        "compress",
        str(config),
        "--preset",
        QAT_PRESET,
        "--load-from",
        fp32_ckpt,
        "--max-iters",
        str(qat_iters),
        "--work-dir",
        str(workspace / "work_dirs" / "int8"),
        "--force",
        "--json",
        str(res / "train_int8.json"),
        "--cfg-options",
        f"optim_wrapper.optimizer.lr={QAT_LR}",
        *qat_options,
    )
    int8_ckpt = demo.json("train_int8.json")["checkpoint"]
    irs = {}
    for name, ckpt in (("fp32", fp32_ckpt), ("int8", int8_ckpt)):
        out = workspace / "exports" / name
        demo.run(
            f"export {name} to OpenVINO IR (NMS inside, verified)",
            "export",
            ckpt,
            "--to",
            "openvino",
            "--out",
            str(out),
            "--force",
            "--json",
            str(res / f"export_{name}.json"),
        )
        irs[name] = str(out / "model.xml")
    models = {
        "fp32_ir": irs["fp32"],
        "int8_ir": irs["int8"],
        "fp32_pth": fp32_ckpt,
        "int8_pth": int8_ckpt,
    }
    for name, model in models.items():
        demo.run(f"eval {name}", "eval", model, "--json", str(res / f"eval_{name}.json"))
    eval_args = [a for name in models for a in ("--eval-json", str(res / f"eval_{name}.json"))]
    demo.run(
        "bench: latency and throughput side by side (speed-up vs the FP32 IR)",
        "bench",
        *models.values(),
        "--seconds",
        str(bench_seconds),
        *eval_args,
        "--json",
        str(res / "bench.json"),
        "--plot",
        str(workspace / "report.png"),
    )
    bench = demo.json("bench.json")
    fp32_ir = bench["results"][0]
    if fp32_ir["precision"] != "f32":  # bf16 on AMX CPUs: show true f32 as well
        demo.run(
            "bench: the FP32 IR in true f32 beside the int8 IR",
            "bench",
            irs["fp32"],
            irs["int8"],
            "--precision",
            "f32",
            "--mode",
            "latency",
            "--seconds",
            str(bench_seconds),
            "--json",
            str(res / "bench_f32.json"),
        )
    report = write_report(demo, time.perf_counter() - start)
    print("\n" + summary_table(demo))
    print(f"\nreport: {report}\nplot:   {workspace / 'report.png'}")
    return report


def _row_label(name: str) -> str:
    return {
        "fp32_ir": "FP32 IR",
        "int8_ir": "int8 IR",
        "fp32_pth": "FP32 PyTorch",
        "int8_pth": "int8 PyTorch (fake-quantized)",
    }[name]


def _rows(demo: DemoRun) -> list[list[str]]:
    bench = demo.json("bench.json")["results"]
    names = ["fp32_ir", "int8_ir", "fp32_pth", "int8_pth"]
    rows = []
    for name, result in zip(names, bench, strict=True):
        evaluation = demo.json(f"eval_{name}.json")
        latency = result["latency_ms"] or {}
        rows.append(
            [
                _row_label(name),
                result["backend"],
                result["precision"],
                f"{evaluation['bbox_mAP']:.3f}",
                f"{latency.get('median', float('nan')):.2f}",
                f"{latency.get('p90', float('nan')):.2f}",
                f"{result['throughput_fps']:.1f}",
                f"{result['size_mb']:.1f}",
                f"{result['speedup']:.2f}x",
                f"{result['throughput_speedup']:.2f}x",
            ]
        )
    return rows


HEADER = [
    "model",
    "backend",
    "runs in",
    "bbox mAP",
    "latency ms (median)",
    "p90",
    "throughput fps",
    "size MB",
    "speed-up (latency)",
    "speed-up (throughput)",
]


def summary_table(demo: DemoRun) -> str:
    from detcompress.measure.report import markdown_table

    return markdown_table(HEADER, _rows(demo))


def _comparison_sentence(demo: DemoRun, machine: dict[str, Any]) -> str:
    bench = demo.json("bench.json")["results"]
    fp32, int8 = bench[0], bench[1]
    features = ", ".join(machine["cpu_features"]) or "none of " + "/".join(
        ("avx512", "VNNI", "AMX")
    )
    ratio = int8["latency_ms"]["median"] / fp32["latency_ms"]["median"]
    verdict = "faster" if ratio < 1 else "not faster"
    lines = [
        f"The speed-ups compare the int8 IR with the FP32 IR at its default precision on this "
        f"CPU, which is **{fp32['precision']}** (CPU features: {features}). The int8 IR runs "
        f"{int8.get('int8_convolutions', '?')} of its {int8.get('convolutions', '?')} "
        f"convolutions in int8; its median latency is {ratio:.2f} of the FP32 IR's: int8 is "
        f"{verdict} here at batch {fp32['batch']}.",
    ]
    if fp32["precision"] == "f32":
        lines.append(
            "On CPUs with AMX or avx512-bf16, OpenVINO runs an FP32 IR in bf16 by default, which "
            "narrows int8's lead: on a 2-core slice of an Intel Xeon with AMX this demo model "
            "took 2.59 ms in int8 and 2.15 ms in bf16 at batch 1 (4.30 ms in true f32), its "
            "layers being too small at 128 px for int8's AMX throughput to matter; the stock "
            "SSD300 at 300 px took 29.0 ms in int8 vs 46.5 ms in bf16 (README, 'int8 speed on "
            "CPUs with and without AMX')."
        )
    else:
        f32 = demo.json("bench_f32.json")["results"]
        lines.append(
            f"In true f32 (`bench --precision f32`) the FP32 IR takes "
            f"{f32[0]['latency_ms']['median']:.2f} ms; the int8 IR "
            f"{f32[1]['latency_ms']['median']:.2f} ms ({f32[1]['speedup']:.2f}x). Against bf16, "
            "about half of each batch-1 call of this 128 px model is per-layer overhead that "
            "int8 does not shrink: on 2 cores of an AMD EPYC with VNNI and bf16 its int8 IR was "
            "1.1-1.2x faster at batch 1, 1.45x (latency per call) and 1.41x (throughput) at "
            "batch 8 (README, 'Measured results')."
        )
    lines.append(
        "PyTorch rows time the network alone (no postprocessing); the IRs include box decoding "
        "and NMS. Latency: synchronous calls on one fixed random image; throughput: concurrent "
        "requests (OpenVINO's THROUGHPUT hint)."
    )
    return "\n\n".join(lines)


def write_report(demo: DemoRun, total_seconds: float) -> Path:
    from detcompress.files import atomic_write_text

    bench = demo.json("bench.json")
    machine = bench["machine"]
    fp32_train, int8_train = demo.json("train_fp32.json"), demo.json("train_int8.json")
    fp32_map = demo.json("eval_fp32_pth.json")["bbox_mAP"]
    int8_map = demo.json("eval_int8_pth.json")["bbox_mAP"]
    int8_ir_map = demo.json("eval_int8_ir.json")["bbox_mAP"]
    steps = "\n".join(
        f"| {i} | {s.title} | `{shlex.join(s.args)}` | {s.seconds:.0f} |"
        for i, s in enumerate(demo.steps, 1)
    )
    text = f"""# detcompress demo report

{datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")} — {machine["cpu"]}, {machine["usable_cores"]} \
cores usable, OpenVINO {machine["openvino"]}. The whole run took {total_seconds / 60:.1f} minutes.

## Results

{summary_table(demo)}

bbox mAP@[.5:.95] on the {demo.json("eval_fp32_ir.json")["num_images"]} validation images of \
the synthetic shapes dataset, with mmengine's test loop and the config's COCO metric for every \
row. int8 (QAT, {int8_train["iterations"]} iterations, preset `{QAT_PRESET}`) vs FP32 \
({fp32_train["iterations"]} iterations): {100 * (int8_map - fp32_map):+.1f} points in PyTorch, \
{100 * (int8_ir_map - fp32_map):+.1f} points for the int8 IR.

{_comparison_sentence(demo, machine)}

![latency vs mAP](report.png)

## Steps

| # | step | command | seconds |
|---|---|---|---|
{steps}

Every number above is in `results/` as JSON (`bench.json` holds the machine and each latency
percentile).
"""
    path = demo.workspace / "report.md"
    atomic_write_text(path, text)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("workspace", nargs="?", type=Path, default=Path("demo_ws"))
    parser.add_argument("--qat-iters", type=int, default=QAT_ITERS)
    parser.add_argument("--fp32-iters", type=int, help="default: the demo config's")
    parser.add_argument("--bench-seconds", type=float, default=BENCH_SECONDS)
    args = parser.parse_args()
    try:
        run_demo(args.workspace, args.qat_iters, args.bench_seconds, args.fp32_iters)
    except DetcompressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
