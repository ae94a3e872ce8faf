"""Every run-time patch of a third-party library (nothing edits mmdet, mmengine or NNCF).

Each is applied as a context manager or returns its undo, and says why. The inventory:

- `apply_mmdet_workarounds` (undo: `undo_mmdet_workarounds`): `SSDHead.loss_cls = None`;
  mmdet 3.3.0's predict mode reads it (mmdet issues #11063, #11305). Process-wide, idempotent.
- `route_head_through_module`: a detector's `_forward` calls `bbox_head(x)`, not
  `bbox_head.forward(x)`, so NNCF finds the head's quantizers in every mode; a two-stage
  detector's `_forward` runs without data samples (image size from the batch). One model.
- `mark_initialized` (returns its undo): a detector's `init_weights` becomes a no-op, so the
  Runner does not re-initialize loaded (or NNCF's integer) weights. One model.
- `cuda_set_device_without_cuda`: `torch.cuda.set_device` a no-op without CUDA; mmengine
  0.10's `init_dist` calls it on CPU-only builds. Context manager.
- `mmengine_loads_checkpoints_safely`: mmengine's local `CheckpointLoader` scheme loads with
  `weights_only=True` (full unpickling only when trusted). Context manager.
- `atomic_checkpoint_saves`: `mmengine.runner.runner.save_checkpoint` writes through a
  temporary file and a rename; mmengine writes to the final name. Context manager.
- `registry_imports_disabled`: mmengine's `Registry.get` stops importing unknown names by
  their dotted path (`get_object_from_string`). Context manager.
- `mmengine_terminal_filtered`: the terminal handler of every mmengine logger made while
  active gets detcompress's filter (`console.MMEngineTerminalFilter`): mmengine prints its
  environment, the whole config, the hook order and one line per parameter group to the
  terminal (~800 lines a run); the log file keeps them. Context manager.
- `coco_prints_to_log`: pycocotools prints its progress ("creating index...", ~20 lines a
  validation) with `print`; while active, those lines go to mmengine's log instead (the
  module's global `print`, removed after). Context manager.
- `nncf_extension_build_time`: `NNCF_EXTENSION_LOAD_TIMEOUT` defaults to 600 s; NNCF's C++
  build (~45 s on 2 cores) is near its 60 s limit. A default only (the user's value wins).

Patches that belong to one subsystem stay there, with their undo: the QAT speed-ups
(`compression/speedups`: NNCF's CPU kernel namespace, per-model forwards), the RB-sparsity loss
(`train/compression_hook.py`: a model's `loss`, undone after training) and glibc's allocator
settings (`train/allocator.py`, `DETCOMPRESS_MALLOC=system` to opt out).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
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


def undo_mmdet_workarounds() -> None:
    global _applied
    from mmdet.models.dense_heads import SSDHead

    if _applied and "loss_cls" in vars(SSDHead) and SSDHead.loss_cls is None:
        del SSDHead.loss_cls
    _applied = False


def route_head_through_module(detector: Any) -> Callable[[], None]:
    """Make `tensor` mode work like `loss` and `predict` mode, with an image batch alone.

    mmdet's `SingleStageDetector._forward` calls `self.bbox_head.forward(x)` directly, while
    `loss`/`predict` reach the head through `bbox_head(x)`. NNCF names operations by the
    module calls around them, so quantizers traced in tensor mode would not be found in the
    other modes: 150 of 180 quantizer calls instead of 180 on rtmdet_tiny, and DDP then fails
    on unused quantizer parameters. `TwoStageDetector._forward` needs data samples (the RPN's
    proposals are clipped to `img_shape`), which NNCF's tracing, the MAC count and the export
    do not have: without them, the batch's own size is the image size. Patched on the
    instance; mmdet itself is not modified. Returns the undo.
    """
    import types

    from mmdet.models.detectors import SingleStageDetector, TwoStageDetector

    if isinstance(detector, SingleStageDetector):

        def _forward(self: Any, batch_inputs: Any, batch_data_samples: Any = None) -> Any:
            return self.bbox_head(self.extract_feat(batch_inputs))

    elif isinstance(detector, TwoStageDetector):

        def _forward(self: Any, batch_inputs: Any, batch_data_samples: Any = None) -> Any:
            if batch_data_samples is None:
                batch_data_samples = _samples_of_size(batch_inputs)
            return TwoStageDetector._forward(self, batch_inputs, batch_data_samples)

    else:
        return lambda: None
    detector._forward = types.MethodType(_forward, detector)
    return lambda: vars(detector).pop("_forward", None)


def _samples_of_size(batch_inputs: Any) -> list[Any]:
    from mmdet.structures import DetDataSample

    shape = tuple(int(v) for v in batch_inputs.shape[-2:])
    meta = dict(img_shape=shape, pad_shape=shape, batch_input_shape=shape, scale_factor=(1.0, 1.0))
    return [DetDataSample(metainfo=meta) for _ in range(batch_inputs.shape[0])]


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
    process left behind is removed by the next run (`files.remove_stale_temporaries`)."""
    from mmengine.runner import runner as runner_module

    original = runner_module.save_checkpoint

    def save_checkpoint(checkpoint: dict, filename: str, **kwargs: Any) -> None:
        if "://" in str(filename) or any(kwargs.values()):
            original(checkpoint, filename, **kwargs)  # a remote backend: mmengine's way
            return
        from detcompress.files import atomic_torch_save

        atomic_torch_save(checkpoint, filename)

    runner_module.save_checkpoint = save_checkpoint
    try:
        yield
    finally:
        runner_module.save_checkpoint = original


