"""Building the detector from an mmdet config and loading weights into it, before the Runner
exists (compression has to happen before mmengine builds the optimizer)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from detcompress.compat import apply_mmdet_workarounds, route_head_through_module
from detcompress.errors import CheckpointError, DetcompressError

NNCF_STATE_MARK = "__nncf_hooks"


def build_detector(cfg: Any) -> Any:
    """The detector of `cfg`, weights initialized as mmdet's Runner would (seeded as the
    config's `randomness` says), with the head routed through its module call."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.runner import set_random_seed

    register_all_modules(init_default_scope=True)
    apply_mmdet_workarounds()
    seed = (cfg.get("randomness") or {}).get("seed")
    if seed is not None:
        set_random_seed(seed)
    model = MODELS.build(cfg.model)
    with _quiet_mmengine_logger():  # init_weights logs one INFO block per parameter
        model.init_weights()
    route_head_through_module(model)
    return model


@contextlib.contextmanager
def _quiet_mmengine_logger() -> Iterator[None]:
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


DEVICES = ("auto", "cpu", "cuda")


def select_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is there, else 'cpu'. Call before anything touches CUDA:
    'cpu' hides the GPUs from torch (and so from mmengine's Runner) for this process."""
    import os

    if device not in DEVICES:
        raise DetcompressError(f"--device is '{device}'; valid: {', '.join(DEVICES)}")
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise DetcompressError("--device cuda: no CUDA device is available to torch here")
    return "cpu"


def mark_initialized(model: Any) -> None:
    """Keep the Runner from re-initializing weights we loaded. `Runner.train()` calls
    `init_weights()`, whose bookkeeping runs before its `_is_init` check and takes the mean of
    every parameter, which fails on NNCF's integer parameters: replace it on the instance."""

    def init_weights() -> None:
        """Weights were initialized and loaded by detcompress before the Runner was built."""

    model.init_weights = init_weights


def load_weights(model: Any, checkpoint: dict[str, Any], source: Path) -> None:
    """Load an uncompressed checkpoint's weights the way mmengine's `load_from` does."""
    from mmengine.runner.checkpoint import _load_checkpoint_to_model

    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: holds no state_dict")
    if any(NNCF_STATE_MARK in key for key in state):
        raise CheckpointError(
            f"{source}: holds a compressed model's weights but no compression structure "
            "(not a detcompress checkpoint?); loading it into a plain model would silently give "
            "FP32 weights"
        )
    _load_checkpoint_to_model(model, checkpoint, strict=False, revise_keys=[(r"^module\.", "")])


def detcompress_meta(checkpoint: Any) -> dict[str, Any] | None:
    """The `meta.detcompress` block of a detcompress checkpoint, else None."""
    if not isinstance(checkpoint, dict):
        return None
    meta = checkpoint.get("meta")
    block = meta.get("detcompress") if isinstance(meta, dict) else None
    return block if isinstance(block, dict) else None
