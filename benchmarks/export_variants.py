"""What the export options cost or save a deployment that gets decoded camera frames (uint8,
height x width x BGR), per frame, batch 1, in both runtimes:

- `static`: the default export (float32 NCHW input of a fixed size), the client's conversion
  of the frame included (numpy: transpose, to float32);
- `u8-nhwc`: `--input u8-nhwc`, fed the frame as it is (the conversion runs in the graph);
- `dynamic`: `--dynamic-shape`, run at the same size as `static`, conversion included.

Measured in rounds that rotate the variants so that a drifting machine slows them alike; prints
each variant's median and its ratio to `static` (median of per-round ratios, with their range).

    .venv/bin/python benchmarks/export_variants.py CHECKPOINT [--size 640] [--rounds 7]

The exports go through the detcompress CLI (`export --to all --input-shape S S` plus each
variant's option), so CHECKPOINT is any checkpoint `export` takes, e.g. the demo's
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


VARIANTS = {"static": [], "u8-nhwc": ["--input", "u8-nhwc"], "dynamic": ["--dynamic-shape"]}


def runners(folder: Path, frame: np.ndarray) -> dict[str, dict[str, Callable[[], object]]]:
    """runtime -> variant -> one frame's inference, the client's conversion included."""
    import onnxruntime as ort
    import openvino as ov

    def as_input(variant: str) -> np.ndarray:
        if variant == "u8-nhwc":
            return frame[None]
        return np.ascontiguousarray(frame.transpose(2, 0, 1)[None], dtype=np.float32)

    core = ov.Core()
    requests = {
        v: core.compile_model(str(folder / v / "model.xml"), "CPU").create_infer_request()
        for v in VARIANTS
    }
    sessions = {v: ort.InferenceSession(str(folder / v / "model.onnx")) for v in VARIANTS}
    return {
        "openvino": {v: (lambda v=v: requests[v].infer({"image": as_input(v)})) for v in VARIANTS},
        "onnxruntime": {
            v: (lambda v=v: sessions[v].run(None, {"image": as_input(v)})) for v in VARIANTS
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
    with tempfile.TemporaryDirectory(prefix="export_variants_") as scratch:
        folder = Path(scratch)
        size = [str(args.size)] * 2
        for variant, extra in VARIANTS.items():
            detcompress("export", str(args.checkpoint), "--to", "all", "--input-shape", *size,
                        "--out", str(folder / variant), "--verify-images", "1", *extra)  # fmt: skip
        # A decoded frame at the input size (no resize: that is the same for every variant).
        frame = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), np.uint8)
        calls = runners(folder, frame)
        names = list(VARIANTS)
        times = {runtime: {v: [] for v in names} for runtime in calls}
        for round_index in range(args.rounds):
            shift = round_index % len(names)
            order = names[shift:] + names[:shift]
            for runtime, variants in calls.items():
                for variant in order:
                    times[runtime][variant].append(median_ms(variants[variant], args.seconds))
    print(f"\nbatch 1, {args.size}x{args.size}, {args.rounds} rounds; ms: median over rounds; "
          "ratio: median of per-round ratios to static (range)")  # fmt: skip
    for runtime, measured in times.items():
        for variant in names:
            ratios = [v / s for v, s in zip(measured[variant], measured["static"], strict=True)]
            print(
                f"{runtime:<12} {variant:<8} {statistics.median(measured[variant]):>8.2f} ms  "
                f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
            )


if __name__ == "__main__":
    main()
