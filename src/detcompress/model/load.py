"""A trained detector from its checkpoint: a detcompress checkpoint brings its config and
compression structure; a plain mmdet checkpoint needs its config (--config, or the config text
mmengine stored in its meta)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detcompress.errors import CheckpointError, DetcompressError


@dataclass
class LoadedDetector:
    path: Path
    cfg: Any
    model: Any  # in eval mode, on the CPU
    meta: dict[str, Any]  # meta.detcompress ({} for a plain mmdet checkpoint)
    compressed: bool

    @property
    def classes(self) -> list[str]:
        return dataset_classes(self.cfg)

    @property
    def quantized(self) -> bool:
        """Whether the compression includes int8 quantization (else pruning/sparsity only)."""
        from detcompress.compression.pipeline import is_quantized

        return self.compressed and is_quantized(self.meta.get("nncf_config") or {})

    @property
    def has_nncf_hooks(self) -> bool:
        """Whether NNCF's quantizers or sparsity masks are in the model (export strips them)."""
        from detcompress.compression.pipeline import needs_nncf

        return self.compressed and needs_nncf(self.meta.get("structure") or {})

    @property
    def precision(self) -> str:
        """'int8' or 'fp32', what an export of it computes in."""
        return "int8" if self.quantized else "fp32"


def dataset_classes(cfg: Any) -> list[str]:
    """The classes of the config's test dataset: its metainfo, else its dataset type's."""
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    dataset = cfg.test_dataloader.dataset
    classes = (dataset.get("metainfo") or {}).get("classes")
    if not classes:
        dataset_cls = DATASETS.get(dataset.get("type", ""))
        classes = getattr(dataset_cls, "METAINFO", {}).get("classes", [])
    return [str(c) for c in classes]


MODEL_KINDS = {".pth": "pytorch", ".xml": "openvino", ".onnx": "onnx"}


def model_kind(target: Path) -> str:
    """'pytorch', 'openvino' or 'onnx' for a model file that exists with everything it needs
    beside it; a clear error otherwise."""
    kind = MODEL_KINDS.get(target.suffix.lower())
    if kind is None and target.suffix.lower() == ".json":
        raise DetcompressError(
            f"{target}: a JSON file is not a model; give each 'detcompress eval --json' result "
            "with its own --eval-json"
        )
    if kind is None:
        raise DetcompressError(
            f"{target}: unknown model file type '{target.suffix}'; valid: "
            ".pth (checkpoint), .xml (OpenVINO IR), .onnx"
        )
    if target.is_dir():
        raise CheckpointError(f"{target}: is a folder; expected a model file (.pth, .xml, .onnx)")
    if not target.is_file():
        raise CheckpointError(f"{target}: no such file")
    if kind == "openvino" and not target.with_suffix(".bin").is_file():
        raise CheckpointError(
            f"{target}: its weights file {target.with_suffix('.bin').name} is missing beside it"
        )
    if kind != "pytorch":
        _check_readable(target, kind)
    return kind


def _check_readable(target: Path, kind: str) -> None:
    """A truncated or corrupt IR / ONNX file is one clear line, before anything else runs."""
    try:
        if kind == "openvino":
            from detcompress.deploy import openvino_backend

            openvino_backend.read_model(target)
        else:
            import onnx

            onnx.load(str(target), load_external_data=False)
    except Exception as exc:  # OpenVINO and protobuf raise many kinds; the user needs one line
        # OpenVINO's message starts with its own source location; the reason is the last line.
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        first = lines[-1][:200] if lines else ""
        what = "OpenVINO IR (.xml + .bin)" if kind == "openvino" else "ONNX model"
        raise CheckpointError(
            f"{target}: not a readable {what}, truncated or corrupt? ({type(exc).__name__}"
            f"{': ' + first if first else ''})"
        ) from None


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load_detector(
    path: Path,
    config: Path | None = None,
    trust_checkpoint: bool = False,
    cfg_options: list[str] | None = None,
) -> LoadedDetector:
    from detcompress.config.mmdet_config import load_mmdet_config
    from detcompress.config.stored import read_stored_config
    from detcompress.model import detector
    from detcompress.model.checkpoint import load_checkpoint
    from detcompress.model.rebuild import rebuild_compressed

    if not path.exists():  # a folder or a non-checkpoint file: load_checkpoint says what it is
        raise CheckpointError(f"{path}: no such checkpoint file")
    checkpoint = load_checkpoint(path, trust=trust_checkpoint)
    meta = detector.detcompress_meta(checkpoint) or {}
    if config is not None:
        cfg = load_mmdet_config(config)
    elif meta.get("config_text"):
        cfg = read_stored_config(
            meta["config_text"], path, trust_checkpoint, meta.get("config_name", "config.py")
        )
    else:
        stored = (checkpoint.get("meta") or {}).get("cfg") if isinstance(checkpoint, dict) else None
        if not isinstance(stored, str):
            raise CheckpointError(
                f"{path}: holds no config (not written by detcompress or mmengine); pass "
                "--config with the mmdet config it was trained with"
            )
        cfg = read_stored_config(stored, path, trust_checkpoint, "config.py")
    if cfg_options:
        from detcompress.config.mmdet_config import apply_cfg_options

        apply_cfg_options(cfg, cfg_options, path)
    model = detector.build_detector(cfg)
    compressed = bool(meta.get("compressed"))
    if compressed:
        model = rebuild_compressed(model, meta, checkpoint, path)
    else:
        detector.load_weights(model, checkpoint, path)
    model.eval()
    return LoadedDetector(path, cfg, model, meta, compressed)
