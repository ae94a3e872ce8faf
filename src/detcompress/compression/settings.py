"""What an nncf_config asks of detcompress, checked before anything heavy runs: the packages
it needs, the settings NNCF 3 (or detcompress) cannot carry out, how many calibration batches
each algorithm takes and the compression learning rate. Each algorithm's own keys are read and
refused in `config/algorithms.py`."""

from __future__ import annotations

import math

from detcompress.config.algorithms import Algorithm, FilterPruning, Quantization, Sparsity
from detcompress.config.presets import NNCFConfig
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

    algo = nncf_config.filter_pruning
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


def check_settings(nncf_config: NNCFConfig) -> None:
    """Refuse settings detcompress cannot carry out before anything heavy runs: each
    algorithm's own refusals (`config/algorithms.py`), its schedule, and the settings that
    concern several algorithms."""
    from detcompress.compression.schedules import PruningSchedule, SparsitySchedule

    for algo in nncf_config.algorithms:
        if isinstance(algo, FilterPruning):
            PruningSchedule.of(algo)
        elif isinstance(algo, Sparsity):
            SparsitySchedule.of(algo)
        algo.check()
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
    if not algo.bn_adaptation_configured:
        return 0
    return steps(
        algo.num_bn_adaptation_steps,
        algo.num_bn_adaptation_samples,
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


def progressive_pruning(nncf_config: NNCFConfig) -> bool:
    """Filters are removed step by step during training only when filter pruning is the only
    algorithm: quantizers and sparsity masks are shaped after the filters, so combined with
    them the pruning goes straight to its target before they are created."""
    return [a.name for a in nncf_config.algorithms] == ["filter_pruning"]


def compression_lr_multiplier(nncf_config: NNCFConfig) -> float | None:
    """NNCF's `compression_lr_multiplier` (root or per algorithm): the learning rate of the
    compression parameters (quantizer ranges, RB masks) relative to the weights'."""
    values = {
        a.compression_lr_multiplier
        for a in nncf_config.algorithms
        if a.compression_lr_multiplier is not None
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
