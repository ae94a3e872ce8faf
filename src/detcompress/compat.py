"""Run-time workarounds for upstream bugs, each naming the bug. Nothing here edits mmdet."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

_applied = False


def apply_mmdet_workarounds() -> None:
    """Idempotent; call before building a detector."""
    global _applied
    if _applied:
        return
    # mmdet 3.3.0: SSDHead.__init__ never sets `loss_cls`, and the shared AnchorHead predict
    # path reads `self.loss_cls` -> AttributeError in predict mode (mmdet issues #11063, #11305).
    from mmdet.models.dense_heads import SSDHead

    if not hasattr(SSDHead, "loss_cls"):
        SSDHead.loss_cls = None
    _applied = True


def route_head_through_module(detector: Any) -> None:
    """Make `tensor` mode call the head as a module, as `loss` and `predict` mode do.

    mmdet's `SingleStageDetector._forward` calls `self.bbox_head.forward(x)` directly, while
    `loss`/`predict` reach the head through `bbox_head(x)`. NNCF names operations by the
    module calls around them, so quantizers traced in tensor mode would not be found in the
    other modes: 150 of 180 quantizer calls instead of 180 on rtmdet_tiny, and DDP then fails
    on unused quantizer parameters. Patched on the instance; mmdet itself is not modified.
    """
    import types

    from mmdet.models.detectors import SingleStageDetector

    if not isinstance(detector, SingleStageDetector):
        return

    def _forward(self: Any, batch_inputs: Any, batch_data_samples: Any = None) -> Any:
        return self.bbox_head(self.extract_feat(batch_inputs))

    detector._forward = types.MethodType(_forward, detector)


@contextlib.contextmanager
def cuda_set_device_without_cuda() -> Iterator[None]:
    """mmengine 0.10's `init_dist` calls `torch.cuda.set_device(local_rank)` whatever the
    backend, which raises on a CPU-only torch build (and on a machine without GPUs): while
    CUDA is not available, make that call a no-op, so that gloo runs on CPU."""
    import torch

    if torch.cuda.is_available():
        yield
        return
    original = torch.cuda.set_device
    torch.cuda.set_device = lambda device: None
    try:
        yield
    finally:
        torch.cuda.set_device = original


@contextlib.contextmanager
def registry_imports_disabled() -> Iterator[None]:
    """While active, mmengine's `Registry.get` finds only registered types.

    For a name it does not hold, mmengine 0.10's `Registry.get` falls back to
    `get_object_from_string`, which imports the name as a dotted path (`subprocess.Popen`);
    `stored_config` checks the names of a stored config with that fallback switched off."""
    from mmengine.registry import registry

    original = registry.get_object_from_string
    registry.get_object_from_string = lambda name: None
    try:
        yield
    finally:
        registry.get_object_from_string = original


@contextlib.contextmanager
def atomic_checkpoint_saves() -> Iterator[None]:
    """While active, mmengine's Runner writes local checkpoints atomically.

    mmengine 0.10's `save_checkpoint` writes straight to the final name (`LocalBackend.put`
    opens it with 'wb'), so a SIGKILL or a full disk during the save leaves a truncated
    `iter_N.pth` that `resume` would pick. Here the bytes go to a temporary file beside it,
    are flushed to disk, and only then renamed to the final name; a temporary file a killed
    process left behind is removed by the next run (`io.remove_stale_temporaries`)."""
    from mmengine.runner import runner as runner_module

    original = runner_module.save_checkpoint

    def save_checkpoint(checkpoint: dict, filename: str, **kwargs: Any) -> None:
        if "://" in str(filename) or any(kwargs.values()):
            original(checkpoint, filename, **kwargs)  # a remote backend: mmengine's way
            return
        from detcompress.io import atomic_torch_save

        atomic_torch_save(checkpoint, filename)

    runner_module.save_checkpoint = save_checkpoint
    try:
        yield
    finally:
        runner_module.save_checkpoint = original
