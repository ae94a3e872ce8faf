"""Convolution work and multiply rates from `detcompress bench --layers` profiles (shared by
ssd300_int8_speed.py and int8_placement.py): whether an int8 IR's convolutions are as fast as
the CPU's int8 multiply rate allows, or lose elsewhere."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any


def convolution_macs(xml: Path) -> dict[str, int]:
    """Multiply-accumulates of each convolution of the IR (output elements x kernel volume)."""
    import numpy as np
    import openvino as ov

    macs = {}
    for node in ov.Core().read_model(xml).get_ordered_ops():
        if node.get_type_name() in ("Convolution", "GroupConvolution"):
            out = node.output(0).get_partial_shape().to_shape()
            weights = node.input(1).get_partial_shape().to_shape()
            per_output = (
                int(np.prod(weights[-3:])) if len(weights) == 5 else int(np.prod(weights[1:]))
            )
            macs[node.get_friendly_name()] = int(np.prod(out)) * per_output
    return macs


def convolution_rates(xml: Path, reference: dict[str, Any], result: dict[str, Any]) -> str:
    """One line: the convolutions' time in two bench results (the same network's IRs, profiled
    with `--layers` large enough to list every layer), their multiply rates and time ratio.
    Convolutions are matched by name: each IR's name for a convolution is its PyTorch module's."""
    macs = convolution_macs(xml)
    times = [
        {layer["name"]: layer["ms"] for layer in r["layers"]["top"]} for r in (reference, result)
    ]
    both = [name for name in macs if all(name in t for t in times)]
    if not both:
        return "convolutions: none found by name in both profiles"
    ms = [sum(t[name] for name in both) for t in times]
    giga = sum(macs[name] for name in both) / 1e9
    ratios = sorted(times[1][name] / times[0][name] for name in both)
    return (
        f"convolutions profiled in both ({len(both)}, {giga:.2f} GMAC): "
        f"{ms[0]:.2f} ms ({giga / ms[0] * 1e3:.0f} GMAC/s) -> {ms[1]:.2f} ms "
        f"({giga / ms[1] * 1e3:.0f} GMAC/s), ratio {ms[1] / ms[0]:.3f} (per convolution "
        f"{ratios[0]:.3f} ... {ratios[-1]:.3f}, median {statistics.median(ratios):.3f}); "
        f"everything else {reference['layers']['total_ms'] - ms[0]:.2f} -> "
        f"{result['layers']['total_ms'] - ms[1]:.2f} ms"
    )
