"""An exported model verified against the PyTorch model it came from, before its folder
appears: raw outputs to a tolerance (FP32) or to a bound measured from PyTorch's own
sensitivity to input noise (int8), and detections with postprocessing inside matched one to one
with mmdet's predict mode."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detcompress import console
from detcompress.deploy.graph import (
    DeployableDetector,
    NMSParams,
    Preprocessing,
    normalize,
    pad_batch,
)
from detcompress.errors import DetcompressError
from detcompress.model.load import LoadedDetector

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
# A twin also scores alike: FP32 to float rounding, int8 to what a rounding flip can move.
MAX_SCORE_DIFF = {"fp32": 0.01, "int8": 0.15}
# With fewer detections than this to compare, agreement on them says little (an untrained
# model detects nothing): the network's raw outputs are compared as well.
MIN_DETECTIONS_COMPARED = 10


def repeat_to(images: torch.Tensor, count: int) -> torch.Tensor:
    return images.repeat(-(-count // len(images)), 1, 1, 1)[:count]


def verification_batch(loaded: LoadedDetector, prep: Preprocessing, count: int) -> torch.Tensor:
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
    # Whole gray levels, as decoded images have (a uint8-input export sees exactly these).
    shape = (count, 3, prep.height, prep.width)
    return torch.randint(0, 256, shape, generator=generator).float()


@dataclass
class _Reference:
    raw: list[np.ndarray] | None = None
    noise_mean_abs_diff: float = 0.0  # of the raw outputs under INT8_NOISE_LEVEL input noise
    detections: list[np.ndarray] | None = None  # per image: [k, 6] label, score, x1, y1, x2, y2
    noise_agreement: float = 1.0  # of the detections under INT8_NOISE_LEVEL input noise
    limit: int = -1  # detections per image at most
    input_size: int = 0  # the larger side of the verification images


# Boxes this many times the input size mean a model that has not learned (an untrained YOLOX
# after 150 iterations: coordinates up to 3.5e19); mmdet's class-aware NMS offsets boxes by
# class x the largest coordinate, in float32, and then keeps other boxes than per-class NMS.
DEGENERATE_BOX_FACTOR = 100


def pytorch_reference(
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
        outputs = [t.numpy() for t in graph(images)]
        if not all(np.isfinite(output).all() for output in outputs):
            raise DetcompressError(
                "the model's outputs hold NaN or inf on the verification images (its weights "
                "diverged in training); export refused: train it again from a finite "
                "checkpoint (a lower learning rate, or gradient clipping)"
            )
        if not postprocessing:
            noisy = [t.numpy() for t in graph(noisy_images)]
            return _Reference(raw=outputs, noise_mean_abs_diff=_mean_abs_diff(outputs, noisy))
    assert graph.nms is not None  # postprocessing: the graph carries its NMS settings
    limit = graph.nms.max_per_image
    clean = _predict(detector, prep, images, limit)
    agreement = 1.0
    for draw in range(INT8_NOISE_DRAWS):
        if draw:
            noisy_images = (
                images + torch.randn(images.shape, generator=generator) * INT8_NOISE_LEVEL
            )
        noisy = _predict(detector, prep, noisy_images, limit)
        agreement = min(agreement, detection_agreement(clean, noisy, min_score, "int8", limit)[0])
    return _Reference(
        detections=clean,
        noise_agreement=agreement,
        limit=limit,
        input_size=int(max(images.shape[-2:])),
    )


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


def verify_export(
    fmt: str,
    path: Path,
    images: torch.Tensor,
    chunk: int,
    reference: _Reference,
    precision: str,
    params: NMSParams | None,
    min_score: float,
    failure_hint: str = "",
) -> dict[str, Any]:
    """`failure_hint`: a sentence added to the error when the check fails."""
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
        raise DetcompressError(
            f"verification of {path.name} failed: {check['summary']}{failure_hint}"
        )
    return check


def int8_saturation_hint(precision: str, nncf_config: dict[str, Any]) -> str:
    """Why an int8 export may deviate on this CPU, and what to do, where that applies: weights
    using all 8 bits saturate AVX2's int16 products (measured: ResNet + FPN detectors deviate
    several times PyTorch's own noise in both runtimes; NNCF's overflow fix removes it)."""
    from detcompress.measure.latency import lacks_int8_dot_product

    compression = nncf_config.get("compression")
    algorithms = compression if isinstance(compression, list) else [compression or {}]
    fixed = any(a.get("overflow_fix") == "enable" for a in algorithms if isinstance(a, dict))
    if precision != "int8" or fixed or not lacks_int8_dot_product():
        return ""
    return (
        "; this CPU has no VNNI/AMX, so int8 products saturate at int16 unless the weights use 7 "
        "bits: compress with --cfg-options nncf_config.compression.overflow_fix=enable"
    )


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
        # The float floor, as for FP32: outputs of a network that gives ~0 everywhere (random
        # weights) do not move under noise, and float rounding is then all that differs.
        passed = mean_abs <= max(bound, FP32_RELATIVE_TOLERANCE * max(1.0, mean_ref))
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
    these: np.ndarray, others: np.ndarray, min_score: float, precision: str
) -> tuple[int, int]:
    """(detections of `these` scoring >= min_score, how many of them have no twin in `others`:
    same label, IoU >= MIN_IOU, score within MAX_SCORE_DIFF)."""
    strong = these[these[:, 1] >= min_score]
    missing = 0
    for det in strong:
        alike = (others[:, 0] == det[0]) & (
            np.abs(others[:, 1] - det[1]) <= MAX_SCORE_DIFF[precision]
        )
        if not any(_iou(det[2:], twin[2:]) >= MIN_IOU[precision] for twin in others[alike]):
            missing += 1
    return len(strong), missing


def detection_agreement(
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
            n, m = _unmatched(these, others, floor, precision)
            checked += n
            missing += m
    return (1.0 - missing / checked if checked else 1.0), checked


def _compare_detections(
    reference: _Reference, detections: np.ndarray, precision: str, min_score: float
) -> dict[str, Any]:
    assert reference.detections is not None
    per_image = [detections[detections[:, 0] == i][:, 1:] for i in range(len(reference.detections))]
    agreement, checked = detection_agreement(
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
            f"{min_score:.2f} have a twin (same label, IoU >= {MIN_IOU[precision]}, score within "
            f"{MAX_SCORE_DIFF[precision]}; required "
            f"{required:.1%}{basis})"
        )
    else:
        summary = (
            f"detections vs mmdet's predict mode: none scores >= {min_score:.2f}, nothing to "
            "compare (an untrained model?)"
        )
    boxes = [np.abs(d[:, 2:]).max() for d in reference.detections if len(d)]
    largest = float(max(boxes, default=0.0))
    if agreement < required and largest > DEGENERATE_BOX_FACTOR * reference.input_size > 0:
        summary += (
            f"; mmdet's own boxes reach coordinates of {largest:.3g} on a "
            f"{reference.input_size}-pixel input: the model has not converged (boxes that large "
            "make mmdet's class-aware NMS unreliable as a reference); train it further"
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
