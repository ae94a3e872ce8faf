"""nncf_config (typed) -> a compressed detector. Algorithms run in the order that works:
filter pruning first (it changes the architecture), then sparsity (masks on the final weights),
quantization last (quantizers calibrate on the pruned, masked weights).

The compression state that training changes travels with the model (`state.py`) and into every
checkpoint with the compression structure (`model_structure`). Each algorithm's settings are
read and checked in `config/algorithms.py` (and across algorithms in `settings.py`); the
statistics are counted in `statistics.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from detcompress.compression.scopes import match_scopes
from detcompress.compression.settings import (
    bn_adaptation_steps,
    progressive_pruning,
    quantization_steps,
)
from detcompress.compression.state import CompressionState, attach_state, state_of
from detcompress.compression.statistics import (
    device_of,
    filter_count,
    head_output_convs,
    size_counts,
    statistics,
    statistics_table,
)
from detcompress.config.algorithms import Algorithm, FilterPruning, Quantization, Sparsity
from detcompress.config.presets import NNCFConfig
from detcompress.errors import PresetError

ORDER = {"filter_pruning": 0, "magnitude_sparsity": 1, "rb_sparsity": 1, "quantization": 2}
STRUCTURE_FORMAT = 2


@dataclass
class CompressionReport:
    lines: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class PruningStep:
    filters_before: int
    filters_after: int
    # Convolutions feeding a GroupNorm left at their width: the step removes less than one
    # channel per group, and torch-pruning prunes the groups evenly.
    kept_for_groups: int = 0


def prune_to(model: Any, algo: FilterPruning, state: CompressionState, level: float) -> PruningStep:
    """Remove filters until `level` of the original filters are gone."""
    from detcompress.compression import torch_pruning_adapter as tpa

    current = state.pruning_level or 0.0
    if level <= current:
        count = filter_count(model)
        return PruningStep(count, count)
    convs = tpa.conv_names(model)
    matched, _ = match_scopes(algo.ignored_scopes, list(convs), submodules=True)
    keep = {name for names in matched.values() for name in names}
    ignored: list[nn.Module] = [convs[n] for n in sorted(keep)]
    ignored += head_output_convs(model) + two_stage_fixed_layers(model)
    first = tpa.first_conv(model)
    if first is not None and not algo.prune_first_conv:
        ignored.append(first)
    before = filter_count(model)
    # torch-pruning's ratio is of the model as it is: from `current` to `level` of the original.
    step_ratio = 1 - (1 - level) / (1 - current)
    narrow = tpa.too_narrow_per_group(model, step_ratio)
    ignored += narrow
    example = torch.zeros(state.input_shape, device=device_of(model))
    was_training = model.training
    model.eval()
    from detcompress.compression.schedules import PruningSchedule

    final = level >= PruningSchedule.of(algo).target
    tpa.prune_filters(
        model, example, step_ratio, algo.importance, ignored, algo.global_ranking, final
    )
    model.train(was_training)
    state.pruning_level = level
    return PruningStep(before, filter_count(model), len(narrow))


# ---------------------------------------------------------------------------------------------
# Initialization


def compress_model(
    model: Any,
    nncf_config: NNCFConfig,
    batches: list[Any],
    to_inputs: Callable[[Any], Any],
    batch_size: int,
) -> tuple[Any, CompressionReport]:
    """Initialize compression on an uncompressed detector (pruning, sparsity masks,
    calibration, BN adaptation)."""
    from detcompress.patches import nncf_extension_build_time

    nncf_extension_build_time()
    report = CompressionReport()
    example = to_inputs(batches[0])
    state = CompressionState(input_shape=[1, *example.shape[1:]])
    state.original = size_counts(model, state.input_shape)
    for algo in sorted(nncf_config.algorithms, key=lambda a: ORDER[a.name]):
        if isinstance(algo, Quantization):
            model = _quantize(model, algo, nncf_config, batches, to_inputs, batch_size, report)
        elif isinstance(algo, FilterPruning):
            _prune_filters(model, algo, nncf_config, state, report)
            _adapt_bn(model, algo, batches, to_inputs, batch_size, report)
        elif isinstance(algo, Sparsity):
            model = _sparsify(model, algo, state, example, report)
            _adapt_bn(model, algo, batches, to_inputs, batch_size, report)
    attach_state(model, state)
    report.data["statistics"] = statistics(model, nncf_config)
    report.lines.extend(statistics_table(report.data["statistics"]))
    return model, report


def _quantize(
    model: Any,
    algo: Quantization,
    nncf_config: NNCFConfig,
    batches: list[Any],
    to_inputs: Callable[[Any], Any],
    batch_size: int,
    report: CompressionReport,
) -> Any:
    from detcompress.compression import nncf_adapter

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
    return model


def _prune_filters(
    model: Any,
    algo: FilterPruning,
    nncf_config: NNCFConfig,
    state: CompressionState,
    report: CompressionReport,
) -> None:
    from detcompress.compression import torch_pruning_adapter as tpa
    from detcompress.compression.schedules import PruningSchedule

    schedule = PruningSchedule.of(algo)
    algo.check()
    two_stage_fixed_layers(model)  # refuses a two-stage detector it cannot prune
    _, unmatched = match_scopes(algo.ignored_scopes, list(tpa.conv_names(model)), submodules=True)
    for scope in unmatched:
        report.lines.append(
            f"warning: filter_pruning ignored scope '{scope}' matched no convolution; names "
            "look like 'backbone.stem.conv.conv' ({re}-prefixed scopes are regexes)"
        )
    progressive = progressive_pruning(nncf_config)
    level = schedule.level(0) if progressive else schedule.target
    state.pruning_level = 0.0
    step = prune_to(model, algo, state, level)
    how = (
        f"{schedule.kind} schedule to {schedule.target} by epoch {schedule.last_change_epoch}"
        if progressive
        else "straight to the target: the quantizers / masks are shaped after the filters"
    )
    report.lines.append(
        f"filter_pruning: {step.filters_before - step.filters_after} of {step.filters_before} "
        f"filters removed (level {level:.3f}; "
        f"{how}; importance {algo.importance}, head output convolutions kept)"
    )
    if step.kept_for_groups:
        report.lines.append(
            f"filter_pruning: {step.kept_for_groups} convolutions feeding a GroupNorm keep their "
            f"widths at level {level:.3f} (less than one channel of each group to remove; "
            "GroupNorm groups are pruned evenly)"
        )
    report.data["filter_pruning"] = {"initial_level": level, "progressive": progressive}


def two_stage_fixed_layers(model: Any) -> list[torch.nn.Module]:
    """What filter pruning leaves as it is in a two-stage detector: the FPN's output
    convolutions and the RoI head's linear layers. torch-pruning follows channels through
    autograd, and mmcv's RoIAlign hides the RoI head behind the FPN's outputs from it: it would
    prune those outputs without the RoI head's inputs. (Empty for a one-stage detector.)"""
    if hasattr(model, "bbox_head") or not hasattr(model, "roi_head"):
        return []
    from mmdet.models.necks import FPN

    neck = getattr(model, "neck", None)
    if not isinstance(neck, FPN):
        raise PresetError(
            f"filter_pruning: {type(model).__name__} is a two-stage detector with a "
            f"{type(neck).__name__} neck; its filters can be pruned with an FPN neck only (use "
            "int8 or magnitude_sparsity / rb_sparsity)"
        )
    fixed: list[nn.Module] = [
        m for conv in neck.fpn_convs for m in conv.modules() if isinstance(m, nn.Conv2d)
    ]
    return fixed + [m for m in model.roi_head.modules() if isinstance(m, nn.Linear)]


