"""One evaluation for PyTorch checkpoints, OpenVINO IR and ONNX models: mmengine's test loop
with the config's test dataloader and evaluator, so every number is comparable."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmengine.hooks import Hook

from detcompress import console
from detcompress.errors import CheckpointError, ConfigError, DetcompressError
from detcompress.files import check_output_dir
from detcompress.model.load import model_kind

DEVICES = ("CPU", "GPU", "AUTO")
PRECISIONS = ("auto", "f32")
TABLE_KEYS = (
    ("bbox_mAP", "mAP"),
    ("bbox_mAP_50", "mAP50"),
    ("bbox_mAP_75", "mAP75"),
    ("bbox_mAP_s", "small"),
    ("bbox_mAP_m", "medium"),
    ("bbox_mAP_l", "large"),
)


@dataclass
class EvalResult:
    model: str
    backend: str
    precision: str
    dataset: str
    num_images: int
    images_per_second: float
    metrics: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "backend": self.backend,
            "precision": self.precision,
            "dataset": self.dataset,
            "num_images": self.num_images,
            "images_per_second": round(self.images_per_second, 3),
            **self.metrics,
        }

    def table(self) -> str:
        header = ["model", "backend", "precision", *(label for _, label in TABLE_KEYS), "images/s"]
        row = [self.model, self.backend, self.precision]
        row += [f"{self.metrics[key]:.3f}" if key in self.metrics else "-" for key, _ in TABLE_KEYS]
        row.append(f"{self.images_per_second:.1f}")
        widths = [max(len(h), len(r)) for h, r in zip(header, row, strict=True)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
        lines.append("  ".join(r.ljust(w) for r, w in zip(row, widths, strict=True)))
        return "\n".join(lines)


def evaluate(
    target: Path,
    config: Path | None = None,
    cfg_options: list[str] | None = None,
    device: str = "CPU",
    precision: str = "auto",
    batch_size: int | None = None,
    show_dir: Path | None = None,
    trust_checkpoint: bool = False,
) -> EvalResult:
    """mAP of a checkpoint, IR or ONNX model through mmengine's test loop."""
    # Long on purpose: one path for three model kinds (.pth, IR, ONNX), a few lines each.
    kind = model_kind(target)
    from detcompress.model.detector import openvino_device_name

    device = openvino_device_name(device)
    if device not in DEVICES:
        raise DetcompressError(f"--device is '{device}'; valid: {', '.join(DEVICES)}")
    if precision not in PRECISIONS:
        raise DetcompressError(f"--precision is '{precision}'; valid: {', '.join(PRECISIONS)}")
    if batch_size is not None and batch_size < 1:
        raise DetcompressError(f"--batch-size is {batch_size}; it must be at least 1")
    check_output_dir(show_dir, "--show-dir")

    if kind == "pytorch":
        from detcompress.model import detector

        detector.select_device({"CPU": "cpu", "GPU": "cuda", "AUTO": "auto"}[device])
        from detcompress.model.load import load_detector

        # The options reach the model too (e.g. model.test_cfg.score_thr): applied before it is
        # built.
        loaded = load_detector(target, config, trust_checkpoint, cfg_options)
        cfg, model = loaded.cfg, loaded.model
        model_precision = "int8 (fake-quantized)" if loaded.quantized else "fp32"
        backend = "pytorch"
    else:
        cfg, metadata = _exported_config(target, kind, config, trust_checkpoint)
        from detcompress.config.mmdet_config import apply_cfg_options

        apply_cfg_options(cfg, cfg_options, target)
        _check_classes(cfg, metadata, target)
        model, backend, runs_in = _exported_model(target, cfg, metadata, device, precision)
        # What the model really runs in: an FP32 IR runs in bf16 on CPUs with AMX.
        model_precision = "int8" if metadata["precision"] == "int8" else runs_in

    from detcompress.config.mmdet_config import check_data_paths

    check_data_paths(cfg, target, ("test",))
    if batch_size is not None:
        cfg.test_dataloader.batch_size = batch_size
    if not cfg.test_dataloader.get("num_workers"):  # torch refuses persistent workers then
        cfg.test_dataloader.persistent_workers = False
    metrics, seconds, images = _run_test_loop(cfg, model, show_dir)
    dataset = cfg.test_dataloader.dataset
    return EvalResult(
        model=str(target),
        backend=backend,
        precision=model_precision,
        dataset=str(Path(dataset.get("data_root", "")) / dataset.get("ann_file", "")),
        num_images=images,
        images_per_second=images / seconds if seconds > 0 else 0.0,
        metrics=_with_map_keys({k.split("/", 1)[-1]: float(v) for k, v in metrics.items()}),
    )


def _with_map_keys(metrics: dict[str, float]) -> dict[str, float]:
    """mmdet's CocoMetric reports nothing at all when the model made no detection above the
    config's score_thr; the mAP is then 0 (no recall at any threshold). Written out, so that
    `eval --json` always carries the keys that `bench --eval-json` reads."""
    if metrics:
        return metrics
    # The size buckets stay out: they are -1 where the dataset has no object of that size.
    return {"bbox_mAP": 0.0, "bbox_mAP_50": 0.0, "bbox_mAP_75": 0.0}


