"""nncf_config (typed) -> a compressed detector. Algorithms run in the order that works:
filter pruning first (it changes the architecture), then sparsity (masks on the final weights),
quantization last (quantizers calibrate on the pruned, masked weights).

The compression state that training changes (the current sparsity and pruning levels, the
original size for the statistics) travels with the model as `CompressionState`, and into every
checkpoint with the compression structure (`model_structure`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from detcompress.compression.scopes import match_scopes
from detcompress.config.presets import Algorithm, NNCFConfig, Quantization
from detcompress.errors import DetcompressError, PresetError

# NNCF 2's defaults, in images.
DEFAULT_RANGE_INIT_SAMPLES = 256
DEFAULT_BN_ADAPTATION_SAMPLES = 2000
ORDER = {"filter_pruning": 0, "magnitude_sparsity": 1, "rb_sparsity": 1, "quantization": 2}
SPARSITY_ALGORITHMS = ("magnitude_sparsity", "rb_sparsity")
STRUCTURE_FORMAT = 2
STATE_ATTRIBUTE = "_detcompress_compression"


@dataclass
class CompressionReport:
    lines: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class CompressionState:
    """What training changes besides weights, kept on the model and in checkpoints."""

    input_shape: list[int]
    sparsity_level: float | None = None
    pruning_level: float | None = None
    original: dict[str, int] = field(default_factory=dict)  # params, macs, filters

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def state_of(model: Any) -> CompressionState | None:
    state = getattr(model, STATE_ATTRIBUTE, None)
    return state if isinstance(state, CompressionState) else None


def _attach(model: Any, state: CompressionState) -> None:
    object.__setattr__(model, STATE_ATTRIBUTE, state)


# ---------------------------------------------------------------------------------------------
# Dependencies


def require_packages(nncf_config: NNCFConfig) -> None:
    """One clear error for each missing package the nncf_config needs."""
    from detcompress.compression import require_nncf

    require_nncf()  # filter pruning too: BN adaptation and the statistics go through it
    if nncf_config.algorithm("filter_pruning") is not None:
        try:
            import torch_pruning  # noqa: F401
        except ImportError as exc:
            raise DetcompressError(
                "the nncf_config asks for filter_pruning, which needs torch-pruning; run "
                "`make install` (it installs torch-pruning==1.6.1)"
            ) from exc


def check_distributed(nncf_config: NNCFConfig, world_size: int) -> None:
    """Filters removed during training change parameter shapes, which DDP cannot follow."""
    from detcompress.compression.schedules import PruningSchedule

    algo = nncf_config.algorithm("filter_pruning")
    if (
        world_size > 1
        and algo is not None
        and progressive_pruning(nncf_config)
        and PruningSchedule.of(algo).last_change_epoch > 0
    ):
        raise PresetError(
            "filter_pruning with a schedule that removes filters during training runs in "
            "one process only (DDP cannot follow parameters that change shape); use "
            "params.schedule 'baseline' with num_init_steps 0 (prune at once), or "
            "--launcher none"
        )


def check_sparsity_settings(algo: Algorithm) -> None:
    """What NNCF 3's sparsity cannot do (checked again where the masks are created, for
    library callers that skip `check_settings`)."""
    if algo.target_scopes:
        raise PresetError(
            f"'{algo.name}': target_scopes is not supported with NNCF 3; list what to "
            "leave dense in ignored_scopes"
        )
    if algo.name == "magnitude_sparsity" and (
        algo.get("params.sparsity_level_setting_mode", "global") == "global"
        and algo.get("params.weight_importance") == "abs"
    ):
        raise PresetError(
            "'magnitude_sparsity': params.weight_importance 'abs' with global level "
            "setting is not available in NNCF 3 (it ranks |w| / ||w|| globally); valid: "
            "normed_abs, or sparsity_level_setting_mode 'local'"
        )


# NNCF 2 keys that NNCF 3's IgnoredScope (per operation, not per quantizer) cannot express.
QUANTIZER_SCOPES_NOT_IN_NNCF3 = (
    "weights.ignored_scopes",
    "weights.target_scopes",
    "activations.target_scopes",
)


def check_settings(nncf_config: NNCFConfig) -> None:
    """Refuse settings detcompress cannot carry out before anything heavy runs."""
    from detcompress.compression.schedules import PruningSchedule, SparsitySchedule

    for algo in nncf_config.algorithms:
        if algo.name == "quantization":
            low = algo.get("initializer.range.params.min_percentile")
            high = algo.get("initializer.range.params.max_percentile")
            if low is not None and high is not None and not low < high:
                raise PresetError(
                    f"'quantization': initializer.range.params.min_percentile ({low}) must be "
                    f"below max_percentile ({high})"
                )
            for key in QUANTIZER_SCOPES_NOT_IN_NNCF3:
                if algo.get(key):
                    raise PresetError(
                        f"'quantization': {key} is not supported with NNCF 3, whose ignored "
                        "scope removes every quantizer of an operation (its weights and "
                        "inputs alike); valid: ignored_scopes / target_scopes of the algorithm "
                        "(activations.ignored_scopes acts the same as ignored_scopes)"
                    )
        elif algo.name == "filter_pruning":
            PruningSchedule.of(algo)
            PruningSettings.of(algo)
        elif algo.name in SPARSITY_ALGORITHMS:
            SparsitySchedule.of(algo)
            check_sparsity_settings(algo)
            if algo.name == "rb_sparsity" and algo.get("params.sparsity_freeze_epoch") is not None:
                raise PresetError(
                    "'rb_sparsity': params.sparsity_freeze_epoch is not supported (NNCF 3's RB "
                    "masks keep training); leave it out"
                )
    compression_lr_multiplier(nncf_config)


# ---------------------------------------------------------------------------------------------
# Calibration batches


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


def bn_adaptation_steps(algo: Algorithm, batch_size: int) -> int:
    """BN-adaptation batches of a pruning or sparsity algorithm (none unless configured)."""
    bn = algo.get("initializer.batchnorm_adaptation", {}) or {}
    if not bn:
        return 0
    return steps(
        bn.get("num_bn_adaptation_steps"),
        bn.get("num_bn_adaptation_samples"),
        DEFAULT_BN_ADAPTATION_SAMPLES,
        batch_size,
    )


def calibration_batches_needed(nncf: NNCFConfig, batch_size: int) -> int:
    needed = [
        max(quantization_steps(algo, batch_size))
        if isinstance(algo, Quantization)
        else bn_adaptation_steps(algo, batch_size)
        for algo in nncf.algorithms
    ]
    return max([*needed, 1])


# ---------------------------------------------------------------------------------------------
# Filter pruning settings


@dataclass(frozen=True)
class PruningSettings:
    importance: str
    global_ranking: bool
    prune_first_conv: bool
    ignored_scopes: tuple[str, ...]

    @classmethod
    def of(cls, algo: Algorithm) -> PruningSettings:
        if algo.get("params.pruning_flops_target") is not None:
            raise PresetError(
                "'filter_pruning': params.pruning_flops_target is not supported by detcompress; "
                "set params.pruning_target (the fraction of filters removed) instead"
            )
        if algo.get("params.prune_batch_norms", True) is False:
            raise PresetError(
                "'filter_pruning': params.prune_batch_norms must be true: filters are removed "
                "physically, so their batch-norm channels go with them"
            )
        if algo.target_scopes:
            raise PresetError(
                "'filter_pruning': target_scopes is not supported; list what to keep in "
                "ignored_scopes (module names, or {re}regexes)"
            )
        if algo.get("params.prune_downsample_convs") is False:
            raise PresetError(
                "'filter_pruning': params.prune_downsample_convs: false is not supported: "
                "detcompress prunes stride-2 convolutions like the others (DepGraph keeps "
                "their residual partners consistent); leave it out, or list them in "
                "ignored_scopes"
            )
        nncf_name = algo.get("params.filter_importance")
        older_name = algo.get("params.weight_importance")
        if nncf_name is not None and older_name is not None and nncf_name != older_name:
            raise PresetError(
                f"'filter_pruning': params.filter_importance is {nncf_name!r} but "
                f"params.weight_importance is {older_name!r}; give one (filter_importance is "
                "NNCF's name)"
            )
        return cls(
            importance=nncf_name or older_name or "L2",
            global_ranking=bool(algo.get("params.all_weights", False)),
            prune_first_conv=bool(algo.get("params.prune_first_conv", False)),
            ignored_scopes=algo.ignored_scopes,
        )


def progressive_pruning(nncf_config: NNCFConfig) -> bool:
    """Filters are removed step by step during training only when filter pruning is the only
    algorithm: quantizers and sparsity masks are shaped after the filters, so combined with
    them the pruning goes straight to its target before they are created."""
    return [a.name for a in nncf_config.algorithms] == ["filter_pruning"]


def prune_to(model: Any, algo: Algorithm, state: CompressionState, level: float) -> tuple[int, int]:
    """Remove filters until `level` of the original filters are gone; (filters before, after)."""
    from detcompress.compression import torch_pruning_adapter as tpa

    current = state.pruning_level or 0.0
    if level <= current:
        count = filter_count(model)
        return count, count
    settings = PruningSettings.of(algo)
    convs = tpa.conv_names(model)
    matched, _ = match_scopes(settings.ignored_scopes, list(convs), submodules=True)
    keep = {name for names in matched.values() for name in names}
    ignored = [convs[n] for n in sorted(keep)] + head_output_convs(model)
    first = tpa.first_conv(model)
    if first is not None and not settings.prune_first_conv:
        ignored.append(first)
    before = filter_count(model)
    # torch-pruning's ratio is of the model as it is: from `current` to `level` of the original.
    step_ratio = 1 - (1 - level) / (1 - current)
    example = torch.zeros(state.input_shape, device=_device_of(model))
    was_training = model.training
    model.eval()
    from detcompress.compression.schedules import PruningSchedule

    final = level >= PruningSchedule.of(algo).target
    tpa.prune_filters(
        model, example, step_ratio, settings.importance, ignored, settings.global_ranking, final
    )
    model.train(was_training)
    state.pruning_level = level
    return before, filter_count(model)


def _device_of(model: Any) -> torch.device:
    return next(model.parameters()).device


# ---------------------------------------------------------------------------------------------
# Size statistics (plain torch, so they work on NNCF-wrapped models as well)


def head_output_convs(model: Any) -> list[torch.nn.Conv2d]:
    """The head's final class / box / objectness convolutions: the plain `nn.Conv2d`s of
    `bbox_head` that are not inside a ConvModule (pruning them would change the class count or
    the box encoding)."""
    from mmcv.cnn import ConvModule
    from torch import nn

    head = getattr(model, "bbox_head", None)
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
        model(torch.zeros(input_shape, device=_device_of(model)), mode="tensor")
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
    if nncf_config.algorithm("filter_pruning") is not None and state.original:
        from detcompress.compression.schedules import PruningSchedule

        algo = nncf_config.algorithm("filter_pruning")
        assert algo is not None
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
    sparsity = next((a for a in nncf_config.algorithms if a.name in SPARSITY_ALGORITHMS), None)
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
        elif algo.name == "filter_pruning":
            _prune_filters(model, algo, nncf_config, state, report)
            _adapt_bn(model, algo, batches, to_inputs, batch_size, report)
        else:
            model = _sparsify(model, algo, state, example, report)
            _adapt_bn(model, algo, batches, to_inputs, batch_size, report)
    _attach(model, state)
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
    algo: Algorithm,
    nncf_config: NNCFConfig,
    state: CompressionState,
    report: CompressionReport,
) -> None:
    from detcompress.compression import torch_pruning_adapter as tpa
    from detcompress.compression.schedules import PruningSchedule

    schedule = PruningSchedule.of(algo)
    settings = PruningSettings.of(algo)
    _, unmatched = match_scopes(
        settings.ignored_scopes, list(tpa.conv_names(model)), submodules=True
    )
    for scope in unmatched:
        report.lines.append(
            f"warning: filter_pruning ignored scope '{scope}' matched no convolution; names "
            "look like 'backbone.stem.conv.conv' ({re}-prefixed scopes are regexes)"
        )
    progressive = progressive_pruning(nncf_config)
    level = schedule.level(0) if progressive else schedule.target
    state.pruning_level = 0.0
    before, after = prune_to(model, algo, state, level)
    how = (
        f"{schedule.kind} schedule to {schedule.target} by epoch {schedule.last_change_epoch}"
        if progressive
        else "straight to the target: the quantizers / masks are shaped after the filters"
    )
    report.lines.append(
        f"filter_pruning: {before - after} of {before} filters removed (level {level:.3f}; "
        f"{how}; importance {settings.importance}, head output convolutions kept)"
    )
    report.data["filter_pruning"] = {"initial_level": level, "progressive": progressive}


def _sparsify(
    model: Any,
    algo: Algorithm,
    state: CompressionState,
    example: torch.Tensor,
    report: CompressionReport,
) -> Any:
    from detcompress.compression import nncf_adapter
    from detcompress.compression.schedules import SparsitySchedule

    check_sparsity_settings(algo)
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


def compression_lr_multiplier(nncf_config: NNCFConfig) -> float | None:
    """NNCF's `compression_lr_multiplier` (root or per algorithm): the learning rate of the
    compression parameters (quantizer ranges, RB masks) relative to the weights'."""
    values = {
        a.get("compression_lr_multiplier")
        for a in nncf_config.algorithms
        if a.get("compression_lr_multiplier") is not None
    }
    root = nncf_config.raw.get("compression_lr_multiplier")
    if root is not None:
        values.add(root)
    if len(values) > 1:
        raise PresetError(
            f"compression_lr_multiplier is set to different values ({sorted(values)}); NNCF 3 "
            "keeps all compression parameters in one model: give one value"
        )
    return float(values.pop()) if values else None


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
        example = torch.zeros(state.input_shape, device=_device_of(model))
        was_training = model.training
        model.eval()
        tpa.apply_channel_counts(model, structure["pruned_channels"], example, source)
        model.train(was_training)
    if structure.get("nncf"):
        from detcompress.compression import nncf_adapter

        model = nncf_adapter.restore_structure(model, structure["nncf"])
    if state is not None:
        _attach(model, state)
    return model


def needs_nncf(structure: dict[str, Any]) -> bool:
    return "format" not in structure or bool(structure.get("nncf"))


def is_quantized(nncf_config_raw: dict[str, Any]) -> bool:
    """Whether a stored nncf_config quantizes (exports then run in int8)."""
    algos = nncf_config_raw.get("compression", [])
    algos = algos if isinstance(algos, list) else [algos]
    return any(isinstance(a, dict) and a.get("algorithm") == "quantization" for a in algos)
