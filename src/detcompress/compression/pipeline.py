"""nncf_config (typed) -> a compressed detector. Algorithms run in the order that works:
pruning and sparsity first, quantization last (quantizers calibrate on the final weights)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from detcompress.errors import NotAvailableError
from detcompress.presets import NNCFConfig, Quantization

# NNCF compiles a C++ extension on first use (about 45 s on 2 cores), close to its 60 s limit.
os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "600")

# NNCF 2's defaults, in images.
DEFAULT_RANGE_INIT_SAMPLES = 256
DEFAULT_BN_ADAPTATION_SAMPLES = 2000
ORDER = {"filter_pruning": 0, "magnitude_sparsity": 1, "rb_sparsity": 1, "quantization": 2}


@dataclass
class CompressionReport:
    lines: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


def steps(
    given_steps: int | None, given_samples: int | None, default_samples: int, batch: int
) -> int:
    """Batches to use: the `*_steps` key counts batches, `*_samples` images."""
    if given_steps is not None:
        return given_steps
    return math.ceil((given_samples if given_samples is not None else default_samples) / batch)


def quantization_steps(algo: Quantization, batch_size: int) -> tuple[int, int]:
    """(range-init batches, BN-adaptation batches) of a quantization algorithm."""
    init = steps(algo.num_init_steps, algo.num_init_samples, DEFAULT_RANGE_INIT_SAMPLES, batch_size)
    bn = steps(
        algo.num_bn_adaptation_steps,
        algo.num_bn_adaptation_samples,
        DEFAULT_BN_ADAPTATION_SAMPLES,
        batch_size,
    )
    return init, bn


def calibration_batches_needed(nncf: NNCFConfig, batch_size: int) -> int:
    needed = [
        max(quantization_steps(algo, batch_size))
        for algo in nncf.algorithms
        if isinstance(algo, Quantization)
    ]
    return max([*needed, 1])


def compress_model(
    model: Any,
    nncf_config: NNCFConfig,
    batches: list[Any],
    to_inputs: Callable[[Any], Any],
    batch_size: int,
) -> tuple[Any, CompressionReport]:
    """Initialize compression on an uncompressed detector (calibration, BN adaptation)."""
    from detcompress.compression import nncf_adapter

    report = CompressionReport()
    for algo in sorted(nncf_config.algorithms, key=lambda a: ORDER[a.name]):
        if not isinstance(algo, Quantization):
            raise NotAvailableError(
                f"'{algo.name}' is not available yet in this version; 'quantization' is"
            )
        init_steps, bn_steps = quantization_steps(algo, batch_size)
        model, summary = nncf_adapter.quantize(
            model,
            algo,
            batches[:init_steps],
            to_inputs,
            bn_batches=batches[:bn_steps],
            target_device=nncf_config.target_device,
        )
        report.lines.append(
            f"quantization: range init on {init_steps} batches, BN adaptation on {bn_steps}"
        )
        report.lines.extend(summary.lines())
        report.data["quantization"] = summary.to_json()
    return model, report


def rebuild_model(model: Any, structure: dict[str, Any]) -> Any:
    """Recreate a compressed model's structure from its checkpoint (no re-initialization)."""
    from detcompress.compression import nncf_adapter

    return nncf_adapter.restore_structure(model, structure)


def model_structure(model: Any) -> dict[str, Any] | None:
    """The compression structure to store in a checkpoint, or None for a plain model."""
    from detcompress.compression import nncf_adapter

    return nncf_adapter.compression_structure(model) if nncf_adapter.is_compressed(model) else None
