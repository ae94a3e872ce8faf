"""Every NNCF call of detcompress: nncf_config (typed) -> nncf.quantize / batch-norm adaptation,
compression structure to and from checkpoints, and the compression summary.

The detector is quantized in mmdet's `tensor` mode (backbone, neck and head outputs): NNCF traces
`model(images)` and inserts fake quantizers by operation name; the same names occur when the
Runner calls the model in `loss` and `predict` mode, so the quantizers act there too (see
`patches.route_head_through_module`, without which the head's names would differ).
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nncf
import torch
from nncf.common.quantization.structs import QuantizationPreset, QuantizationScheme
from nncf.quantization.advanced_parameters import (
    AdvancedQuantizationParameters,
    OverflowFix,
    QuantizationParameters,
)
from nncf.quantization.range_estimator import (
    RangeEstimatorParameters,
    RangeEstimatorParametersSet,
)
from nncf.torch.function_hook.wrapper import get_hook_storage

from detcompress.compression import speedups
from detcompress.compression.scopes import match_scopes
from detcompress.config.algorithms import (
    DEFAULT_MAX_PERCENTILE,
    DEFAULT_MIN_PERCENTILE,
    Quantization,
    QuantizerSettings,
    Sparsity,
)
from detcompress.errors import PresetError

# NNCF 2 range-init types -> NNCF 3 range estimators (None: NNCF's default for the preset).
RANGE_ESTIMATORS = {
    "min_max": RangeEstimatorParametersSet.MINMAX,
    "mean_min_max": RangeEstimatorParametersSet.MEAN_MINMAX,
    "percentile": RangeEstimatorParametersSet.MEAN_QUANTILE,
    "mean_percentile": RangeEstimatorParametersSet.MEAN_QUANTILE,
}


OPERATION_NAMES = (
    "operation names look like 'backbone/stem/conv/conv/conv2d/0' ({re}-prefixed scopes are "
    "regexes)"
)


@dataclass
class QuantizationSummary:
    weight_quantizers: int = 0
    activation_quantizers: int = 0
    ignored_matched: dict[str, list[str]] = field(default_factory=dict)
    ignored_unmatched: list[str] = field(default_factory=list)
    target_matched: dict[str, list[str]] = field(default_factory=dict)
    target_unmatched: list[str] = field(default_factory=list)
    float_normalization: dict[str, int] = field(default_factory=dict)  # layer kind -> ops

    def lines(self) -> list[str]:
        out = [
            f"quantizers: {self.weight_quantizers} on weights, "
            f"{self.activation_quantizers} on activations"
        ]
        if self.float_normalization:
            kinds = ", ".join(f"{n} {kind}" for kind, n in self.float_normalization.items())
            out.append(f"normalization arithmetic kept in float (operations): {kinds}")
        for kind, matched, unmatched in (
            ("ignored", self.ignored_matched, self.ignored_unmatched),
            ("target", self.target_matched, self.target_unmatched),
        ):
            for scope, nodes in matched.items():
                out.append(f"{kind} scope '{scope}' matched {len(nodes)} operations")
            for scope in unmatched:
                out.append(f"warning: {kind} scope '{scope}' matched nothing; {OPERATION_NAMES}")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "weight_quantizers": self.weight_quantizers,
            "activation_quantizers": self.activation_quantizers,
            "ignored_matched": {k: len(v) for k, v in self.ignored_matched.items()},
            "ignored_unmatched": list(self.ignored_unmatched),
            "target_matched": {k: len(v) for k, v in self.target_matched.items()},
            "target_unmatched": list(self.target_unmatched),
            "float_normalization": dict(self.float_normalization),
        }


def graph_nodes(model: torch.nn.Module, example_input: torch.Tensor) -> list[tuple[str, str]]:
    """(name, type) of the traced model's operations, named as `ignored_scopes` must spell
    them: no inputs, outputs or constants (`nncf_model_*` nodes), nor operations inside NNCF's
    own hook modules (sparsity masks applied before quantization), which scopes must not count
    as matches."""
    graph = nncf.build_graph(model, example_input=example_input)
    return [
        (node.node_name, node.node_type)
        for node in graph.get_all_nodes()
        if not node.node_type.startswith("nncf_model_")
        and "pre_hook__" not in node.node_name
        and "post_hook__" not in node.node_name
    ]


def graph_node_names(model: torch.nn.Module, example_input: torch.Tensor) -> list[str]:
    return [name for name, _ in graph_nodes(model, example_input)]


# Normalization arithmetic stays in float (not quantized), whatever the preset says:
# - GroupNorm (FCOS and ATSS heads): with weights.per_channel, NNCF 3.4 gives GN's affine weight
#   a per-channel quantizer but collects per-tensor statistics for it, and range initialization
#   crashes ("shape '[256]' is invalid for input of size 1"); NNCF's own CPU/GPU presets keep
#   normalization statistics in float as well.
# - mmdet's L2Norm (SSD300's neck): int8 rounds small sums of squares to 0 and `x / norm`
#   becomes inf/NaN from the first QAT iteration.
FLOAT_OPERATION_TYPES = ("group_norm",)


def float_normalization(
    model: torch.nn.Module, nodes: list[tuple[str, str]]
) -> dict[str, list[str]]:
    """The operations of the normalization layers kept in float, by layer kind."""
    from mmdet.models.necks.ssd_neck import L2Norm

    prefixes = tuple(
        name.replace(".", "/") + "/"
        for name, module in model.named_modules()
        if isinstance(module, L2Norm) and name
    )
    found = {
        "GroupNorm": [name for name, kind in nodes if kind in FLOAT_OPERATION_TYPES],
        "L2Norm": [name for name, _ in nodes if prefixes and name.startswith(prefixes)],
    }
    return {kind: names for kind, names in found.items() if names}


def quantization_parameters(settings: QuantizerSettings) -> QuantizationParameters:
    mode = {"symmetric": QuantizationScheme.SYMMETRIC, "asymmetric": QuantizationScheme.ASYMMETRIC}
    return QuantizationParameters(
        num_bits=settings.bits,
        mode=mode.get(settings.mode) if settings.mode else None,
        per_channel=settings.per_channel,
        signedness_to_force=settings.signed,
    )


def range_estimator(algo: Quantization) -> Any:
    """NNCF 3's range estimator for the preset's `initializer.range` (None: NNCF's default).
    Percentile ranges take `params.min_percentile` / `max_percentile` (percent, NNCF 2's
    meaning) as the outlier probabilities of the low and high quantiles."""
    estimator = RANGE_ESTIMATORS.get(algo.range_type or "")
    if estimator is None or algo.range_type not in ("percentile", "mean_percentile"):
        return estimator
    low = DEFAULT_MIN_PERCENTILE if algo.min_percentile is None else algo.min_percentile
    high = DEFAULT_MAX_PERCENTILE if algo.max_percentile is None else algo.max_percentile
    return RangeEstimatorParameters(
        min=dataclasses.replace(estimator.min, quantile_outlier_prob=low / 100),
        max=dataclasses.replace(estimator.max, quantile_outlier_prob=1 - high / 100),
    )


# Operation types that only a module's forward calls (with its weight).
_WEIGHTED_OPERATIONS = {"conv1d", "conv2d", "conv3d", "conv_transpose2d", "linear"}


def _unstable_operations(nodes: list[tuple[str, str]]) -> list[str]:
    """Operations outside every module whose name may denote another operation in training.

    NNCF names an operation called outside a module (a two-stage detector's proposal decoding,
    NMS and RoI bookkeeping between its stages) by its call order at the top scope, and `loss`
    mode makes different such calls than the traced `tensor` mode: a quantizer placed on one
    would run on another operation in training (Faster R-CNN: on the boolean `&` of the anchor
    flags). Weighted operations stay: only their module calls them, in the same order in every
    mode (Faster R-CNN's shared FCs, which NNCF names at the top scope)."""
    return [n for n, kind in nodes if n.startswith("/") and kind not in _WEIGHTED_OPERATIONS]


def quantize(
    detector: torch.nn.Module,
    algo: Quantization,
    batches: list[Any],
    to_inputs: Callable[[Any], torch.Tensor],
    bn_batches: list[Any],
    target_device: str = "ANY",
) -> tuple[torch.nn.Module, QuantizationSummary]:
    """nncf.quantize with range initialization on `batches`, then batch-norm adaptation on
    `bn_batches` (none: no adaptation). Returns the quantized model (a copy)."""
    speedups.use_fused_cpu_kernels()
    dataset = nncf.Dataset(batches, to_inputs)
    example = to_inputs(batches[0])
    nodes = graph_nodes(detector, example)
    names = [name for name, _ in nodes]
    ignored = list(algo.ignored_scopes) + list(algo.activations_ignored_scopes)
    matched, unmatched = match_scopes(ignored, names)
    in_float = float_normalization(detector, nodes)
    summary = QuantizationSummary(
        ignored_matched=matched,
        ignored_unmatched=unmatched,
        float_normalization={kind: len(ops) for kind, ops in in_float.items()},
    )
    ignored_names = {n for hits in matched.values() for n in hits}
    ignored_names |= {n for ops in in_float.values() for n in ops}
    ignored_names |= set(_unstable_operations(nodes))
    if algo.target_scopes:
        # NNCF 3 has no target scope: every operation outside the targets is ignored instead.
        targets, target_unmatched = match_scopes(algo.target_scopes, names)
        if not targets:
            raise PresetError(
                f"quantization target_scopes {list(algo.target_scopes)} matched no operation; "
                + OPERATION_NAMES
            )
        summary.target_matched, summary.target_unmatched = targets, target_unmatched
        targeted = {n for hits in targets.values() for n in hits}
        ignored_names |= set(names) - targeted
    ignored_scope = nncf.IgnoredScope(names=sorted(ignored_names), validate=False)
    advanced = AdvancedQuantizationParameters(
        weights_quantization_params=quantization_parameters(algo.weights),
        activations_quantization_params=quantization_parameters(algo.activations),
        overflow_fix=OverflowFix(algo.overflow_fix) if algo.overflow_fix is not None else None,
    )
    estimator = range_estimator(algo)
    if estimator is not None:
        advanced.activations_range_estimator_params = estimator
    quantized = nncf.quantize(
        detector,
        dataset,
        preset=QuantizationPreset(algo.preset),
        target_device=nncf.TargetDevice[target_device],
        subset_size=len(batches),
        ignored_scope=ignored_scope,
        advanced_parameters=advanced,
    )
    if bn_batches:
        quantized = nncf.batch_norm_adaptation(
            quantized, nncf.Dataset(bn_batches, to_inputs), num_iterations=len(bn_batches)
        )
    weights, activations = count_quantizers(quantized)
    summary.weight_quantizers, summary.activation_quantizers = weights, activations
    return quantized, summary


def quantizer_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(hook name, quantizer) for every fake quantizer NNCF inserted."""
    from nncf.torch.quantization.layers import BaseQuantizer

    storage = get_hook_storage(model)
    return [
        (n, m)
        for n, m in storage.named_hooks(remove_duplicate=False)
        if isinstance(m, BaseQuantizer)
    ]


# Hook names are '<pre|post>_hooks.<operation>__<port>.<index>' (an operation's name ends with
# '<function>/<call>'); weights enter a convolution or linear layer through port 1 and are
# quantized by a pre-hook there, activations everywhere else (also a pre-hook on port 1 of an
# `add`, which NNCF places when one input of a residual add is not quantized elsewhere).
_WEIGHT_HOOK = re.compile(
    r"^pre_hooks\..*/(" + "|".join(sorted(_WEIGHTED_OPERATIONS)) + r")/\d+__[1-9]\d*\.\d+$"
)
_HOOK_NAME = re.compile(r"^(pre|post)_hooks\.(.*)__(\d+)\.\d+$")


def count_quantizers(model: torch.nn.Module) -> tuple[int, int]:
    """(weight quantizers, activation quantizers), each shared quantizer counted once."""
    weights = activations = 0
    seen: set[int] = set()
    for name, module in quantizer_modules(model):
        if id(module) in seen:
            continue
        seen.add(id(module))
        if _WEIGHT_HOOK.match(name):
            weights += 1
        else:
            activations += 1
    return weights, activations


def enable_quantizers(model: torch.nn.Module, weights: bool, activations: bool) -> None:
    """Switch weight and activation quantizers on or off (NNCF's `enabled` flag, a buffer of
    each quantizer: checkpoints keep it); ranges stay as calibrated."""
    from nncf.torch.quantization.layers import BaseQuantizer

    for name, module in quantizer_modules(model):
        assert isinstance(module, BaseQuantizer)  # quantizer_modules returns only those
        wanted = weights if _WEIGHT_HOOK.match(name) else activations
        if module.is_enabled_quantization() != wanted:
            if wanted:
                module.enable_quantization()
            else:
                module.disable_quantization()


@dataclass
class QuantizerGroup:
    """Quantizers that go together: the operations whose inputs or weights they quantize, closed
    under sharing (a quantizer on a producer's output serves all its consumers; concat inputs
    share one). Keeping the group in float = these operations in `ignored_scopes`."""

    operations: list[str]
    hooks: list[str]
    modules: list[Any] = field(repr=False)  # NNCF's BaseQuantizer

    @property
    def weight_quantizers(self) -> int:
        return sum(1 for name in self.hooks if _WEIGHT_HOOK.match(name))

    @property
    def quantizers(self) -> int:  # a quantizer shared by several operations counts once
        return len(self.modules)

    def set_enabled(self, enabled: bool) -> None:
        for module in self.modules:
            if enabled:
                module.enable_quantization()
            else:
                module.disable_quantization()


# Operations whose inputs NNCF quantizes for their own sake (besides the weighted ones): a
# quantizer that reaches one of them serves it, not the operations after it. (Measured on YOLOX:
# with the convolutions after a residual `add` ignored, the add's inputs stay quantized.)
_QUANTIZED_INPUT_OPERATIONS = _WEIGHTED_OPERATIONS | {"add", "sub", "matmul", "bmm"}
# Operations that pass a quantized input on (NNCF moves their input quantizer to their output);
# with their consumers in float, NNCF quantizes their input again (YOLOX's neck upsampling, seen
# as a new quantizer on the interpolate's input): they belong to the group they feed.
_PASSING_QUANTIZED_OPERATIONS = {
    "interpolate", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d",
}  # fmt: skip


def quantizer_groups(
    quantized: torch.nn.Module, original: torch.nn.Module, example_input: torch.Tensor
) -> list[QuantizerGroup]:
    """The quantized model's quantizers grouped by the operations they serve, found on the
    graph of the original (float) model: a pre-hook serves its own operation; a post-hook on an
    operation's output serves the operations with quantized inputs (convolutions, linear
    layers, residual adds) that output reaches through the others (activations, pooling, concat,
    upsampling)."""
    graph = nncf.build_graph(original, example_input=example_input)
    nodes = {node.node_name: node for node in graph.get_all_nodes()}

    def served_by_output(name: str) -> set[str]:
        found = {name} if nodes[name].node_type in _PASSING_QUANTIZED_OPERATIONS else set()
        stack, seen = [nodes[name]], {name}
        while stack:
            for successor in graph.get_next_nodes(stack.pop()):
                if successor.node_name in seen:
                    continue
                seen.add(successor.node_name)
                if successor.node_type in _QUANTIZED_INPUT_OPERATIONS:
                    found.add(successor.node_name)
                    continue
                if successor.node_type in _PASSING_QUANTIZED_OPERATIONS:
                    found.add(successor.node_name)
                stack.append(successor)
        return found

    # Union-find over quantizers ("q", id) and operations ("o", name).
    parent: dict[tuple[str, Any], tuple[str, Any]] = {}

    def root(key: tuple[str, Any]) -> tuple[str, Any]:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    modules: dict[int, torch.nn.Module] = {}
    hooks: dict[int, list[str]] = {}
    for hook, module in quantizer_modules(quantized):
        match = _HOOK_NAME.match(hook)
        if match is None or match.group(2) not in nodes:
            continue
        kind, operation = match.group(1), match.group(2)
        served = {operation} if kind == "pre" else served_by_output(operation)
        modules[id(module)] = module
        hooks.setdefault(id(module), []).append(hook)
        root(("q", id(module)))
        for name in served:
            parent[root(("q", id(module)))] = root(("o", name))
    members: dict[tuple[str, Any], list[int]] = {}
    for key in modules:
        members.setdefault(root(("q", key)), []).append(key)
    operations: dict[tuple[str, Any], list[str]] = {}
    for node in list(parent):
        if node[0] == "o":
            operations.setdefault(root(node), []).append(node[1])
    groups = [
        QuantizerGroup(
            operations=sorted(operations.get(group_root, [])),
            hooks=sorted(h for key in keys for h in hooks[key]),
            modules=[modules[key] for key in keys],
        )
        for group_root, keys in members.items()
    ]
    # Quantizers that serve no operation (only the model's outputs) cannot be named in
    # ignored_scopes; they stay as they are.
    return [group for group in groups if group.operations]


def is_compressed(model: torch.nn.Module) -> bool:
    """Whether NNCF put anything into the model (quantizers or sparsity masks)."""
    from nncf.torch.function_hook.wrapper import is_wrapped

    return is_wrapped(model) and bool(quantizer_modules(model) or sparsity_masks(model))


# ---------------------------------------------------------------------------------------------
# Magnitude sparsity


def _prune_mode(algo: Sparsity) -> Any:
    from nncf.parameters import PruneMode

    # global+abs is refused by Sparsity.check (NNCF 3 ranks |w| / ||w||).
    mode = algo.level_setting_mode
    return (
        PruneMode.UNSTRUCTURED_MAGNITUDE_GLOBAL
        if mode == "global"
        else PruneMode.UNSTRUCTURED_MAGNITUDE_LOCAL
    )


def sparsify(
    model: torch.nn.Module, algo: Sparsity, level: float, example_input: torch.Tensor
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Sparsity masks on every convolution / linear weight not in ignored_scopes (in place):
    magnitude masks set to `level`, or regularization-based masks (all kept at first; the
    RB loss then trains them towards the schedule's level)."""
    mode = _prune_mode(algo) if algo.name == "magnitude_sparsity" else None
    names = graph_node_names(model, example_input)
    matched, unmatched = match_scopes(algo.ignored_scopes, names)
    ignored = nncf.IgnoredScope(
        names=sorted({n for hits in matched.values() for n in hits}), validate=False
    )
    if mode is None:
        from nncf.parameters import PruneMode

        model = nncf.prune(
            model,
            mode=PruneMode.UNSTRUCTURED_REGULARIZATION_BASED,
            ignored_scope=ignored,
            examples_inputs=example_input,
        )
    else:
        model = nncf.prune(
            model,
            mode=mode,
            ratio=max(level, 0.0),
            ignored_scope=ignored,
            examples_inputs=example_input,
        )
        set_sparsity_level(model, algo, level)
    lines = [f"ignored scope '{s}' matched {len(h)} operations" for s, h in matched.items()]
    lines += [f"warning: ignored scope '{s}' matched nothing; {OPERATION_NAMES}" for s in unmatched]
    stats = sparsity_statistics(model)
    return model, {**stats, "ignored_unmatched": unmatched, "lines": lines}


def sparsity_masks(model: torch.nn.Module) -> dict[str, Any]:
    """Weight name -> its sparsity mask module (magnitude or regularization-based)."""
    from nncf.torch.function_hook.pruning.magnitude.algo import get_pruned_modules
    from nncf.torch.function_hook.pruning.rb.algo import get_pruned_modules as get_rb_modules

    return {**get_pruned_modules(model), **get_rb_modules(model)}


def _binary_mask(module: Any) -> torch.Tensor:
    """The 0/1 mask a mask module applies at inference."""
    from nncf.torch.function_hook.pruning.rb.modules import RBPruningMask, binary_mask

    if isinstance(module, RBPruningMask):
        return binary_mask(module.mask).bool()
    return module.binary_mask


class RBSparsityLoss:
    """NNCF's regularization-based sparsity loss with a target that the schedule moves:
    ((kept fraction - (1 - target)) / p) ** 2, on the masks' straight-through estimates."""

    def __init__(self, model: torch.nn.Module, target: float) -> None:
        from nncf.torch.function_hook.pruning.rb.losses import RBLoss

        # Not a submodule of the model (RBLoss holds the model: a cycle).
        self._loss = RBLoss(model, target_ratio=target)

    @property
    def target(self) -> float:
        return float(self._loss.target_ratio)

    @target.setter
    def target(self, value: float) -> None:
        self._loss.target_ratio = value

    def __call__(self) -> torch.Tensor:
        return self._loss()


@torch.no_grad()
def set_sparsity_level(model: torch.nn.Module, algo: Sparsity, level: float) -> None:
    """Recompute the masks from the current weights for `level` (0: nothing masked)."""
    from nncf.torch.function_hook.pruning.magnitude.algo import update_pruning_ratio

    if level <= 0:
        for mask in sparsity_masks(model).values():
            mask.binary_mask.fill_(True)
        return
    update_pruning_ratio(model, _prune_mode(algo), level)


@torch.no_grad()
def sparsity_statistics(model: torch.nn.Module) -> dict[str, Any]:
    """Measured sparsity: the fraction of masked-off weights among the masked tensors."""
    masks = [_binary_mask(m) for m in sparsity_masks(model).values()]
    total = sum(m.numel() for m in masks)
    zeros = sum(int((~m).sum()) for m in masks)
    return {
        "masked_tensors": len(masks),
        "masked_weights": total,
        "masked_sparsity": round(zeros / total, 6) if total else 0.0,
    }


def adapt_batch_norm(
    model: torch.nn.Module, batches: list[Any], to_inputs: Callable[[Any], torch.Tensor]
) -> torch.nn.Module:
    """Batch-norm statistics re-estimated on `batches` (after filters or weights changed)."""
    return nncf.batch_norm_adaptation(
        model, nncf.Dataset(batches, to_inputs), num_iterations=len(batches)
    )


# ---------------------------------------------------------------------------------------------
# Compression structure <-> checkpoint (plain types, so checkpoints load with weights_only=True)

_ENUM_MARK = "__enum__"


def _encode(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        cls = type(value)
        return {_ENUM_MARK: f"{cls.__module__}:{cls.__qualname__}", "value": value.value}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and _ENUM_MARK in value:
        module, _, qualname = value[_ENUM_MARK].partition(":")
        if not module.startswith("nncf."):  # only NNCF's own enums are rebuilt
            raise ValueError(f"refusing to rebuild {value[_ENUM_MARK]} from a checkpoint")
        cls: Any = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        return cls(value["value"])
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def compression_structure(model: torch.nn.Module) -> dict[str, Any]:
    """nncf.torch.get_config in plain types."""
    return _encode(nncf.torch.get_config(model))


def restore_structure(model: torch.nn.Module, structure: dict[str, Any]) -> torch.nn.Module:
    """Rebuild the compressed model's structure (quantizers in place, untrained values)."""
    speedups.use_fused_cpu_kernels()
    return nncf.torch.load_from_config(model, _decode(structure))


# ---------------------------------------------------------------------------------------------
# Export


def strip_for_export(model: torch.nn.Module, example_input: torch.Tensor) -> torch.nn.Module:
    """A copy with NNCF's quantizers replaced by torch's own fake quantizers, which OpenVINO
    converts to FakeQuantize and torch's ONNX exporter to QuantizeLinear/DequantizeLinear.

    NNCF 3.4's `strip` walks the hooks with duplicates removed, so a quantizer shared by several
    operations (unified scales, e.g. before a concat) is replaced at one of them only and stays
    NNCF's own elsewhere (exported as a custom op onnxruntime cannot run): replace the rest here,
    keeping them shared."""
    from nncf.torch.quantization.layers import BaseQuantizer
    from nncf.torch.quantization.strip import convert_to_torch_fakequantizer

    stripped = nncf.strip(model, example_input=example_input)
    storage = get_hook_storage(stripped)
    converted: dict[int, torch.nn.Module] = {}
    for name, module in list(storage.named_hooks(remove_duplicate=False)):
        if isinstance(module, BaseQuantizer):
            if id(module) not in converted:
                converted[id(module)] = convert_to_torch_fakequantizer(module)
            storage.set_submodule(name, converted[id(module)])
    return stripped
