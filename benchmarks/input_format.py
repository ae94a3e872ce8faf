"""What `export --input u8-nhwc` saves a deployment that gets decoded camera frames (uint8,
height x width x BGR): per-frame latency of the float32 NCHW export, counting the conversion
the client must do first (numpy: transpose, to float32), against the uint8 NHWC export fed the
frame as it is (its conversion runs inside the graph). Both runtimes, batch 1, measured in
rounds that alternate the two so that a drifting machine slows both alike; prints each
variant's median and the ratio u8 / float per runtime (median of per-round ratios).

    .venv/bin/python benchmarks/input_format.py CHECKPOINT [--size 640] [--rounds 7]

The export goes through the detcompress CLI (`export --to all --input-shape S S`, with and
without `--input u8-nhwc`), so CHECKPOINT is any checkpoint `export` takes, e.g. the demo's
`demo_ws/work_dirs/fp32/iter_900.pth`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def detcompress(*args: str) -> None:
    print("$ detcompress " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "detcompress", *args], check=True)


def median_ms(call: Callable[[], object], seconds: float) -> float:
    call()  # warm-up
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def runners(folder: Path, frame: np.ndarray) -> dict[str, dict[str, Callable[[], object]]]:
    """runtime -> variant -> one frame's inference, the client's conversion included."""
    import onnxruntime as ort
    import openvino as ov

    def as_float_nchw(image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)

    core = ov.Core()
    ir = {v: core.compile_model(str(folder / v / "model.xml"), "CPU") for v in ("f32", "u8")}
    requests = {v: compiled.create_infer_request() for v, compiled in ir.items()}
    options = ort.SessionOptions()
    onnx = {v: ort.InferenceSession(str(folder / v / "model.onnx"), options) for v in ("f32", "u8")}
    return {
        "openvino": {
            "f32": lambda: requests["f32"].infer({"image": as_float_nchw(frame)}),
            "u8": lambda: requests["u8"].infer({"image": frame[None]}),
        },
        "onnxruntime": {
            "f32": lambda: onnx["f32"].run(None, {"image": as_float_nchw(frame)}),
            "u8": lambda: onnx["u8"].run(None, {"image": frame[None]}),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--size", type=int, default=640, help="input height and width")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=2.0, help="per variant and round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="input_format_") as scratch:
        folder = Path(scratch)
        size = [str(args.size)] * 2
        for variant, extra in (("f32", []), ("u8", ["--input", "u8-nhwc"])):
            detcompress("export", str(args.checkpoint), "--to", "all", "--input-shape", *size,
                        "--out", str(folder / variant), "--verify-images", "1", *extra)  # fmt: skip
        # A decoded frame at the input size (no resize: that is the same for both variants).
        frame = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), np.uint8)
        calls = runners(folder, frame)
        times: dict[str, dict[str, list[float]]] = {
            runtime: {"f32": [], "u8": []} for runtime in calls
        }
        for round_index in range(args.rounds):
            order = ("f32", "u8") if round_index % 2 == 0 else ("u8", "f32")
            for runtime, variants in calls.items():
                for variant in order:
                    times[runtime][variant].append(median_ms(variants[variant], args.seconds))
    print(f"\nbatch 1, {args.size}x{args.size}, {args.rounds} rounds (median of per-round values)")
    print(f"{'runtime':<12} {'f32 NCHW + conversion ms':>25} {'u8 NHWC ms':>11} {'u8 / f32':>9}")
    for runtime, measured in times.items():
        ratios = [u / f for u, f in zip(measured["u8"], measured["f32"], strict=True)]
        print(
            f"{runtime:<12} {statistics.median(measured['f32']):>25.2f} "
            f"{statistics.median(measured['u8']):>11.2f} {statistics.median(ratios):>9.3f} "
            f"(rounds {min(ratios):.3f}-{max(ratios):.3f})"
        )


if __name__ == "__main__":
    main()
