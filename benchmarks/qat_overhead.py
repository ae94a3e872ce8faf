"""Time per training iteration of int8 QAT over FP32 on the demo model, measured in one run.

    .venv/bin/python benchmarks/qat_overhead.py [--iters 20] [--workspace DIR]

Each variant runs in its own subprocess (so that peak memory is per variant) on the same
pre-loaded batches (data loading excluded), with the demo config's optimizer. Prints the
median seconds per iteration, the ratio QAT / FP32 (goal: at most 1.3) and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")


def measure(workspace: Path, variant: str, iters: int, warmup: int) -> dict:
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper

    from detcompress import api, detector, training
    from detcompress.presets import build_nncf_config, bundled_presets, read_preset_file

    cfg = Config.fromfile(str(workspace / "configs" / "demo.py"))
    training.share_parameters_safely(cfg)
    model = detector.build_detector(cfg)
    batches = training.calibration_batches(cfg, warmup + iters)
    if variant == "int8":
        path = bundled_presets()["int8"]
        nncf_config = build_nncf_config(read_preset_file(path), str(path))
        model, _ = api._initialize_compression(cfg, model, nncf_config)
    model.train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    times = []
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        model.train_step(batch, optim_wrapper)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": variant, "median_s": statistics.median(times), "peak_rss_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workspace", type=Path, help="demo workspace (default: a new one)")
    parser.add_argument("--variant", choices=["fp32", "int8"], help=argparse.SUPPRESS)
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
        results = {}
        for variant in ("fp32", "int8"):
            out = subprocess.run(
                [sys.executable, __file__, "--variant", variant, "--workspace", str(workspace),
                 "--iters", str(args.iters), "--warmup", str(args.warmup)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    fp32, int8 = results["fp32"], results["int8"]
    print(f"fp32: {fp32['median_s'] * 1000:.0f} ms/iter, peak RSS {fp32['peak_rss_mb']:.0f} MB")
    print(f"int8 QAT: {int8['median_s'] * 1000:.0f} ms/iter, peak RSS {int8['peak_rss_mb']:.0f} MB")
    print(f"QAT / FP32 time per iteration: {int8['median_s'] / fp32['median_s']:.2f} (goal <= 1.3)")
    print(f"QAT / FP32 peak memory: {int8['peak_rss_mb'] / fp32['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    main()