def mark_initialized(model: Any) -> Callable[[], None]:
    """Keep the Runner from re-initializing weights we loaded. `Runner.train()` calls
    `init_weights()`, whose bookkeeping runs before its `_is_init` check and takes the mean of
    every parameter, which fails on NNCF's integer parameters: replace it on the instance.
    Returns the undo."""

    def init_weights() -> None:
        """Weights were initialized and loaded by detcompress before the Runner was built."""

    model.init_weights = init_weights
    return lambda: vars(model).pop("init_weights", None)


@contextlib.contextmanager
def mmengine_loads_checkpoints_safely(trust: bool) -> Iterator[None]:
    """While active, mmengine's Runner (`load_from`, `resume`) loads local checkpoints through
    `checkpoint.load_checkpoint`: `weights_only=True`, full unpickling only with `trust`."""
    from mmengine.runner.checkpoint import CheckpointLoader

    from detcompress.model.checkpoint import load_checkpoint

    def load_local(filename: str, map_location: Any = None) -> Any:
        # Onto the CPU whatever mmengine asks (its resume asks for the GPU): torch's
        # Optimizer.load_state_dict leaves each state['step'] where it was loaded, and Adam(W)
        # then syncs the GPU for every parameter at every step (7,900 syncs in 10 iterations of
        # the demo's int8 QAT on an H200); weights and float state are copied to their
        # parameters' device anyway.
        return load_checkpoint(filename, map_location="cpu", trust=trust)

    original = CheckpointLoader._schemes
    CheckpointLoader.register_scheme(prefixes="", loader=load_local, force=True)
    try:
        yield
    finally:
        CheckpointLoader._schemes = original


@contextlib.contextmanager
def mmengine_terminal_filtered(terminal_filter: Any) -> Iterator[None]:
    """While active, `terminal_filter` (a `logging.Filter`) sits on the terminal handler of
    every MMLogger, existing or made meanwhile; removed after."""
    import logging

    from mmengine.logging import MMLogger

    filtered: list[Any] = []

    def attach(logger: Any) -> None:
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler:  # the terminal, not the log file
                handler.addFilter(terminal_filter)
                filtered.append(handler)

    original_init = MMLogger.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        attach(self)

    for logger in list(MMLogger._instance_dict.values()):
        attach(logger)
    MMLogger.__init__ = init
    try:
        yield
    finally:
        MMLogger.__init__ = original_init
        for handler in filtered:
            handler.removeFilter(terminal_filter)


@contextlib.contextmanager
def coco_prints_to_log() -> Iterator[None]:
    """While active, pycocotools' `print` calls become INFO lines of mmengine's current logger
    (the terminal filter keeps them out of the terminal; the log file has them)."""
    try:
        from pycocotools import coco, cocoeval
    except ImportError:  # no COCO metric in this install: nothing prints
        yield
        return
    from mmengine.logging import MMLogger

    def print_to_log(*values: Any, **kwargs: Any) -> None:
        text = kwargs.get("sep", " ").join(str(value) for value in values)
        MMLogger.get_current_instance().info(text)

    modules = (coco, cocoeval)
    for module in modules:
        module.print = print_to_log
    try:
        yield
    finally:
        for module in modules:
            vars(module).pop("print", None)


def nncf_extension_build_time() -> None:
    """NNCF compiles a C++ extension on first use (about 45 s on 2 cores), close to its 60 s
    limit: give it 600 s unless the user set the variable."""
    import os

    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "600")
