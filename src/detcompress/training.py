"""mmengine Runner construction and detcompress's hooks.

The Runner gets the config as the user wrote it, with detcompress's overrides applied
(work dir, load_from, schedule length) and two hooks: one that keeps checkpoints
self-describing and loadable with `weights_only=True`, one that records validation metrics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmengine.hooks import Hook

from detcompress import __version__
from detcompress.checkpoint import (
    from_safe_message_hub,
    install_mmengine_loader,
    plain,
    to_safe_message_hub,
)
from detcompress.compat import apply_mmdet_workarounds


def package_versions() -> dict[str, str]:
    import mmcv
    import mmdet
    import mmengine
    import torch

    return {
        "detcompress": __version__,
        "torch": torch.__version__,
        "mmengine": mmengine.__version__,
        "mmcv": mmcv.__version__,
        "mmdet": mmdet.__version__,
    }


class SelfDescribingCheckpointHook(Hook):
    """Adds detcompress's meta to every checkpoint and stores the message hub in plain types,
    so that the checkpoint loads with torch's `weights_only=True`."""

    priority = "VERY_LOW"  # after mmengine's own hooks have filled the checkpoint

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        checkpoint.setdefault("meta", {})["detcompress"] = plain(self.meta)
        if "message_hub" in checkpoint:
            checkpoint["message_hub"] = to_safe_message_hub(checkpoint["message_hub"])

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        if isinstance(checkpoint.get("message_hub"), dict):
            from_safe_message_hub(checkpoint["message_hub"])


class MetricsRecorderHook(Hook):
    """Keeps the metrics of the latest validation and the iteration they belong to."""

    priority = "LOW"

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self.iteration: int | None = None

    def after_val_epoch(self, runner: Any, metrics: dict[str, float] | None = None) -> None:
        self.metrics = {k: float(v) for k, v in (metrics or {}).items()}
        self.iteration = runner.iter


@dataclass
class TrainResult:
    work_dir: Path
    checkpoint: Path | None
    metrics: dict[str, float]
    iterations: int
    train_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def set_schedule(cfg: Any, max_iters: int | None, max_epochs: int | None) -> None:
    """Override the schedule length so that training ends with a validation and a checkpoint."""
    if max_iters is not None:
        cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters)
        cfg.default_hooks.checkpoint = dict(
            type="CheckpointHook", by_epoch=False, interval=max_iters, max_keep_ckpts=2
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


def run(
    cfg: Any,
    work_dir: Path,
    load_from: Path | None,
    max_iters: int | None,
    max_epochs: int | None,
    meta: dict[str, Any],
    trust_checkpoint: bool = False,
) -> TrainResult:
    """Train (or, with max_iters=0, only validate) through mmengine's Runner."""
    from mmengine.runner import Runner

    apply_mmdet_workarounds()
    install_mmengine_loader(trust=trust_checkpoint)
    cfg.work_dir = str(work_dir)
    cfg.load_from = str(load_from) if load_from else None
    cfg.resume = False
    set_schedule(cfg, max_iters, max_epochs)
    recorder = MetricsRecorderHook()
    runner = Runner.from_cfg(cfg)
    runner.register_hook(SelfDescribingCheckpointHook({**meta, "versions": package_versions()}))
    runner.register_hook(recorder)

    start = time.perf_counter()
    if max_iters == 0:
        runner.val()  # loads load_from, validates, trains nothing
        return TrainResult(work_dir, None, recorder.metrics, 0, 0.0)
    runner.train()
    seconds = time.perf_counter() - start
    if recorder.iteration != runner.iter:  # the last validation was not at the end
        runner.val()
    return TrainResult(work_dir, _last_checkpoint(work_dir), recorder.metrics, runner.iter, seconds)


def _last_checkpoint(work_dir: Path) -> Path | None:
    marker = work_dir / "last_checkpoint"
    if marker.is_file():
        return Path(marker.read_text().strip())
    found = sorted(work_dir.glob("*.pth"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None
