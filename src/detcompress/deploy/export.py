"""checkpoint -> OpenVINO IR and/or ONNX, FP32 or int8, with or without postprocessing inside,
self-describing, verified against the PyTorch model before the output folder appears."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detcompress import console
from detcompress.deploy import DETECTION_COLUMNS, DETECTIONS_OUTPUT, INPUT_NAME
from detcompress.deploy.graph import (
    DeployableDetector,
    NMSParams,
    Preprocessing,
    nms_params,
    normalize,
    pad_batch,
    preprocessing_of,
)
from detcompress.errors import DetcompressError, OutputExistsError
from detcompress.files import atomic_dir, check_output_dir
from detcompress.model.load import LoadedDetector, load_detector, sha256_of

FORMATS = {"openvino": "model.xml", "onnx": "model.onnx"}
METADATA_FILE = "model.json"
METADATA_VERSION = 1

# Verification tolerances. FP32: the exported graph computes what torch computes, in another
# order; compiled in true f32 the outputs agree to float rounding (measured ~1e-5 relative).
FP32_RELATIVE_TOLERANCE = 1e-3
# int8: a value that lands near a rounding boundary can round either way in another runtime, and the
# one-level step propagates through every later quantizer. The PyTorch model is as sensitive to its
# own input: half a gray level of noise moves the demo's int8 outputs by ~5% on average (and
# NNCF's quantizers vs torch's, after strip, by ~3%). So the bound is measured, not guessed: the
# exported model may deviate from PyTorch by at most INT8_NOISE_FACTOR x the mean deviation of
# PyTorch itself under INT8_NOISE_LEVEL gray levels of Gaussian input noise.
INT8_NOISE_LEVEL = 0.5
INT8_NOISE_FACTOR = 2.0
# Detections inside the graph vs mmdet's predict mode: every detection scoring clearly above the
# threshold (by this margin) must have a twin (same label, IoU >= MIN_IOU) on the other side.
# int8 detections near the threshold come and go with the same rounding flips as above, so an int8
# model may miss at most INT8_NOISE_FACTOR x the twins PyTorch itself misses under input noise
# (the worst of INT8_NOISE_DRAWS draws), and at least INT8_MIN_ALLOWED_MISSES of them: with a few
# detections one flip is already a large share.
INT8_NOISE_DRAWS = 3
INT8_MIN_ALLOWED_MISSES = 0.05
DETECTION_SCORE_MARGIN = 0.01
MIN_IOU = {"fp32": 0.99, "int8": 0.8}


@dataclass
class ExportResult:
    out_dir: Path
    files: dict[str, Path]
    metadata: dict[str, Any]
    verification: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"exported {self.metadata['precision']} model to {self.out_dir}:"]
        for fmt, path in self.files.items():
            lines.append(f"  {fmt}: {path.name} ({model_size(path) / 1e6:.2f} MB)")
        for fmt, check in self.verification.items():
            lines.append(f"  verified {fmt}: {check['summary']}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "files": {k: str(v) for k, v in self.files.items()},
            "precision": self.metadata["precision"],
            "postprocessing": self.metadata["postprocessing"],
            "input_shape": self.metadata["input"]["shape"],
            "verification": {
                fmt: {k: v for k, v in check.items() if k != "summary"}
                for fmt, check in self.verification.items()
            },
        }


def model_size(path: Path) -> int:
    """Bytes on disk of a model file, with an IR's .bin."""
    size = path.stat().st_size
    weights = path.with_suffix(".bin")
    return size + (weights.stat().st_size if path.suffix == ".xml" and weights.exists() else 0)


def formats_of(to: str) -> list[str]:
    if to == "all":
        return list(FORMATS)
    if to not in FORMATS:
        raise DetcompressError(f"--to is '{to}'; valid: {', '.join([*FORMATS, 'all'])}")
    return [to]


def default_out_dir(checkpoint: Path) -> Path:
    return checkpoint.parent / f"{checkpoint.stem}_export"


