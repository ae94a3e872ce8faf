"""Time per training iteration of int8 QAT over FP32 on the demo model, measured in one run.

    .venv/bin/python benchmarks/qat_overhead.py [--iters 20] [--rounds 2] [--workspace DIR]
        [--json FILE]

Each variant runs in its own subprocess (so that peak memory is per variant) on the same
pre-loaded batches (data loading excluded), with the demo config's optimizer. Variants: FP32;
int8 QAT as detcompress trains it (fused CPU fake-quantization kernels, hook modules and the
head's loss outside NNCF's operation tracing); int8 QAT as NNCF runs it by itself (its own CPU
kernels, `DETCOMPRESS_NNCF_KERNELS=nncf`, everything traced). The variants alternate over
`--rounds` rounds, so that a shared machine's drifting speed hits all of them alike. Prints the
median time per iteration over all rounds, the ratios QAT / FP32 (goal: at most 1.3), peak RSS.
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

warnings.filterwarnings("ignore")

# variant -> DETCOMPRESS_NNCF_KERNELS for its process
VARIANTS = {"fp32": "fused", "int8": "fused", "int8_nncf_as_is": "nncf"}


def measure(workspace: Path, variant: str, iters: int, warmup: int) -> dict:
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper

    from detcompress import api, detector, training
    from detcompress.presets import build_nncf_config, bundled_presets, read_preset_file

    cfg = Config.fromfile(str(workspace / "configs" / "demo.py"))
    training.share_parameters_safely(cfg)
    model = detector.build_detector(cfg)
    batches = training.calibration_batches(cfg, warmup + iters)
    if variant.startswith("int8"):
        path = bundled_presets()["int8"]
        nncf_config = build_nncf_config(read_preset_file(path), str(path))
        model, _ = api._initialize_compression(cfg, model, nncf_config)
        if variant == "int8":  # as detcompress trains (CompressionScheduleHook.before_train)
            from detcompress.compression import nncf_adapter

            nncf_adapter.speed_up_training(model)
    model.train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    times = []
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        model.train_step(batch, optim_wrapper)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": variant, "times_s": times, "peak_rss_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workspace", type=Path, help="demo workspace (default: a new one)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # child process
        print(json.dumps(measure(args.workspace, args.variant, args.iters, args.warmup)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        workspace = args.workspace
        if workspace is None:
            from detcompress.demo import init_demo

            workspace = Path(tmp) / "ws"
            init_demo(workspace, seed=0)
        times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
        peak: dict[str, float] = {}
        round_ratios: list[float] = []  # the variants of one round ran minutes apart at most
        for _ in range(args.rounds):
            round_median: dict[str, float] = {}
            for variant, kernels in VARIANTS.items():
                out = subprocess.run(
                    [sys.executable, __file__, "--variant", variant, "--workspace", str(workspace),
                     "--iters", str(args.iters), "--warmup", str(args.warmup)],
                    capture_output=True, text=True, check=True,
                    env={**os.environ, "DETCOMPRESS_NNCF_KERNELS": kernels},
                )  # fmt: skip
                result = json.loads(out.stdout.strip().splitlines()[-1])
                times[variant] += result["times_s"]
                round_median[variant] = statistics.median(result["times_s"])
                peak[variant] = max(peak.get(variant, 0.0), result["peak_rss_mb"])
            round_ratios.append(round_median["int8"] / round_median["fp32"])
    median = {variant: statistics.median(values) for variant, values in times.items()}
    report = {
        "median_s_per_iteration": median,
        "peak_rss_mb": peak,
        "qat_over_fp32": median["int8"] / median["fp32"],
        "qat_nncf_as_is_over_fp32": median["int8_nncf_as_is"] / median["fp32"],
        "qat_peak_memory_over_fp32": peak["int8"] / peak["fp32"],
        "qat_over_fp32_per_round": round_ratios,
        "iterations_per_variant": len(times["fp32"]),
    }
    for variant in VARIANTS:
        print(f"{variant}: {median[variant] * 1000:.0f} ms/iter, peak RSS {peak[variant]:.0f} MB")
    print(f"QAT / FP32 time per iteration: {report['qat_over_fp32']:.2f} (goal <= 1.3)")
    print(
        "QAT / FP32 per round (the machine's speed drifts): "
        + ", ".join(f"{ratio:.2f}" for ratio in round_ratios)
    )
    print(f"QAT as NNCF runs it by itself / FP32: {report['qat_nncf_as_is_over_fp32']:.2f}")
    print(f"QAT / FP32 peak memory: {report['qat_peak_memory_over_fp32']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