def _exported_config(
    target: Path, kind: str, config: Path | None, trust: bool
) -> tuple[Any, dict[str, Any]]:
    from detcompress.config.mmdet_config import load_mmdet_config
    from detcompress.config.stored import read_stored_config

    if kind == "openvino":
        from detcompress.deploy import openvino_backend

        metadata = openvino_backend.read_metadata(target)
    else:
        from detcompress.deploy import onnx_backend

        metadata = onnx_backend.read_metadata(target)
    if metadata is None:
        raise CheckpointError(
            f"{target}: holds no detcompress metadata (not written by `detcompress export`); "
            "export the checkpoint with detcompress to evaluate it"
        )
    cfg = (
        load_mmdet_config(config)
        if config is not None
        else read_stored_config(metadata["config_text"], target, trust, "config.py")
    )
    return cfg, metadata


def _check_classes(cfg: Any, metadata: dict[str, Any], target: Path) -> None:
    from detcompress.model.load import dataset_classes

    mine, theirs = list(metadata.get("classes") or []), dataset_classes(cfg)
    if mine != theirs:
        raise ConfigError(
            f"{target}: the model's classes ({_short(mine)}) differ from the test dataset's "
            f"({_short(theirs)}); pass the --config the model was trained with"
        )


def _short(names: list[str]) -> str:
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "") + f"; {len(names)} in all"


def _exported_model(
    target: Path, cfg: Any, metadata: dict[str, Any], device: str, precision: str
) -> tuple[Any, str, str]:
    from detcompress.deploy.exported_model import ExportedDetector, runtime

    head = None
    if not metadata["postprocessing"]:
        from mmdet.registry import MODELS

        from detcompress.patches import apply_mmdet_workarounds

        apply_mmdet_workarounds()
        head = MODELS.build(cfg.model).bbox_head.eval()  # mmdet's own postprocessing
    infer, backend, runs_in = runtime(target, device, f32=precision == "f32")
    return ExportedDetector(infer, metadata, head), backend, runs_in


def _run_test_loop(cfg: Any, model: Any, show_dir: Path | None) -> tuple[dict, float, int]:
    """mmengine's test loop in a scratch work dir; (metrics, model seconds, images)."""
    from mmengine.runner import Runner

    work_dir = Path(tempfile.mkdtemp(prefix="detcompress_eval_"))
    hooks = dict(cfg.get("default_hooks") or {})
    hooks.pop("checkpoint", None)
    if show_dir is not None:
        hooks["visualization"] = dict(
            type="DetVisualizationHook", draw=True, test_out_dir=str(show_dir.resolve())
        )
    timer = _Timer()
    # mmengine keeps one visualizer per name for the process: a second evaluation would reuse
    # the first one's (with its deleted work dir), so each gets its own.
    visualizer = dict(cfg.get("visualizer") or dict(type="DetLocalVisualizer"))
    visualizer["name"] = f"detcompress_eval_{work_dir.name}"
    try:
        runner = Runner(
            model=model,
            work_dir=str(work_dir),
            test_dataloader=cfg.test_dataloader,
            test_evaluator=cfg.test_evaluator,
            test_cfg=cfg.get("test_cfg") or dict(type="TestLoop"),
            default_hooks=hooks,
            custom_hooks=[timer],
            env_cfg=cfg.get("env_cfg", dict(dist_cfg=dict(backend="gloo"))),
            log_level="WARNING",
            visualizer=visualizer,
            default_scope=cfg.get("default_scope", "mmdet"),
            cfg=cfg,
        )
        with console.mmengine_output():
            metrics = runner.test()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return dict(metrics or {}), timer.seconds, timer.images


class _Timer(Hook):
    """Times the model's test steps (inference and postprocessing, not data loading; called
    first after each step, so not the drawing of --show-dir either)."""

    priority = "HIGHEST"

    def __init__(self) -> None:
        self.seconds = 0.0
        self.images = 0
        self._start = 0.0

    def before_test_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        self._start = time.perf_counter()

    def after_test_iter(
        self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None
    ) -> None:
        self.seconds += time.perf_counter() - self._start
        self.images += len(outputs or [])


class Validator:
    """mAP of an in-process model on the config's validation set (its val_dataloader and
    val_evaluator, as the Runner's validation), without a Runner: the accuracy-controlled
    search evaluates many variants of one model. The dataloader is built once."""

    def __init__(self, cfg: Any) -> None:
        import copy

        from mmengine.evaluator import Evaluator
        from mmengine.runner import Runner

        loader_cfg = copy.deepcopy(cfg.val_dataloader)
        if not loader_cfg.get("num_workers"):
            loader_cfg["persistent_workers"] = False
        self.loader = Runner.build_dataloader(loader_cfg, seed=0)
        self.evaluator = Evaluator(copy.deepcopy(cfg.val_evaluator))
        self.evaluator.dataset_meta = self.loader.dataset.metainfo
        self.images = len(self.loader.dataset)

    def metrics(self, model: Any) -> dict[str, float]:
        """The evaluator's metrics ('bbox_mAP', ...: fractions, mmdet's prefix removed)."""
        import torch

        was_training = model.training
        model.eval()
        with torch.no_grad(), console.mmengine_output():
            for batch in self.loader:
                self.evaluator.process(data_samples=model.val_step(batch), data_batch=batch)
            metrics = self.evaluator.evaluate(self.images)
        model.train(was_training)
        return _with_map_keys({k.split("/", 1)[-1]: float(v) for k, v in metrics.items()})

    def inputs(self, model: Any, images: int) -> list[Any]:
        """The model inputs (preprocessed batches) of the first `images` validation images."""
        batches: list[Any] = []
        seen = 0
        for batch in self.loader:
            if seen >= images:
                break
            batches.append(model.data_preprocessor(batch, False)["inputs"])
            seen += len(batches[-1])
        return batches
