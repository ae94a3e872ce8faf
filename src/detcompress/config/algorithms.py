"""One settings model per NNCF algorithm section (`compression` entries), NNCF 2's schema as the
source of names: every key detcompress honours is read here, once, into a typed field with its
default, and the keys detcompress cannot carry out are refused here, beside them (`check`).

`schema.py` says which keys exist and what type each has (checked first, with the closest valid
name for a typo); these classes say what the keys mean. Nothing reads an algorithm's dict
elsewhere: schedules, the compression adapters and the training hook read these fields.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from detcompress.errors import PresetError

# NNCF 2's defaults.
DEFAULT_SPARSITY_TARGET = 0.5
DEFAULT_SPARSITY_TARGET_EPOCH = 90
DEFAULT_POWER = 0.9
DEFAULT_PRUNING_TARGET = 0.5
DEFAULT_PRUNING_STEPS = 100
DEFAULT_MIN_PERCENTILE = 0.1  # percent
DEFAULT_MAX_PERCENTILE = 99.9

SPARSITY_ALGORITHMS = ("magnitude_sparsity", "rb_sparsity")

# NNCF 2 keys that NNCF 3's IgnoredScope (per operation, not per quantizer) cannot express.
QUANTIZER_SCOPES_NOT_IN_NNCF3 = (
    "weights.ignored_scopes",
    "weights.target_scopes",
    "activations.target_scopes",
)


def _at(node: Any, dotted: str, default: Any = None) -> Any:
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _scopes(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, list) else (value,)


@dataclass(frozen=True)
class QuantizerSettings:
    mode: str | None
    per_channel: bool | None
    bits: int = 8
    signed: bool | None = None  # None: NNCF decides from the statistics


@dataclass(frozen=True)
class Algorithm:
    """What every `compression` entry may carry. `raw` is the entry as given (stored in
    checkpoints and compared on resume); the fields are what the code reads."""

    name: str
    raw: dict[str, Any]
    ignored_scopes: tuple[str, ...]
    target_scopes: tuple[str, ...]
    compression_lr_multiplier: float | None
    steps_per_epoch: int | None  # NNCF 2: the iterations one epoch of the schedules lasts
    num_bn_adaptation_steps: int | None  # initializer.batchnorm_adaptation: batches ...
    num_bn_adaptation_samples: int | None  # ... or images
    bn_adaptation_configured: bool

    @staticmethod
    def common(raw: dict[str, Any]) -> dict[str, Any]:
        bn = _at(raw, "initializer.batchnorm_adaptation", {}) or {}
        return dict(
            name=raw["algorithm"],
            raw=copy.deepcopy(raw),
            ignored_scopes=_scopes(raw.get("ignored_scopes")),
            target_scopes=_scopes(raw.get("target_scopes")),
            compression_lr_multiplier=raw.get("compression_lr_multiplier"),
            steps_per_epoch=_at(raw, "params.steps_per_epoch"),
            num_bn_adaptation_steps=bn.get("num_bn_adaptation_steps"),
            num_bn_adaptation_samples=bn.get("num_bn_adaptation_samples"),
            bn_adaptation_configured=bool(bn),
        )

    def check(self) -> None:
        """Refuse what detcompress cannot carry out (before anything heavy runs)."""


@dataclass(frozen=True)
class Quantization(Algorithm):
    preset: str
    weights: QuantizerSettings
    activations: QuantizerSettings
    activations_ignored_scopes: tuple[str, ...]  # NNCF 3 ignores whole operations: as ignored
    range_type: str | None
    num_init_steps: int | None
    num_init_samples: int | None
    min_percentile: float | None  # percent, for percentile range types (None: NNCF 2's default)
    max_percentile: float | None
    overflow_fix: str | None
    weights_quant_start_epoch: int | None
    activations_quant_start_epoch: int | None
    quantizer_scopes: tuple[str, ...]  # QUANTIZER_SCOPES_NOT_IN_NNCF3 that are set

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Quantization:
        def quantizer(key: str) -> QuantizerSettings:
            q = raw.get(key, {})
            return QuantizerSettings(
                q.get("mode"), q.get("per_channel"), q.get("bits", 8), q.get("signed")
            )

        return cls(
            **cls.common(raw),
            preset=raw.get("preset", "performance"),
            weights=quantizer("weights"),
            activations=quantizer("activations"),
            activations_ignored_scopes=_scopes(_at(raw, "activations.ignored_scopes")),
            range_type=_at(raw, "initializer.range.type"),
            num_init_steps=_at(raw, "initializer.range.num_init_steps"),
            num_init_samples=_at(raw, "initializer.range.num_init_samples"),
            min_percentile=_at(raw, "initializer.range.params.min_percentile"),
            max_percentile=_at(raw, "initializer.range.params.max_percentile"),
            overflow_fix=raw.get("overflow_fix"),
            weights_quant_start_epoch=_at(raw, "params.weights_quant_start_epoch"),
            activations_quant_start_epoch=_at(raw, "params.activations_quant_start_epoch"),
            quantizer_scopes=tuple(k for k in QUANTIZER_SCOPES_NOT_IN_NNCF3 if _at(raw, k)),
        )

    def check(self) -> None:
        low, high = self.min_percentile, self.max_percentile
        if low is not None and high is not None and not low < high:
            raise PresetError(
                f"'quantization': initializer.range.params.min_percentile ({low}) must be "
                f"below max_percentile ({high})"
            )
        for key in self.quantizer_scopes:
            raise PresetError(
                f"'quantization': {key} is not supported with NNCF 3, whose ignored "
                "scope removes every quantizer of an operation (its weights and "
                "inputs alike); valid: ignored_scopes / target_scopes of the algorithm "
                "(activations.ignored_scopes acts the same as ignored_scopes)"
            )


@dataclass(frozen=True)
class Sparsity(Algorithm):
    """`magnitude_sparsity` or `rb_sparsity`."""

    schedule: str
    sparsity_init: float
    sparsity_target: float
    sparsity_target_epoch: int
    sparsity_freeze_epoch: int | None
    multistep_steps: tuple[int, ...]
    multistep_levels: tuple[float, ...]
    update_per_optimizer_step: bool
    power: float
    concave: bool
    level_setting_mode: str  # global or local
    weight_importance: str | None

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Sparsity:
        params = raw.get("params", {})
        return cls(
            **cls.common(raw),
            schedule=params.get("schedule", "polynomial"),
            sparsity_init=float(raw.get("sparsity_init", 0.0)),
            sparsity_target=float(params.get("sparsity_target", DEFAULT_SPARSITY_TARGET)),
            sparsity_target_epoch=int(
                params.get("sparsity_target_epoch", DEFAULT_SPARSITY_TARGET_EPOCH)
            ),
            sparsity_freeze_epoch=params.get("sparsity_freeze_epoch"),
            multistep_steps=tuple(params.get("multistep_steps", [90])),
            multistep_levels=tuple(
                float(v) for v in params.get("multistep_sparsity_levels", [0.1, 0.5])
            ),
            update_per_optimizer_step=bool(params.get("update_per_optimizer_step", False)),
            power=float(params.get("power", DEFAULT_POWER)),
            concave=bool(params.get("concave", True)),
            level_setting_mode=params.get("sparsity_level_setting_mode", "global"),
            weight_importance=params.get("weight_importance"),
        )

    def check(self) -> None:
        """What NNCF 3's sparsity cannot do (also checked where the masks are created, for
        library callers that skip `check`)."""
        if self.target_scopes:
            raise PresetError(
                f"'{self.name}': target_scopes is not supported with NNCF 3; list what to "
                "leave dense in ignored_scopes"
            )
        if (
            self.name == "magnitude_sparsity"
            and self.level_setting_mode == "global"
            and self.weight_importance == "abs"
        ):
            raise PresetError(
                "'magnitude_sparsity': params.weight_importance 'abs' with global level "
                "setting is not available in NNCF 3 (it ranks |w| / ||w|| globally); valid: "
                "normed_abs, or sparsity_level_setting_mode 'local'"
            )
        if self.name == "rb_sparsity" and self.sparsity_freeze_epoch is not None:
            raise PresetError(
                "'rb_sparsity': params.sparsity_freeze_epoch is not supported (NNCF 3's RB "
                "masks keep training); leave it out"
            )


@dataclass(frozen=True)
class FilterPruning(Algorithm):
    schedule: str
    pruning_init: float
    pruning_target: float
    num_init_steps: int  # epochs at pruning_init
    pruning_steps: int  # epochs from pruning_init to pruning_target
    importance: str  # params.filter_importance (NNCF's name) or weight_importance
    global_ranking: bool  # params.all_weights
    prune_first_conv: bool
    flops_target: float | None  # refused: detcompress prunes a fraction of filters
    prune_batch_norms: bool
    prune_downsample_convs: bool | None
    conflicting_importance: tuple[str, str] | None

    @classmethod
    def of(cls, raw: dict[str, Any]) -> FilterPruning:
        params = raw.get("params", {})
        nncf_name, older_name = params.get("filter_importance"), params.get("weight_importance")
        conflict = (
            (nncf_name, older_name)
            if nncf_name is not None and older_name is not None and nncf_name != older_name
            else None
        )
        return cls(
            **cls.common(raw),
            schedule=params.get("schedule", "exponential"),
            pruning_init=float(raw.get("pruning_init", 0.0)),
            pruning_target=float(params.get("pruning_target", DEFAULT_PRUNING_TARGET)),
            num_init_steps=int(params.get("num_init_steps", 0)),
            pruning_steps=int(params.get("pruning_steps", DEFAULT_PRUNING_STEPS)),
            importance=nncf_name or older_name or "L2",
            global_ranking=bool(params.get("all_weights", False)),
            prune_first_conv=bool(params.get("prune_first_conv", False)),
            flops_target=params.get("pruning_flops_target"),
            prune_batch_norms=params.get("prune_batch_norms", True) is not False,
            prune_downsample_convs=params.get("prune_downsample_convs"),
            conflicting_importance=conflict,
        )

    def check(self) -> None:
        if self.flops_target is not None:
            raise PresetError(
                "'filter_pruning': params.pruning_flops_target is not supported by detcompress; "
                "set params.pruning_target (the fraction of filters removed) instead"
            )
        if not self.prune_batch_norms:
            raise PresetError(
                "'filter_pruning': params.prune_batch_norms must be true: filters are removed "
                "physically, so their batch-norm channels go with them"
            )
        if self.target_scopes:
            raise PresetError(
                "'filter_pruning': target_scopes is not supported; list what to keep in "
                "ignored_scopes (module names, or {re}regexes)"
            )
        if self.prune_downsample_convs is False:
            raise PresetError(
                "'filter_pruning': params.prune_downsample_convs: false is not supported: "
                "detcompress prunes stride-2 convolutions like the others (DepGraph keeps "
                "their residual partners consistent); leave it out, or list them in "
                "ignored_scopes"
            )
        if self.conflicting_importance is not None:
            nncf_name, older_name = self.conflicting_importance
            raise PresetError(
                f"'filter_pruning': params.filter_importance is {nncf_name!r} but "
                f"params.weight_importance is {older_name!r}; give one (filter_importance is "
                "NNCF's name)"
            )


def algorithm_of(raw: dict[str, Any]) -> Algorithm:
    """The settings model of one validated `compression` entry."""
    name = raw["algorithm"]
    if name == "quantization":
        return Quantization.of(raw)
    if name in SPARSITY_ALGORITHMS:
        return Sparsity.of(raw)
    if name == "filter_pruning":
        return FilterPruning.of(raw)
    return Algorithm(**Algorithm.common(raw))
