"""The NNCF configuration schema that detcompress accepts, as data.

It follows NNCF 2.x's JSON schema (the format of MMDetection's NNCF integration and of NNCF's
sample configs), restricted to what detcompress can carry out on NNCF 3 / torch-pruning, and
marks what NNCF 3 removed so that users get a pointer instead of a silent no-op.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Scalar:
    """A leaf value: accepted Python types, a name for messages, optional choices and check."""

    types: tuple[type, ...]
    type_name: str
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], bool] | None = None
    check_text: str = ""


@dataclass(frozen=True)
class ListOf:
    item: Scalar


@dataclass(frozen=True)
class Obj:
    fields: dict[str, Spec]
    # Keys that NNCF 3 removed: key -> what to use instead.
    removed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OneOrList:
    """NNCF accepts one item or a list of them (input_info, compression, scopes)."""

    item: Spec


@dataclass(frozen=True)
class AnyValue:
    """Passed through unchecked (free-form NNCF sub-structures such as scope_overrides)."""


Spec = Scalar | ListOf | Obj | OneOrList | AnyValue


def _choice(*values: str) -> Scalar:
    return Scalar((str,), "string", choices=values)


def _ratio(low_open: bool, high_open: bool) -> Scalar:
    def check(v: float) -> bool:
        above = v > 0 if low_open else v >= 0
        below = v < 1 if high_open else v <= 1
        return above and below

    text = f"a number in {'(' if low_open else '['}0, 1{')' if high_open else ']'}"
    return Scalar((int, float), "number", check=check, check_text=text)


BOOL = Scalar((bool,), "boolean")
STR = Scalar((str,), "string")
NUMBER = Scalar((int, float), "number")
NON_NEG_INT = Scalar((int,), "integer", check=lambda v: v >= 0, check_text="an integer >= 0")
POS_INT = Scalar((int,), "integer", check=lambda v: v > 0, check_text="an integer > 0")
EIGHT_BITS = Scalar(
    (int,), "integer", choices=(8,), check_text="8 (NNCF 3 quantizes detectors to 8 bits only)"
)
SCOPES = OneOrList(STR)

# NNCF 2's 'threshold' and 'mixed_min_max' have no NNCF 3 range estimator: not accepted.
RANGE_TYPES = ("min_max", "mean_min_max", "percentile", "mean_percentile")


def _only(value: Any, text: str) -> Scalar:
    """A boolean that detcompress can honour only with one value (what NNCF 3 always does)."""
    return Scalar((bool,), "boolean", check=lambda v: v is value, check_text=text)


PERCENT = Scalar(
    (int, float), "number", check=lambda v: 0 <= v <= 100, check_text="a percentage in [0, 100]"
)

BN_ADAPTATION = Obj(
    {
        "num_bn_adaptation_samples": NON_NEG_INT,
        "num_bn_adaptation_steps": NON_NEG_INT,
    }
)

QUANTIZER = Obj(
    {
        "mode": _choice("symmetric", "asymmetric"),
        "bits": EIGHT_BITS,
        "per_channel": BOOL,
        "signed": BOOL,  # NNCF 3's signedness_to_force
        "ignored_scopes": SCOPES,
        "target_scopes": SCOPES,
    },
    removed={"logarithm_scale": "NNCF 3 removed logarithmic quantization; leave it out"},
)

COMMON_ALGORITHM_KEYS: dict[str, Spec] = {
    "algorithm": STR,
    "ignored_scopes": SCOPES,
    "target_scopes": SCOPES,
    "compression_lr_multiplier": NUMBER,
}

QUANTIZATION = Obj(
    {
        **COMMON_ALGORITHM_KEYS,
        "preset": _choice("performance", "mixed"),
        "initializer": Obj(
            {
                "range": Obj(
                    {
                        "num_init_samples": NON_NEG_INT,
                        "num_init_steps": NON_NEG_INT,
                        "type": _choice(*RANGE_TYPES),
                        "params": Obj({"min_percentile": PERCENT, "max_percentile": PERCENT}),
                    }
                ),
                "batchnorm_adaptation": BN_ADAPTATION,
            },
            removed={
                "precision": "NNCF 3 removed mixed-precision search (HAWQ/AutoQ); use uniform "
                "int8 ('int8') or asymmetric activations ('int8_mixed')",
            },
        ),
        "weights": QUANTIZER,
        "activations": QUANTIZER,
        "quantize_inputs": _only(
            True,
            "true: NNCF 3 always quantizes the model's input; to keep the first layer in float, "
            "list it in ignored_scopes",
        ),
        "quantize_outputs": _only(False, "false: NNCF 3 does not quantize the model's outputs"),
        "export_to_onnx_standard_ops": _only(
            True,
            "true: detcompress exports standard QuantizeLinear/DequantizeLinear only (NNCF's own "
            "FakeQuantize op does not run in onnxruntime)",
        ),
        "overflow_fix": _choice("enable", "disable", "first_layer_only"),
        "params": Obj(
            {
                "activations_quant_start_epoch": NON_NEG_INT,
                "weights_quant_start_epoch": NON_NEG_INT,
            },
            removed={
                "batch_multiplier": "not supported by detcompress; accumulate gradients with the "
                "mmdet config's optim_wrapper.accumulative_counts instead",
            },
        ),
    },
    removed={
        "scope_overrides": "not supported: NNCF 3 has no per-scope quantizer settings; leave "
        "operations in float with ignored_scopes",
    },
)

SPARSITY_PARAMS: dict[str, Spec] = {
    "schedule": _choice("multistep", "polynomial", "exponential"),
    "multistep_steps": ListOf(NON_NEG_INT),
    "multistep_sparsity_levels": ListOf(_ratio(False, True)),
    "sparsity_target": _ratio(False, True),
    "sparsity_target_epoch": NON_NEG_INT,
    "sparsity_freeze_epoch": NON_NEG_INT,
    "update_per_optimizer_step": BOOL,
    "steps_per_epoch": POS_INT,
    "power": NUMBER,
    "concave": BOOL,
    "sparsity_level_setting_mode": _choice("global", "local"),
}

MAGNITUDE_SPARSITY = Obj(
    {
        **COMMON_ALGORITHM_KEYS,
        "sparsity_init": _ratio(False, True),
        "initializer": Obj({"batchnorm_adaptation": BN_ADAPTATION}),
        "params": Obj(
            {**SPARSITY_PARAMS, "weight_importance": _choice("normed_abs", "abs")},
            removed={"schedule_adaptive": "NNCF 3 removed the adaptive schedule"},
        ),
    }
)

RB_SPARSITY = Obj(
    {
        **COMMON_ALGORITHM_KEYS,
        "sparsity_init": _ratio(False, True),
        "initializer": Obj({"batchnorm_adaptation": BN_ADAPTATION}),
        "params": Obj(dict(SPARSITY_PARAMS)),
    }
)

FILTER_PRUNING = Obj(
    {
        **COMMON_ALGORITHM_KEYS,
        "pruning_init": _ratio(False, True),
        "initializer": Obj({"batchnorm_adaptation": BN_ADAPTATION}),
        "params": Obj(
            {
                "schedule": _choice("baseline", "exponential"),
                "pruning_target": _ratio(True, True),
                "pruning_flops_target": _ratio(True, True),
                "num_init_steps": NON_NEG_INT,
                "pruning_steps": NON_NEG_INT,
                # NNCF 2's name; 'weight_importance' is detcompress's older spelling of it.
                "filter_importance": _choice("L2", "L1", "geometric_median"),
                "weight_importance": _choice("L2", "L1", "geometric_median"),
                "all_weights": BOOL,
                "prune_first_conv": BOOL,
                "prune_downsample_convs": BOOL,
                "prune_batch_norms": BOOL,
                "zero_grad": BOOL,
            },
            removed={
                "interlayer_ranking_type": "NNCF 3 removed LeGR ranking; torch-pruning ranks "
                "filters by filter_importance",
                "legr_params": "NNCF 3 removed LeGR; leave it out",
            },
        ),
    }
)

ALGORITHMS: dict[str, Obj] = {
    "quantization": QUANTIZATION,
    "magnitude_sparsity": MAGNITUDE_SPARSITY,
    "rb_sparsity": RB_SPARSITY,
    "filter_pruning": FILTER_PRUNING,
}

# Algorithms NNCF 3 no longer has, and what to use instead.
REMOVED_ALGORITHMS: dict[str, str] = {
    "movement_sparsity": "NNCF 3 removed movement sparsity; use 'magnitude_sparsity' or "
    "'rb_sparsity'",
    "const_sparsity": "NNCF 3 removed const sparsity; use 'magnitude_sparsity'",
    "knowledge_distillation": "NNCF 3 removed knowledge distillation; fine-tune with the "
    "detector's own loss",
    "binarization": "NNCF 3 removed binarization; use 'quantization'",
    "progressive_shrinking": "NNCF 3 removed neural architecture search; use 'filter_pruning'",
    "elasticity": "NNCF 3 removed neural architecture search; use 'filter_pruning'",
    "mixed_precision": "NNCF 3 removed mixed-precision search; use 'quantization' (int8)",
}

INPUT_INFO = Obj(
    {
        "sample_size": ListOf(POS_INT),
        "type": _choice("float", "long"),
        "filler": _choice("zeros", "ones", "random"),
        "keyword": STR,
    }
)

# NNCF 2's accuracy-aware section (config/accuracy_aware.py checks the rules across keys).
ACCURACY_AWARE_TRAINING = Obj(
    {
        "mode": _choice("early_exit", "adaptive_compression_level"),
        "params": Obj(
            {
                "maximal_relative_accuracy_degradation": Scalar(
                    (int, float),
                    "number",
                    check=lambda v: 0 <= v < 100,
                    check_text="a percentage in [0, 100)",
                ),
                "maximal_absolute_accuracy_degradation": Scalar(
                    (int, float),
                    "number",
                    check=lambda v: 0 <= v <= 1,
                    check_text="a number in [0, 1] (mmdet's bbox mAP is a fraction: 0.005 = "
                    "0.5 points)",
                ),
                "maximal_total_epochs": POS_INT,
                "initial_training_phase_epochs": POS_INT,
                "patience_epochs": POS_INT,
                "initial_compression_rate_step": _ratio(True, True),
                "compression_rate_step_reduction_factor": _ratio(True, True),
                "minimal_compression_rate_step": _ratio(True, True),
            }
        ),
    }
)

ROOT = Obj(
    {
        "accuracy_aware_training": ACCURACY_AWARE_TRAINING,
        "input_info": OneOrList(INPUT_INFO),
        # NNCF 3 has no TRIAL device and raises InternalError for CPU_SPR with PyTorch models.
        "target_device": _choice("ANY", "CPU", "GPU", "NPU"),
        "compression": OneOrList(AnyValue()),  # each item is checked against its algorithm
        "compression_lr_multiplier": NUMBER,
    },
    removed={
        "log_dir": "not used by detcompress: logs, checkpoints and statistics go to the work "
        "dir (--work-dir)",
        "disable_shape_matching": "NNCF 3 matches no input shapes (the model is traced on real "
        "batches); leave it out",
        "hw_config_type": "NNCF 3 derives the hardware config from 'target_device'",
    },
)

# Keys of NNCF's sample-script configs (model zoo JSON files): settings of NNCF's own training
# scripts, not of compression. Accepted so that those files load as they are; detcompress takes
# these settings from the mmdet config instead.
SAMPLE_SCRIPT_KEYS = frozenset(
    {
        "model",
        "pretrained",
        "num_classes",
        "batch_size",
        "batch_size_val",
        "batch_size_init",
        "epochs",
        "optimizer",
        "dataset",
        "dataset_type",
        "seed",
        "print_freq",
        "multiprocessing_distributed",
        "workers",
        "preprocessing",
        "weights",
        "checkpoint_save_dir",
        "test_every_n_epochs",
        "metrics_dump",
    }
)
