"""Building the detector from an mmdet config and loading weights into it, before the Runner
exists (compression has to happen before mmengine builds the optimizer)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detcompress.errors import CheckpointError, ConfigError, DetcompressError
from detcompress.patches import apply_mmdet_workarounds, route_head_through_module

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
    from mmdet.models.detectors import BaseDetector

    model_type = cfg.model.get("type") if isinstance(cfg.get("model"), dict) else None
    if model_type is None:
        raise ConfigError(f"{_source(cfg)}: no 'model' with a 'type' in the config")
    try:
        model = MODELS.build(cfg.model)
    except (KeyError, TypeError, ValueError, AssertionError) as exc:
        first = str(exc).strip().strip("'\"").splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(
            f"{_source(cfg)}: 'model' ({model_type}) cannot be built: {type(exc).__name__}: "
            f"{first[:300]}"
        ) from None
    if not isinstance(model, BaseDetector):
        raise ConfigError(
            f"{_source(cfg)}: 'model.type' is {model_type}, a {type(model).__name__} but not an "
            "mmdet detector; detcompress compresses detectors (e.g. RetinaNet, RTMDet, YOLOX)"
        )
    with _quiet_mmengine_logger():  # init_weights logs one INFO block per parameter
        model.init_weights()
    route_head_through_module(model)
    return model


def _source(cfg: Any) -> str:
    return str(cfg.filename) if getattr(cfg, "filename", None) else "config"


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


def torch_device_name(device: str) -> str:
    """'CPU', 'GPU', 'cuda', 'Auto', ... -> detcompress's torch vocabulary (auto, cpu, cuda);
    an unknown name is returned as given, for the caller's error."""
    return {"gpu": "cuda"}.get(device.lower(), device.lower()) if _known(device) else device


def openvino_device_name(device: str) -> str:
    """'cpu', 'cuda', 'gpu', 'Auto', ... -> OpenVINO's vocabulary (CPU, GPU, AUTO); an unknown
    name is returned as given, for the caller's error."""
    return {"CUDA": "GPU"}.get(device.upper(), device.upper()) if _known(device) else device


def _known(device: str) -> bool:
    return device.lower() in {"auto", "cpu", "cuda", "gpu"}


def select_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is there, else 'cpu'. Call before anything touches CUDA:
    'cpu' hides the GPUs from torch (and so from mmengine's Runner) for this process."""
    import os

    device = torch_device_name(device)
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


def unwrapped(model: Any) -> Any:
    """The model inside mmengine's DDP (or other) wrapper, else the model itself."""
    from mmengine.model import is_model_wrapper

    return model.module if is_model_wrapper(model) else model


@dataclass
class LoadReport:
    """How much of a model a checkpoint filled."""

    loaded: int  # tensors of the model found in the checkpoint with the same shape
    total: int  # tensors of the model
    missing: int
    unexpected: int
    mismatched: int  # same name, other shape
    loaded_fraction: float  # of the model's parameter elements

    def line(self, source: Path) -> str:
        return (
            f"{source}: loaded {self.loaded} of the model's {self.total} tensors "
            f"({self.loaded_fraction:.0%} of its weights); missing {self.missing}, unexpected "
            f"{self.unexpected}, other shape {self.mismatched}"
        )


# Below this share of the model's weights a checkpoint is most likely not the model's.
MIN_LOADED_FRACTION = 0.5


def load_weights(
    model: Any, checkpoint: dict[str, Any], source: Path, allow_partial: bool = False
) -> LoadReport:
    """Load an uncompressed checkpoint's weights the way mmengine's `load_from` does; refuse a
    checkpoint that fills less than half of the model's weights unless `allow_partial`."""
    import re

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
    report = _load_report(model, {re.sub(r"^module\.", "", k): v for k, v in state.items()})
    if report.loaded_fraction < MIN_LOADED_FRACTION and not allow_partial:
        raise CheckpointError(
            f"{report.line(source)}: not this config's model? Pass --allow-partial-load to "
            "start from it anyway"
        )
    _load_checkpoint_to_model(model, checkpoint, strict=False, revise_keys=[(r"^module\.", "")])
    return report


def _load_report(model: Any, state: dict[str, Any]) -> LoadReport:
    import torch

    own = model.state_dict()
    parameters = dict(model.named_parameters())
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    loaded = [k for k in own if k in tensors and tensors[k].shape == own[k].shape]
    mismatched = [k for k in own if k in tensors and tensors[k].shape != own[k].shape]
    total_elements = sum(p.numel() for p in parameters.values()) or 1
    loaded_elements = sum(parameters[k].numel() for k in loaded if k in parameters)
    return LoadReport(
        loaded=len(loaded),
        total=len(own),
        missing=sum(1 for k in own if k not in tensors),
        unexpected=sum(1 for k in tensors if k not in own),
        mismatched=len(mismatched),
        loaded_fraction=loaded_elements / total_elements,
    )


def detcompress_meta(checkpoint: Any) -> dict[str, Any] | None:
    """The `meta.detcompress` block of a detcompress checkpoint, else None."""
    if not isinstance(checkpoint, dict):
        return None
    meta = checkpoint.get("meta")
    block = meta.get("detcompress") if isinstance(meta, dict) else None
    return block if isinstance(block, dict) else None
