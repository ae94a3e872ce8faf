"""mmengine Runner construction and the run itself.

The Runner gets the config as the user wrote it, with detcompress's overrides applied
(work dir, load_from, schedule length) and detcompress's hooks (`hooks.py`): checkpoints that
describe themselves and load with `weights_only=True`, the validation metrics, and a stop at
the first non-finite loss or weight.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detcompress import __version__, console
from detcompress.errors import ConfigError
from detcompress.files import latest_checkpoint
from detcompress.patches import atomic_checkpoint_saves, mmengine_loads_checkpoints_safely
from detcompress.train import allocator
from detcompress.train.hooks import (
    FiniteValuesHook,
    MetricsRecorderHook,
    SelfDescribingCheckpointHook,
    SyncNormStatsHook,
)


def package_versions(*extra: str) -> dict[str, str]:
    """Versions of detcompress, the training stack and the `extra` distributions installed."""
    from importlib.metadata import PackageNotFoundError, version

    import mmcv
    import mmdet
    import mmengine
    import torch

    versions = {
        "detcompress": __version__,
        "torch": torch.__version__,
        "mmengine": mmengine.__version__,
        "mmcv": mmcv.__version__,
        "mmdet": mmdet.__version__,
    }
    for name in extra:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@dataclass
class TrainResult:
    work_dir: Path
    checkpoint: Path | None
    metrics: dict[str, float]
    iterations: int
    train_seconds: float
    runner: Any = None


def prepare_cfg(cfg: Any, work_dir: Path, max_iters: int | None, max_epochs: int | None) -> None:
    """detcompress's overrides, applied before the config is saved into checkpoints: the model
    is built and loaded by detcompress, so the Runner loads nothing itself."""
    cfg.work_dir = str(work_dir)
    cfg.load_from = None
    cfg.resume = False
    set_schedule(cfg, max_iters, max_epochs)
    share_parameters_safely(cfg)


def share_parameters_safely(cfg: Any) -> None:
    """NNCF registers a quantizer shared by several operations under each of their names;
    mmengine's paramwise optimizer constructor would then put its parameters into two groups,
    which torch refuses. `bypass_duplicate` makes the constructor add them once (a no-op for
    models without shared modules)."""
    wrapper = cfg.get("optim_wrapper")
    if wrapper is not None and wrapper.get("paramwise_cfg") is not None:
        wrapper["paramwise_cfg"]["bypass_duplicate"] = True


# Parameters NNCF adds to a model (quantizer ranges, sparsity masks) live under this name.
COMPRESSION_PARAMETERS_KEY = "__nncf_hooks"


def scale_compression_lr(cfg: Any, multiplier: float | None) -> None:
    """The learning rate of the compression parameters, `multiplier` times the weights', as a
    custom key of mmengine's paramwise optimizer constructor (so `resume` rebuilds the same
    parameter groups from the stored config)."""
    if multiplier is None:
        return
    wrapper = cfg.get("optim_wrapper")
    if wrapper is None:
        return
    paramwise = wrapper.get("paramwise_cfg") or {}
    custom = dict(paramwise.get("custom_keys") or {})
    custom[COMPRESSION_PARAMETERS_KEY] = dict(custom.get(COMPRESSION_PARAMETERS_KEY) or {})
    custom[COMPRESSION_PARAMETERS_KEY]["lr_mult"] = multiplier
    wrapper["paramwise_cfg"] = dict(paramwise, custom_keys=custom, bypass_duplicate=True)


def set_schedule(cfg: Any, max_iters: int | None, max_epochs: int | None) -> None:
    """Override the schedule length so that training ends with a validation and a checkpoint;
    an iteration-based config keeps its shorter validation interval."""
    if max_iters is not None:
        cfg.train_cfg = dict(
            type="IterBasedTrainLoop",
            max_iters=max_iters,
            val_interval=kept_val_interval(cfg.get("train_cfg") or {}, max_iters),
        )
        # Keep a shorter iteration-based checkpoint interval of the config; else save at the end.
        hook = cfg.default_hooks.get("checkpoint") or {}
        interval = hook.get("interval", max_iters) if not hook.get("by_epoch", True) else max_iters
        cfg.default_hooks.checkpoint = dict(
            type="CheckpointHook",
            by_epoch=False,
            interval=min(interval, max_iters) if interval > 0 else max_iters,
            max_keep_ckpts=hook.get("max_keep_ckpts", 2),
        )
        cfg.log_processor = dict(cfg.get("log_processor", {}), by_epoch=False)
        logger = cfg.default_hooks.get("logger")
        if logger is not None:
            logger["interval"] = min(logger.get("interval", 50), max(1, max_iters // 5))
    elif max_epochs is not None:
        cfg.train_cfg = dict(
            type="EpochBasedTrainLoop", max_epochs=max_epochs, val_interval=max_epochs
        )
        cfg.default_hooks.checkpoint = dict(
            type="CheckpointHook", by_epoch=True, interval=max_epochs, max_keep_ckpts=2
        )
        cfg.log_processor = dict(cfg.get("log_processor", {}), by_epoch=True)
        sampler = cfg.train_dataloader.get("sampler", {})
        if sampler.get("type") == "InfiniteSampler":  # an epoch must end
            cfg.train_dataloader.sampler = dict(type="DefaultSampler", shuffle=True)
    # Plain mmdet configs may set persistent workers with num_workers=0, which torch refuses.
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        loader = cfg.get(key)
        if loader is not None and loader.get("num_workers", 0) == 0:
            loader["persistent_workers"] = False


def kept_val_interval(train_cfg: Any, max_iters: int) -> int:
    interval = train_cfg.get("val_interval")
    iteration_based = train_cfg.get("type") == "IterBasedTrainLoop" or "max_iters" in train_cfg
    if iteration_based and isinstance(interval, int) and 0 < interval < max_iters:
        return interval
    return max_iters


def schedule_changes(cfg: Any, max_iters: int | None, max_epochs: int | None) -> list[str]:
    """What --max-iters / --max-epochs change in the config's schedule, in words, and where the
    config's LR schedule no longer fits the shortened run (it is not rescaled: detcompress says
    so and leaves the choice to the user)."""
    if (max_iters is None and max_epochs is None) or max_iters == 0:
        return []
    train_cfg = cfg.get("train_cfg") or {}
    if "max_iters" in train_cfg:
        was = f"{train_cfg['max_iters']} iterations"
    else:
        was = f"{train_cfg.get('max_epochs', '?')} epochs"
    unit, length = ("iteration", max_iters) if max_iters is not None else ("epoch", max_epochs)
    assert length is not None  # one of the two is set
    notes = [f"schedule: {length} {unit}s instead of the config's {was}"]
    if max_iters is not None:
        interval = kept_val_interval(train_cfg, max_iters)
        notes.append(
            f"validation every {interval} iterations"
            + ("" if interval < max_iters else " (at the end)")
        )
    schedulers = cfg.get("param_scheduler") or []
    schedulers = schedulers if isinstance(schedulers, list) else [schedulers]
    by_epoch_run = max_epochs is not None
    for index, scheduler in enumerate(schedulers):
        kind = scheduler.get("type", "?")
        by_epoch = bool(scheduler.get("by_epoch", True)) and not scheduler.get(
            "convert_to_iter_based", False
        )
        begin, end = int(scheduler.get("begin", 0)), scheduler.get("end")
        where = f"param_scheduler[{index}] ({kind}, {'epochs' if by_epoch else 'iterations'}"
        where += f" {begin}-{end})" if end is not None else f" from {begin})"
        if by_epoch and not by_epoch_run:
            notes.append(f"{where} counts epochs: it does not step in an iteration-based run")
        elif by_epoch == by_epoch_run:
            if begin >= length:
                notes.append(f"{where} never starts: the run ends at {unit} {length}")
            elif end is not None and end > length:
                inside = " inside the warm-up" if kind == "LinearLR" else ""
                notes.append(f"{where} is cut: the run ends at {unit} {length}{inside}")
    if len(notes) > 2:
        notes.append(
            "the LR schedule is not rescaled; adjust it with --cfg-options "
            "param_scheduler.N.end=... (or train longer) if that is not what you want"
        )
    return notes


def calibration_batches(cfg: Any, count: int) -> list[Any]:
    """`count` batches from the train dataloader, drawn with a seeded DefaultSampler (mmengine's
    InfiniteSampler breaks NNCF's dataset iteration), collated as the Runner would; the same
    batches on every rank of a distributed run."""
    import copy
    import functools
    import itertools

    from mmengine.runner import Runner

    loader_cfg = copy.deepcopy(cfg.train_dataloader)
    loader_cfg["sampler"] = dict(type="DefaultSampler", shuffle=True)
    loader_cfg["persistent_workers"] = False
    loader = Runner.build_dataloader(loader_cfg, seed=0)
    # Under DDP mmengine's sampler gives each rank its shard; calibration must see the same
    # batches on every rank (and the same as one process would): the whole dataset.
    sampler: Any = loader.sampler
    sampler.rank, sampler.world_size = 0, 1
    sampler.num_samples = sampler.total_size = len(sampler.dataset)
    # mmengine also seeds each loader worker (random augmentations) with the rank: use rank 0's.
    init_fn = loader.worker_init_fn
    if isinstance(init_fn, functools.partial) and "rank" in init_fn.keywords:
        loader.worker_init_fn = functools.partial(
            init_fn.func, *init_fn.args, **{**init_fn.keywords, "rank": 0}
        )
    batches: list[Any] = []
    while len(batches) < count:  # a small dataset: go round again
        more = list(itertools.islice(loader, count - len(batches)))
        if not more:
            raise ConfigError(
                "'train_dataloader' yields no batches (empty dataset, or every image filtered "
                "out by filter_cfg); compression needs training images to calibrate on"
            )
        batches += more
    return batches


def build_runner(cfg: Any, model: Any) -> Any:
    """Runner.from_cfg, but with a model instance detcompress built (and maybe compressed)."""
    from mmengine.runner import Runner

    return Runner(
        model=model,
        work_dir=cfg["work_dir"],
        train_dataloader=cfg.get("train_dataloader"),
        val_dataloader=cfg.get("val_dataloader"),
        test_dataloader=cfg.get("test_dataloader"),
        train_cfg=cfg.get("train_cfg"),
        val_cfg=cfg.get("val_cfg"),
        test_cfg=cfg.get("test_cfg"),
        auto_scale_lr=cfg.get("auto_scale_lr"),
        optim_wrapper=cfg.get("optim_wrapper"),
        param_scheduler=cfg.get("param_scheduler"),
        val_evaluator=cfg.get("val_evaluator"),
        test_evaluator=cfg.get("test_evaluator"),
        default_hooks=cfg.get("default_hooks"),
        custom_hooks=cfg.get("custom_hooks"),
        data_preprocessor=cfg.get("data_preprocessor"),
        load_from=cfg.get("load_from"),
        resume=cfg.get("resume", False),
        launcher=cfg.get("launcher", "none"),
        env_cfg=cfg.get("env_cfg", dict(dist_cfg=dict(backend="nccl"))),
        log_processor=cfg.get("log_processor"),
        log_level=cfg.get("log_level", "INFO"),
        visualizer=cfg.get("visualizer"),
        default_scope=cfg.get("default_scope", "mmengine"),
        randomness=cfg.get("randomness", dict(seed=None)),
        experiment_name=cfg.get("experiment_name"),
        cfg=cfg,
    )


def run(
    cfg: Any,
    model: Any,
    meta: dict[str, Any],
    structure: Callable[[Any], dict[str, Any] | None],
    trust_checkpoint: bool = False,
    evaluate_only: bool = False,
    hooks: list[Any] | None = None,
) -> TrainResult:
    """Train (or only validate) `model` through mmengine's Runner; with `cfg.resume` and
    `cfg.load_from` set, continue from that checkpoint. Checkpoints are written atomically."""
    with (
        atomic_checkpoint_saves(),
        mmengine_loads_checkpoints_safely(trust_checkpoint),
        console.mmengine_output(),
    ):
        return _run(cfg, model, meta, structure, evaluate_only, hooks)


def save_checkpoint(runner: Any, work_dir: Path, name: str) -> Path:
    """The Runner's model, without optimizer or schedule, as `work_dir/name` (atomically)."""
    with atomic_checkpoint_saves():
        runner.save_checkpoint(
            str(work_dir), name, save_optimizer=False, save_param_scheduler=False
        )
    return work_dir / name


def _run(
    cfg: Any,
    model: Any,
    meta: dict[str, Any],
    structure: Callable[[Any], dict[str, Any] | None],
    evaluate_only: bool,
    hooks: list[Any] | None,
) -> TrainResult:
    work_dir = Path(cfg.work_dir)
    recorder = MetricsRecorderHook()
    runner = build_runner(cfg, model)
    runner.register_hook(
        SelfDescribingCheckpointHook({**meta, "versions": package_versions()}, structure)
    )
    runner.register_hook(recorder)
    runner.register_hook(FiniteValuesHook())
    for hook in hooks or []:
        runner.register_hook(hook)
    if runner.distributed:
        runner.register_hook(SyncNormStatsHook())
    if evaluate_only:
        runner.val()
        return TrainResult(work_dir, None, recorder.metrics, 0, 0.0, runner=runner)
    allocator.keep_freed_memory_for_reuse()  # fewer page faults per iteration
    start = time.perf_counter()
    runner.train()
    seconds = time.perf_counter() - start
    if recorder.iteration != runner.iter:  # the last validation was not at the end
        runner.val()
    return TrainResult(
        work_dir, latest_checkpoint(work_dir), recorder.metrics, runner.iter, seconds, runner=runner
    )
