"""What an nncf_config asks of detcompress, checked before anything heavy runs: the packages
it needs, the settings NNCF 3 (or detcompress) cannot carry out, how many calibration batches
each algorithm takes, the filter-pruning settings and the compression learning rate."""

from __future__ import annotations

import math
from dataclasses import dataclass

from detcompress.compression.state import SPARSITY_ALGORITHMS
from detcompress.config.presets import Algorithm, NNCFConfig, Quantization
from detcompress.errors import DetcompressError, PresetError

# NNCF 2's defaults, in images.
DEFAULT_RANGE_INIT_SAMPLES = 256


DEFAULT_BN_ADAPTATION_SAMPLES = 2000


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
