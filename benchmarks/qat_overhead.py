"""Time per training iteration of int8 QAT over FP32 on the demo model, measured in one run.

    .venv/bin/python benchmarks/qat_overhead.py [--iters 30] [--workspace DIR] [--json FILE]

The ratio (goal: at most 1.3) comes from one process that holds the FP32 model and the int8
QAT model (as detcompress trains it: fused CPU fake-quantization kernels, `speed_up_training`)
and alternates one training step of each, in alternating order, on the same pre-loaded
batches (data loading excluded) with the demo config's optimizer: a shared machine's speed
drifts by tens of percent within minutes, and steps taken side by side see the same machine.
Peak memory needs one process per variant: FP32, int8, and int8 QAT as NNCF runs it by itself
(its own CPU kernels, `DETCOMPRESS_NNCF_KERNELS=nncf`, everything traced), whose time is also
printed (measured alone, so only roughly comparable). Prints medians and ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")

# variant -> DETCOMPRESS_NNCF_KERNELS for its process
VARIANTS = {"fp32": "fused", "int8": "fused", "int8_nncf_as_is": "nncf"}


def _build(workspace: Path, variant: str, batch_count: int) -> tuple[Any, Any, list]:
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper

    from detcompress import api
    from detcompress.config.presets import build_nncf_config, bundled_presets, read_preset_file
    from detcompress.model import detector
    from detcompress.train import runner

    cfg = Config.fromfile(str(workspace / "configs" / "demo.py"))
    runner.share_parameters_safely(cfg)
    model = detector.build_detector(cfg)
    batches = runner.calibration_batches(cfg, batch_count)
    if variant.startswith("int8"):
        path = bundled_presets()["int8"]
        nncf_config = build_nncf_config(read_preset_file(path), str(path))
        model, _ = api.initialize_compression(cfg, model, nncf_config)
        if variant == "int8":  # as detcompress trains (CompressionScheduleHook.before_train)
            from detcompress.compression import speedups

            speedups.speed_up_training(model)
    model.train()
    return model, build_optim_wrapper(model, cfg.optim_wrapper), batches


def _as_training_does() -> None:
    """The process-wide setting detcompress's training applies (training.run), FP32 and int8
    alike."""
    from detcompress.train import allocator

    allocator.keep_freed_memory_for_reuse()


def _step(model: Any, optim_wrapper: Any, batch: Any) -> float:
    start = time.perf_counter()
    model.train_step(batch, optim_wrapper)
    return time.perf_counter() - start


def measure_alone(workspace: Path, variant: str, iters: int, warmup: int) -> dict:
    _as_training_does()
    model, optim_wrapper, batches = _build(workspace, variant, warmup + iters)
    times = [_step(model, optim_wrapper, batch) for batch in batches][warmup:]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"times_s": times, "peak_rss_mb": peak_mb}


def measure_side_by_side(workspace: Path, iters: int, warmup: int) -> dict:
    _as_training_does()
    built = {variant: _build(workspace, variant, warmup + iters) for variant in ("fp32", "int8")}
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    for i in range(warmup + iters):
        order = ("fp32", "int8") if i % 2 == 0 else ("int8", "fp32")
        for variant in order:
            model, optim_wrapper, batches = built[variant]
            elapsed = _step(model, optim_wrapper, batches[i])
            if i >= warmup:
                times[variant].append(elapsed)
        if (i + 1) % 10 == 0:
            print(f"side by side: {i + 1}/{warmup + iters} steps", file=sys.stderr, flush=True)
    return {"times_s": times}


def _child(workspace: Path, mode: str, iters: int, warmup: int, kernels: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--workspace", str(workspace),
         "--iters", str(iters), "--warmup", str(warmup)],
        stdout=subprocess.PIPE, text=True, check=True,
        env={**os.environ, "DETCOMPRESS_NNCF_KERNELS": kernels},
    )  # fmt: skip
    result: dict = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--iters", type=int, default=30, help="timed steps of each variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workspace", type=Path, help="demo workspace (default: a new one)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    parser.add_argument("--child", choices=[*VARIANTS, "side_by_side"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "side_by_side":
        print(json.dumps(measure_side_by_side(args.workspace, args.iters, args.warmup)))
        return
    if args.child:
        print(json.dumps(measure_alone(args.workspace, args.child, args.iters, args.warmup)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        workspace = args.workspace
        if workspace is None:
            from detcompress.demo.workspace import init_demo

            workspace = Path(tmp) / "ws"
            init_demo(workspace, seed=0)
        side = _child(workspace, "side_by_side", args.iters, args.warmup, "fused")["times_s"]
        alone = {
            variant: _child(workspace, variant, max(args.iters // 3, 5), args.warmup, kernels)
            for variant, kernels in VARIANTS.items()
        }
    median = {variant: statistics.median(values) for variant, values in side.items()}
    median_alone = {v: statistics.median(r["times_s"]) for v, r in alone.items()}
    peak = {variant: result["peak_rss_mb"] for variant, result in alone.items()}
    report = {
        "side_by_side_median_s_per_iteration": median,
        "qat_over_fp32": median["int8"] / median["fp32"],
        "alone_median_s_per_iteration": median_alone,
        "qat_nncf_as_is_over_fp32_alone": median_alone["int8_nncf_as_is"] / median_alone["fp32"],
        "peak_rss_mb": peak,
        "qat_peak_memory_over_fp32": peak["int8"] / peak["fp32"],
        "iterations_side_by_side": len(side["fp32"]),
    }
    print(
        f"side by side, {len(side['fp32'])} steps each: FP32 {median['fp32'] * 1000:.0f} ms, "
        f"int8 QAT {median['int8'] * 1000:.0f} ms per iteration"
    )
    print(f"QAT / FP32 time per iteration: {report['qat_over_fp32']:.2f} (goal <= 1.3)")
    for variant in VARIANTS:
        print(
            f"alone: {variant} {median_alone[variant] * 1000:.0f} ms/iter, "
            f"peak RSS {peak[variant]:.0f} MB"
        )
    as_is = report["qat_nncf_as_is_over_fp32_alone"]
    print(f"QAT as NNCF runs it by itself / FP32 (alone): {as_is:.2f}")
    print(f"QAT / FP32 peak memory: {report['qat_peak_memory_over_fp32']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
