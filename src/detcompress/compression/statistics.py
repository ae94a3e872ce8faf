"""Compression statistics: sparsity (current, target, measured), pruning (filters, params and
MACs against the original) and quantizer counts, as data and as a table for the log. Sizes are
counted with plain torch, so they work on NNCF-wrapped models as well."""

from __future__ import annotations

import math
from typing import Any

import torch

from detcompress.compression.state import state_of
from detcompress.config.algorithms import SPARSITY_ALGORITHMS
from detcompress.config.presets import NNCFConfig


def device_of(model: Any) -> torch.device:
    return next(model.parameters()).device


def head_output_convs(model: Any) -> list[torch.nn.Conv2d]:
    """The head's final class / box / objectness convolutions: the plain `nn.Conv2d`s of
    `bbox_head` (a two-stage detector's `rpn_head`) that are not inside a ConvModule (pruning
    them would change the class count or the box encoding)."""
    from mmcv.cnn import ConvModule
    from torch import nn

    # A two-stage detector's dense head is its RPN (its RoI head ends in linear layers).
    head = getattr(model, "bbox_head", None) or getattr(model, "rpn_head", None)
    if head is None:
        return []
    inside_conv_module = {
        id(conv)
        for module in head.modules()
        if isinstance(module, ConvModule)
        for conv in module.modules()
        if isinstance(conv, nn.Conv2d)
    }
    return [
        m for m in head.modules() if isinstance(m, nn.Conv2d) and id(m) not in inside_conv_module
    ]


def filter_count(model: Any) -> int:
    """Output channels of all convolutions except the head's output layers."""
    from torch import nn

    head_outputs = {id(m) for m in head_output_convs(model)}
    return sum(
        m.out_channels
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and id(m) not in head_outputs
    )


def weight_params(model: Any) -> int:
    """Parameters of the network itself (NNCF's quantizer and mask parameters excluded)."""
    return sum(p.numel() for n, p in model.named_parameters() if "__nncf_hooks" not in n)


@torch.no_grad()
def count_macs(model: Any, input_shape: list[int]) -> int:
    """Multiply-accumulates of one `tensor`-mode forward (convolutions and linear layers)."""
    from torch import nn

    total = 0

    def conv_hook(module: Any, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        kernel = math.prod(module.kernel_size) * module.in_channels // module.groups
        total += output.numel() * kernel

    def linear_hook(module: Any, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(input_shape, device=device_of(model)), mode="tensor")
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


def size_counts(model: Any, input_shape: list[int]) -> dict[str, int]:
    return {
        "params": weight_params(model),
        "macs": count_macs(model, input_shape),
        "filters": filter_count(model),
    }


def statistics(model: Any, nncf_config: NNCFConfig) -> dict[str, Any]:
    """Compression statistics: sparsity (current, target, measured), pruning (filters, params,
    MACs against the original), quantizer counts."""
    state = state_of(model)
    stats: dict[str, Any] = {}
    if state is None:
        return stats
    algo = nncf_config.filter_pruning
    if algo is not None and state.original:
        from detcompress.compression.schedules import PruningSchedule

        now = size_counts(model, state.input_shape)
        stats["filter_pruning"] = {
            "level": state.pruning_level,
            "target": PruningSchedule.of(algo).target,
            **now,
            **{f"original_{k}": v for k, v in state.original.items()},
            **{
                f"{k}_ratio": round(now[k] / state.original[k], 4)
                for k in now
                if state.original.get(k)
            },
        }
    sparsity = nncf_config.sparsity
    if sparsity is not None:
        from detcompress.compression import nncf_adapter
        from detcompress.compression.schedules import SparsitySchedule

        measured = nncf_adapter.sparsity_statistics(model)
        stats[sparsity.name] = {
            "level": state.sparsity_level,
            "target": SparsitySchedule.of(sparsity).target,
            **measured,
        }
    if nncf_config.algorithm("quantization") is not None:
        from detcompress.compression import nncf_adapter

        weights, activations = nncf_adapter.count_quantizers(model)
        stats["quantization"] = {
            "weight_quantizers": weights,
            "activation_quantizers": activations,
        }
    return stats


def statistics_table(stats: dict[str, Any]) -> list[str]:
    """The statistics as aligned text lines, for the training log."""
    rows: list[tuple[str, str]] = []
    pruning = stats.get("filter_pruning")
    if pruning:
        rows += [
            ("pruning level / target", f"{pruning['level']:.3f} / {pruning['target']:.3f}"),
            (
                "filters",
                f"{pruning['filters']} of {pruning['original_filters']} "
                f"({pruning.get('filters_ratio', 1):.3f})",
            ),
            (
                "params",
                f"{pruning['params']:,} of {pruning['original_params']:,} "
                f"({pruning.get('params_ratio', 1):.3f})",
            ),
            (
                "MACs",
                f"{pruning['macs']:,} of {pruning['original_macs']:,} "
                f"({pruning.get('macs_ratio', 1):.3f})",
            ),
        ]
    for name in SPARSITY_ALGORITHMS:
        sparsity = stats.get(name)
        if sparsity:
            level = sparsity["level"]
            rows += [
                (
                    "sparsity level / target",
                    f"{level if level is not None else float('nan'):.3f} / "
                    f"{sparsity['target']:.3f}",
                ),
                (
                    "sparsity measured",
                    f"{sparsity['masked_sparsity']:.4f} of {sparsity['masked_weights']:,} masked "
                    f"weights in {sparsity['masked_tensors']} tensors",
                ),
            ]
    quant = stats.get("quantization")
    if quant:
        rows.append(
            (
                "quantizers",
                f"{quant['weight_quantizers']} on weights, "
                f"{quant['activation_quantizers']} on activations",
            )
        )
    if not rows:
        return []
    width = max(len(k) for k, _ in rows)
    return ["compression statistics:"] + [f"  {k.ljust(width)}  {v}" for k, v in rows]