def _sparsify(
    model: Any,
    algo: Sparsity,
    state: CompressionState,
    example: torch.Tensor,
    report: CompressionReport,
) -> Any:
    from detcompress.compression import nncf_adapter
    from detcompress.compression.schedules import SparsitySchedule

    algo.check()
    schedule = SparsitySchedule.of(algo)
    level = schedule.level(0)
    model, summary = nncf_adapter.sparsify(model, algo, level, example)
    state.sparsity_level = level
    how = (
        "masks set by weight magnitude"
        if algo.name == "magnitude_sparsity"
        else ("masks trained by the RB loss towards the level")
    )
    report.lines.append(
        f"{algo.name}: {summary['masked_tensors']} weight tensors masked, level {level:.3f} "
        f"({schedule.kind} schedule to {schedule.target:.3f}; {how})"
    )
    report.lines.extend(summary["lines"])
    report.data[algo.name] = {k: v for k, v in summary.items() if k != "lines"}
    return model


def _adapt_bn(
    model: Any,
    algo: Algorithm,
    batches: list[Any],
    to_inputs: Callable[[Any], Any],
    batch_size: int,
    report: CompressionReport,
) -> None:
    count = bn_adaptation_steps(algo, batch_size)
    if count:
        from detcompress.compression import nncf_adapter

        nncf_adapter.adapt_batch_norm(model, batches[:count], to_inputs)
        report.lines.append(f"{algo.name}: BN adaptation on {count} batches")


# ---------------------------------------------------------------------------------------------
# Checkpoints


def model_structure(model: Any) -> dict[str, Any] | None:
    """The compression structure to store in a checkpoint, or None for a plain model."""
    state = state_of(model)
    from detcompress.compression import nncf_adapter

    nncf_structure = None
    if nncf_adapter.is_compressed(model):
        nncf_structure = nncf_adapter.compression_structure(model)
    if state is None and nncf_structure is None:
        return None
    pruned = None
    if state is not None and state.pruning_level is not None:
        from detcompress.compression import torch_pruning_adapter as tpa

        pruned = tpa.channel_counts(model)
    return {
        "format": STRUCTURE_FORMAT,
        "state": state.to_json() if state is not None else None,
        "pruned_channels": pruned,
        "nncf": nncf_structure,
    }


def rebuild_model(model: Any, structure: dict[str, Any], source: str = "checkpoint") -> Any:
    """Recreate a compressed model's structure from its checkpoint (no re-initialization):
    the pruned architecture, then NNCF's hooks; the caller loads the weights."""
    from detcompress.patches import nncf_extension_build_time

    nncf_extension_build_time()
    if "format" not in structure:  # checkpoints before pruning: NNCF's structure alone
        structure = {"nncf": structure, "state": None, "pruned_channels": None}
    state_data = structure.get("state")
    state = CompressionState(**state_data) if state_data else None
    if structure.get("pruned_channels"):
        from detcompress.compression import torch_pruning_adapter as tpa

        assert state is not None
        example = torch.zeros(state.input_shape, device=device_of(model))
        was_training = model.training
        model.eval()
        tpa.apply_channel_counts(model, structure["pruned_channels"], example, source)
        model.train(was_training)
    if structure.get("nncf"):
        from detcompress.compression import nncf_adapter

        model = nncf_adapter.restore_structure(model, structure["nncf"])
    if state is not None:
        attach_state(model, state)
    return model


def needs_nncf(structure: dict[str, Any]) -> bool:
    return "format" not in structure or bool(structure.get("nncf"))


def is_quantized(nncf_config_raw: dict[str, Any]) -> bool:
    """Whether a stored nncf_config quantizes (exports then run in int8)."""
    algos = nncf_config_raw.get("compression", [])
    algos = algos if isinstance(algos, list) else [algos]
    return any(isinstance(a, dict) and a.get("algorithm") == "quantization" for a in algos)