def export(
    checkpoint: Path,
    to: str = "openvino",
    out: Path | None = None,
    input_shape: tuple[int, int] | None = None,
    batch: int = 1,
    dynamic_batch: bool = False,
    postprocessing: bool | None = None,
    fp16_weights: bool = False,
    force: bool = False,
    config: Path | None = None,
    trust_checkpoint: bool = False,
    verify_images: int = 4,
) -> ExportResult:
    formats = formats_of(to)
    if batch < 1:
        raise DetcompressError(f"--batch is {batch}; it must be at least 1")
    if dynamic_batch and batch != 1:
        raise DetcompressError(
            f"--batch {batch} with --dynamic-batch: a dynamic batch has no fixed size; give one "
            "of the two"
        )
    out_dir = out or default_out_dir(checkpoint)
    check_output_dir(out_dir, "--out")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise OutputExistsError(f"{out_dir}: already exists; choose another --out or pass --force")

    loaded = load_detector(checkpoint, config, trust_checkpoint)
    prep = preprocessing_of(loaded.cfg, input_shape, str(checkpoint))
    if postprocessing is None:
        postprocessing = bool(loaded.meta.get("nncf_compress_postprocessing", True))
    images = _verification_batch(loaded, prep, max(verify_images, batch))
    # A static batch runs the images in chunks of that size; a dynamic one in chunks of 2.
    chunk = 2 if dynamic_batch else batch
    images = _exactly(images, -(-len(images) // chunk) * chunk)
    example = images[:chunk]
    detector = loaded.model
    if loaded.has_nncf_hooks:
        from detcompress.compression import nncf_adapter

        detector = nncf_adapter.strip_for_export(detector, normalize(prep, example[:1]))
    detector.eval()
    graph = DeployableDetector(detector, prep, decode_boxes=postprocessing).eval()
    params = nms_params(detector.bbox_head) if postprocessing else None
    output_names = ["boxes", "scores"] if postprocessing else graph.raw_output_names
    precision = loaded.precision
    metadata = _metadata(loaded, prep, graph, params, precision, batch, dynamic_batch, formats)

    files: dict[str, Path] = {}
    verification: dict[str, dict[str, Any]] = {}
    min_score = (params.score_threshold if params else 0.0) + DETECTION_SCORE_MARGIN
    reference = _reference(graph, detector, prep, images, min_score)
    with atomic_dir(out_dir, replace=force) as tmp:
        for fmt in formats:
            path = tmp / FORMATS[fmt]
            console.log.info(f"exporting {fmt}: {out_dir / path.name}")
            with torch.no_grad():
                if fmt == "openvino":
                    _export_openvino(
                        graph,
                        example,
                        path,
                        output_names,
                        params,
                        metadata,
                        None if dynamic_batch else batch,
                        fp16_weights,
                    )
                else:
                    _export_onnx(
                        graph, example, path, output_names, params, metadata, dynamic_batch
                    )
            verification[fmt] = _verify(
                fmt, path, images, chunk, reference, precision, params, min_score
            )
            console.log.info(f"verified {fmt}: {verification[fmt]['summary']}")
            files[fmt] = out_dir / path.name
        metadata["verification"] = {
            k: {m: n for m, n in v.items() if m != "summary"} for k, v in verification.items()
        }
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    files["metadata"] = out_dir / METADATA_FILE
    return ExportResult(out_dir, files, metadata, verification)


def _exactly(images: torch.Tensor, count: int) -> torch.Tensor:
    return images.repeat(-(-count // len(images)), 1, 1, 1)[:count]


def _verification_batch(loaded: LoadedDetector, prep: Preprocessing, count: int) -> torch.Tensor:
    """Validation images through the config's test pipeline, padded to the export size; random
    images when the dataset is not on this machine (verification is then weaker: said so)."""
    from detcompress.config.mmdet_config import check_data_paths
    from detcompress.errors import ConfigError

    try:
        check_data_paths(loaded.cfg, loaded.path, ("test",))
        from mmdet.registry import DATASETS

        dataset = DATASETS.build(loaded.cfg.test_dataloader.dataset)
        picked = [dataset[i]["inputs"] for i in range(min(count, len(dataset)))]
        if picked:
            return pad_batch(picked, prep)
    except ConfigError as exc:
        console.log.warning(f"verifying on random images ({exc})")
    generator = torch.Generator().manual_seed(0)
    return torch.rand(count, 3, prep.height, prep.width, generator=generator) * 255


def _metadata(
    loaded: LoadedDetector,
    prep: Preprocessing,
    graph: DeployableDetector,
    params: NMSParams | None,
    precision: str,
    batch: int,
    dynamic_batch: bool,
    formats: list[str],
) -> dict[str, Any]:
    from detcompress.train.runner import package_versions

    if params is not None:
        outputs = [
            {
                "name": DETECTIONS_OUTPUT,
                "shape": [-1, len(DETECTION_COLUMNS)],
                "columns": DETECTION_COLUMNS,
                "meaning": "final detections after NMS, boxes in input-image pixels, sorted by "
                "image then score",
            }
        ]
    else:
        outputs = [
            {
                "name": name,
                "meaning": f"head output '{name.split('.')[0]}' of level "
                f"{name.split('.')[1]}, raw (mmdet's {type(graph.detector.bbox_head).__name__}"
                ".predict_by_feat decodes it)",
            }
            for name in graph.raw_output_names
        ]
    return {
        "format_version": METADATA_VERSION,
        "task": "detection",
        "precision": precision,
        "classes": loaded.classes,
        "input": {
            "name": INPUT_NAME,
            "shape": [-1 if dynamic_batch else batch, 3, prep.height, prep.width],
            "layout": "NCHW",
            "dtype": "float32",
            "channel_order": "BGR",
            "value_range": [0, 255],
            "inside_model": ["bgr_to_rgb"] * prep.bgr_to_rgb + ["(x - mean) / std"],
        },
        "preprocessing": prep.to_json(),
        "postprocessing": params is not None,
        "nms": params.to_json() if params is not None else None,
        "head": type(graph.detector.bbox_head).__name__,
        "outputs": outputs,
        "output_groups": {"names": graph.groups, "levels": graph.group_sizes},
        "files": {fmt: FORMATS[fmt] for fmt in formats},
        "nncf_config": loaded.meta.get("nncf_config") or {},
        "config_text": loaded.cfg.pretty_text,
        "source_checkpoint": {"path": str(loaded.path), "sha256": sha256_of(loaded.path)},
        "versions": package_versions("nncf", "openvino", "onnx", "onnxruntime"),
    }


def _export_openvino(
    graph: DeployableDetector,
    example: torch.Tensor,
    path: Path,
    output_names: list[str],
    params: NMSParams | None,
    metadata: dict[str, Any],
    batch: int | None,
    fp16_weights: bool,
) -> None:
    from detcompress.deploy import openvino_backend

    model = openvino_backend.convert(graph, example, batch, output_names)
    if params is not None:
        model = openvino_backend.append_nms(model, params)
    openvino_backend.save(model, path, metadata, fp16_weights)


def _export_onnx(
    graph: DeployableDetector,
    example: torch.Tensor,
    path: Path,
    output_names: list[str],
    params: NMSParams | None,
    metadata: dict[str, Any],
    dynamic_batch: bool,
) -> None:
    from detcompress.deploy import onnx_backend

    onnx_backend.export(graph, example, path, output_names, dynamic_batch)
    if params is not None:
        onnx_backend.append_nms(path, params)
    onnx_backend.set_metadata(path, metadata)


# ---------------------------------------------------------------------------------------------
# Verification


@dataclass
class _Reference:
    raw: list[np.ndarray] | None = None
    noise_mean_abs_diff: float = 0.0  # of the raw outputs under INT8_NOISE_LEVEL input noise
    detections: list[np.ndarray] | None = None  # per image: [k, 6] label, score, x1, y1, x2, y2
    noise_agreement: float = 1.0  # of the detections under INT8_NOISE_LEVEL input noise
    limit: int = -1  # detections per image at most


def _reference(
    graph: DeployableDetector,
    detector: Any,
    prep: Preprocessing,
    images: torch.Tensor,
    min_score: float,
) -> _Reference:
    """PyTorch's outputs (raw, or with `min_score` mmdet's detections) and how much they move
    under a little input noise."""
    postprocessing = graph.decoder is not None
    generator = torch.Generator().manual_seed(0)
    noisy_images = images + torch.randn(images.shape, generator=generator) * INT8_NOISE_LEVEL
    with torch.no_grad():
        if not postprocessing:
            raw = [t.numpy() for t in graph(images)]
            noisy = [t.numpy() for t in graph(noisy_images)]
            return _Reference(raw=raw, noise_mean_abs_diff=_mean_abs_diff(raw, noisy))
    limit = nms_params(detector.bbox_head).max_per_image
    clean = _predict(detector, prep, images, limit)
    agreement = 1.0
    for draw in range(INT8_NOISE_DRAWS):
        if draw:
            noisy_images = (
                images + torch.randn(images.shape, generator=generator) * INT8_NOISE_LEVEL
            )
        noisy = _predict(detector, prep, noisy_images, limit)
        agreement = min(agreement, _agreement(clean, noisy, min_score, "int8", limit)[0])
    return _Reference(detections=clean, noise_agreement=agreement, limit=limit)


def _predict(
    detector: Any, prep: Preprocessing, images: torch.Tensor, limit: int
) -> list[np.ndarray]:
    """mmdet's predict mode: per image [k, 6] (label, score, x1, y1, x2, y2), sorted by score,
    at most `limit` (-1: all)."""
    from mmdet.structures import DetDataSample

    with torch.no_grad():
        shape = (prep.height, prep.width)
        samples = [
            DetDataSample(
                metainfo=dict(
                    img_shape=shape,
                    ori_shape=shape,
                    pad_shape=shape,
                    batch_input_shape=shape,
                    scale_factor=(1.0, 1.0),
                )
            )
            for _ in range(len(images))
        ]
        results = detector(normalize(prep, images), samples, mode="predict")
    detections: list[np.ndarray] = []
    for result in results:
        inst = result.pred_instances
        detections.append(
            np.concatenate(
                [
                    inst.labels.float().numpy()[:, None],
                    inst.scores.numpy()[:, None],
                    inst.bboxes.numpy(),
                ],
                axis=1,
            )[: limit if limit > 0 else None]
        )
    return detections


def _run(
    fmt: str, path: Path, images: torch.Tensor, chunk: int, detections: bool
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Outputs of the exported model on `images` in batches of `chunk` (detections renumbered
    to the image's index in `images`), plus what its runtime says about int8."""
    infer, info = _runtime(fmt, path)
    parts = [infer(images[i : i + chunk].numpy()) for i in range(0, len(images), chunk)]
    if detections:
        for start, part in zip(range(0, len(images), chunk), parts, strict=True):
            part[0][:, 0] += start
        return [np.concatenate([p[0] for p in parts])], info
    return [np.concatenate(outs) for outs in zip(*parts, strict=True)], info


def _runtime(fmt: str, path: Path) -> tuple[Any, dict[str, Any]]:
    if fmt == "openvino":
        from detcompress.deploy import openvino_backend

        # True f32 for the comparison (bf16 on AMX would blur it); int8 layers stay int8.
        compiled = openvino_backend.compile_model(path, f32=True)
        int8, convs = openvino_backend.int8_convolutions(compiled)
        info = {
            "int8_convolutions": int8,
            "convolutions": convs,
            "fake_quantize_ops": openvino_backend.fake_quantize_count(path),
        }
        return lambda x: openvino_backend.infer(compiled, x), info
    from detcompress.deploy import onnx_backend

    counts = onnx_backend.operation_counts(path)
    info = {
        "quantize_linear_ops": counts.get("QuantizeLinear", 0),
        "dequantize_linear_ops": counts.get("DequantizeLinear", 0),
    }
    sess = onnx_backend.session(path)
    return lambda x: onnx_backend.infer(sess, x), info


def _verify(
    fmt: str,
    path: Path,
    images: torch.Tensor,
    chunk: int,
    reference: _Reference,
    precision: str,
    params: NMSParams | None,
    min_score: float,
) -> dict[str, Any]:
    outputs, info = _run(fmt, path, images, chunk, detections=params is not None)
    if precision == "int8":
        quantized = info.get("int8_convolutions", info.get("quantize_linear_ops", 0))
        if not quantized:
            raise DetcompressError(
                f"verification of {path.name} failed: the model is compressed but no operation "
                "of the exported model runs in int8"
            )
    if reference.raw is not None:
        check = _compare_raw(reference, outputs, precision)
    else:
        check = _compare_detections(reference, outputs[0], precision, min_score)
    check.update(info)
    int8_note = ""
    if "int8_convolutions" in info:
        int8_note = f"; {info['int8_convolutions']}/{info['convolutions']} convolutions run in int8"
    elif precision == "int8":
        int8_note = f"; {info['quantize_linear_ops']} QuantizeLinear operations"
    check["summary"] = check["summary"] + int8_note
    if not check["passed"]:
        raise DetcompressError(f"verification of {path.name} failed: {check['summary']}")
    return check


def _mean_abs_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(np.mean([np.abs(x - y).mean() for x, y in zip(a, b, strict=True)]))


def _compare_raw(
    reference: _Reference, outputs: list[np.ndarray], precision: str
) -> dict[str, Any]:
    assert reference.raw is not None
    ref = reference.raw
    max_abs = max(float(np.abs(r - o).max()) for r, o in zip(ref, outputs, strict=True))
    scale = max(float(np.abs(r).max()) for r in ref)
    mean_abs = _mean_abs_diff(ref, outputs)
    mean_ref = float(np.mean([np.abs(r).mean() for r in ref]))
    if precision == "fp32":
        passed = max_abs <= FP32_RELATIVE_TOLERANCE * max(1.0, scale)
        limit = f"limit: max |diff| <= {FP32_RELATIVE_TOLERANCE:g} x max(1, max |output|)"
    else:
        bound = INT8_NOISE_FACTOR * reference.noise_mean_abs_diff
        passed = mean_abs <= max(bound, FP32_RELATIVE_TOLERANCE * mean_ref)
        limit = (
            f"limit: mean |diff| <= {INT8_NOISE_FACTOR:g} x {reference.noise_mean_abs_diff:.3g}, "
            f"PyTorch's own change under {INT8_NOISE_LEVEL:g} gray levels of input noise"
        )
    return {
        "passed": passed,
        "max_abs_diff": max_abs,
        "mean_abs_diff": mean_abs,
        "max_abs_output": scale,
        "mean_abs_output": mean_ref,
        "noise_mean_abs_diff": reference.noise_mean_abs_diff,
        "summary": f"raw outputs vs PyTorch: max |diff| {max_abs:.3g} (outputs up to {scale:.3g}), "
        f"mean |diff| {mean_abs:.3g} (mean |output| {mean_ref:.3g}; {limit})",
    }


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _unmatched(
    these: np.ndarray, others: np.ndarray, min_score: float, min_iou: float
) -> tuple[int, int]:
    """(detections of `these` scoring >= min_score, how many of them have no twin in `others`)."""
    strong = these[these[:, 1] >= min_score]
    missing = 0
    for det in strong:
        twins = others[others[:, 0] == det[0]]
        if not any(_iou(det[2:], twin[2:]) >= min_iou for twin in twins):
            missing += 1
    return len(strong), missing


def _agreement(
    reference: list[np.ndarray],
    detections: list[np.ndarray],
    min_score: float,
    precision: str,
    limit: int,
) -> tuple[float, int]:
    """(share of detections scoring >= min_score, on either side, that have a twin on the
    other, how many were checked). Where a side stopped at `limit` detections, only those
    clearly above its last one count (which boxes make the cut there is a near-tie)."""
    checked = missing = 0
    for ref, mine in zip(reference, detections, strict=True):
        floor = min_score
        for side in (ref, mine):
            if 0 < limit <= len(side):
                floor = max(floor, float(side[:, 1].min()) + DETECTION_SCORE_MARGIN)
        for these, others in ((ref, mine), (mine, ref)):
            n, m = _unmatched(these, others, floor, MIN_IOU[precision])
            checked += n
            missing += m
    return (1.0 - missing / checked if checked else 1.0), checked


def _compare_detections(
    reference: _Reference, detections: np.ndarray, precision: str, min_score: float
) -> dict[str, Any]:
    assert reference.detections is not None
    per_image = [detections[detections[:, 0] == i][:, 1:] for i in range(len(reference.detections))]
    agreement, checked = _agreement(
        reference.detections, per_image, min_score, precision, reference.limit
    )
    required = 1.0
    basis = ""
    if precision == "int8":
        misses = max(INT8_NOISE_FACTOR * (1.0 - reference.noise_agreement), INT8_MIN_ALLOWED_MISSES)
        required = 1.0 - misses
        basis = (
            f": PyTorch's own agreement under {INT8_NOISE_LEVEL:g} gray levels of input noise is "
            f"{reference.noise_agreement:.1%}"
        )
    if checked:
        summary = (
            f"detections vs mmdet's predict mode: {agreement:.1%} of {checked} scoring >= "
            f"{min_score:.2f} have a twin (same label, IoU >= {MIN_IOU[precision]}; required "
            f"{required:.1%}{basis})"
        )
    else:
        summary = (
            f"detections vs mmdet's predict mode: none scores >= {min_score:.2f}, nothing to "
            "compare (an untrained model?)"
        )
    return {
        "passed": agreement >= required,
        "detection_agreement": agreement,
        "required_agreement": required,
        "detections_checked": checked,
        "detections_reference": int(sum(len(r) for r in reference.detections)),
        "detections_exported": len(detections),
        "summary": summary,
    }
