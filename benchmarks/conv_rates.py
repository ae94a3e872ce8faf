"""Convolution work and multiply rates from `detcompress bench --layers` profiles (shared by
ssd300_int8_speed.py and int8_placement.py): whether an int8 IR's convolutions run as fast as
the CPU's int8 multiply rate allows, or lose elsewhere."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

Conv = tuple[str, int, str]  # runtime layer name, multiply-accumulates per image, output shape


def runtime_convolutions(xml: Path, f32: bool) -> list[Conv]:
    """The convolutions of the compiled model in execution order. Profile names are the runtime
    graph's (after OpenVINO fuses batch norms and activations into them), which differ between
    an FP32 and an int8 IR of the same network: hence compiled here, as `bench` compiled it."""
    import numpy as np

    from detcompress.deploy import openvino_backend

    compiled = openvino_backend.compile_model(xml, f32=f32)
    convs = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) not in openvino_backend.CONVOLUTIONS:
            continue
        out = op.get_output_partial_shape(0).to_shape()
        weights = op.input_value(1).get_partial_shape().to_shape()
        # [O, I, kh, kw], grouped [G, O/G, I/G, kh, kw]: I (per group) x kh x kw per output;
        # per image (out[0] is the compiled batch; the bench result says its own)
        macs = int(np.prod(out[1:])) * int(np.prod(weights[-3:]))
        convs.append((op.get_friendly_name(), macs, str(out), int(info["execOrder"].astype(str))))
    return [(name, macs, shape) for name, macs, shape, _ in sorted(convs, key=lambda c: c[3])]


def convolution_rates(
    reference_xml: Path, reference: dict[str, Any], xml: Path, result: dict[str, Any]
) -> str:
    """One line comparing the convolutions of two bench results of the same network (profiled
    with `--layers` large enough to list every layer): time, multiply rate, and the per-
    convolution time ratio (convolutions paired in execution order)."""
    sides = []
    for path, r in ((reference_xml, reference), (xml, result)):
        convs = runtime_convolutions(path, r.get("float_precision") == "f32")
        times = {layer["name"]: layer["ms"] for layer in r["layers"]["top"]}
        batch = r.get("batch", 1)  # MACs above are per image
        timed = [
            (name, macs * batch, shape, times[name]) for name, macs, shape in convs if name in times
        ]
        sides.append((timed, r["layers"]["total_ms"]))
    (ref, ref_total), (mine, my_total) = sides
    ms = [sum(c[3] for c in ref), sum(c[3] for c in mine)]
    giga = [sum(c[1] for c in ref) / 1e9, sum(c[1] for c in mine) / 1e9]
    line = (
        f"convolutions ({len(ref)} / {len(mine)} profiled, {giga[0]:.2f} GMAC): "
        f"{ms[0]:.2f} ms ({giga[0] / ms[0] * 1e3:.0f} GMAC/s) -> {ms[1]:.2f} ms "
        f"({giga[1] / ms[1] * 1e3:.0f} GMAC/s), ratio {ms[1] / ms[0]:.3f}"
    )
    if [c[2] for c in ref] == [c[2] for c in mine]:  # the same convolutions in the same order
        ratios = sorted(b[3] / a[3] for a, b in zip(ref, mine, strict=True))
        line += (
            f" (per convolution {ratios[0]:.3f} ... {ratios[-1]:.3f}, median "
            f"{statistics.median(ratios):.3f})"
        )
    return line + f"; everything else {ref_total - ms[0]:.2f} -> {my_total - ms[1]:.2f} ms"
