"""Latency of the filter-pruned int8 IR over the unpruned int8 IR (and the same for FP32) on
the demo model (yolox_tiny), batch 1, measured in one run.

    .venv/bin/python benchmarks/pruning_speed.py [--workspace DEMO_DIR --load-from FP32.pth]
        [--image-size 128] [--seconds 10] [--threads 2] [--cpus 0,1] [--keep DIR]

Goal (issue #4): pruned int8 / int8 <= 0.8. Every step goes through the detcompress CLI:
from one FP32 checkpoint, `compress --max-iters 0` with `int8`, `filter_pruning` (30% of the
filters removed at once: pruning_init = pruning_target) and `int8_filter_pruning`; export of
the four models to OpenVINO without postprocessing (latency of the network itself: NMS time
depends on how many boxes the weights produce, not on pruning); `bench` of all four in one
call. Without --load-from, a fresh demo workspace and one FP32 iteration give the weights
(latency does not depend on their values). Also prints the IR and checkpoint sizes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ssd300_int8_speed import detcompress

# 7-bit weights everywhere: on CPUs without VNNI, 8-bit weights saturate int16 accumulators
# and the IR's raw outputs fail export's verification against PyTorch (see the README).
CALIBRATION = [
    "nncf_config.compression.1.initializer.range.num_init_steps=8",
    "nncf_config.compression.1.initializer.batchnorm_adaptation.num_bn_adaptation_steps=0",
    "nncf_config.compression.1.overflow_fix=enable",
]
AT_ONCE = ["nncf_config.compression.0.pruning_init=0.3"]  # no schedule: PTQ only
AT_ONCE_ALONE = [o.replace(".0.", ".") for o in AT_ONCE]  # a single algorithm: no list


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--workspace", type=Path, help="demo workspace (default: a new one)")
    parser.add_argument("--load-from", help="FP32 checkpoint of the workspace's demo config")
    parser.add_argument("--image-size", type=int, help="export at this input size (square)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, help="CPU threads (default: all)")
    parser.add_argument("--cpus", help="pin the measurements to these CPUs (e.g. 0,1)")
    parser.add_argument("--keep", type=Path, help="work here and keep the files")
    args = parser.parse_args()
    from detcompress.demo.workspace import init_demo

    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        workspace = args.workspace or work / "ws"
        if not (workspace / "configs" / "demo.py").is_file():
            init_demo(workspace, seed=0)
        config = str(workspace / "configs" / "demo.py")
        fp32 = args.load_from
        if fp32 is None:
            out_json = str(work / "fp32.json")
            detcompress("compress", config, "--max-iters", "1", "--work-dir",
                        str(work / "fp32"), "--force", "--json", out_json)  # fmt: skip
            fp32 = json.loads((work / "fp32.json").read_text())["checkpoint"]
        checkpoints = {"fp32": fp32}
        for name, preset, options in (
            ("int8", "int8", [o.replace(".1.", ".") for o in CALIBRATION]),
            ("pruned_fp32", "filter_pruning", AT_ONCE_ALONE),
            ("pruned_int8", "int8_filter_pruning", CALIBRATION + AT_ONCE),
        ):
            detcompress(
                "compress", config, "--preset", preset, "--load-from", fp32, "--max-iters", "0",
                "--work-dir", str(work / name), "--force", "--json", str(work / f"{name}.json"),
                "--cfg-options", *options,
            )  # fmt: skip
            checkpoints[name] = json.loads((work / f"{name}.json").read_text())["checkpoint"]
        size = [str(args.image_size)] * 2 if args.image_size else []
        shape = ["--input-shape", *size] if size else []
        for name, ckpt in checkpoints.items():
            ir_dir = str(work / f"ir_{name}")
            detcompress("export", ckpt, "--to", "openvino", "--no-postprocessing", *shape,
                        "--out", ir_dir, "--force", "--verify-images", "2")  # fmt: skip
        names = list(checkpoints)
        irs = [str(work / f"ir_{n}" / "model.xml") for n in names]
        threads = ["--threads", str(args.threads)] if args.threads else []
        out = work / "bench.json"
        detcompress("bench", *irs, "--mode", "latency", "--seconds", str(args.seconds),
                    *threads, "--json", str(out), cpus=args.cpus)  # fmt: skip
        results = dict(zip(names, json.loads(out.read_text())["results"], strict=True))
        machine = json.loads(out.read_text())["machine"]
        sizes = {n: Path(c).stat().st_size / 2**20 for n, c in checkpoints.items()}
        ir_sizes = {n: (work / f"ir_{n}" / "model.bin").stat().st_size / 2**20 for n in names}

    ms = {n: r["latency_ms"]["median"] for n, r in results.items()}
    print(f"\nmachine: {machine['cpu']}, {machine['usable_cores']} cores usable, "
          f"features: {', '.join(machine['cpu_features']) or '-'}")  # fmt: skip
    pixels = args.image_size or "the config's"
    print(f"demo model IRs, {pixels} px, batch 1, median latency ({args.seconds:g} s each):")
    for n in names:
        print(f"  {n:12s} {ms[n]:8.2f} ms  runs in {results[n]['precision']:5s}  "
              f"IR .bin {ir_sizes[n]:6.2f} MB  checkpoint {sizes[n]:6.2f} MB")  # fmt: skip
    print(f"pruned int8 / int8 latency: {ms['pruned_int8'] / ms['int8']:.3f}  (goal <= 0.8)")
    print(f"pruned FP32 / FP32 latency: {ms['pruned_fp32'] / ms['fp32']:.3f}")
    print(f"pruned IR / IR size: int8 {ir_sizes['pruned_int8'] / ir_sizes['int8']:.3f}, "
          f"FP32 {ir_sizes['pruned_fp32'] / ir_sizes['fp32']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
