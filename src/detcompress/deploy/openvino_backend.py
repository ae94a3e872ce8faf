"""Every OpenVINO call of detcompress: conversion from torch, NMS appended to the graph,
metadata in rt_info, compiled inference and the precision each layer really runs in."""

from __future__ import annotations

import functools
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import torch

from detcompress.deploy import DETECTIONS_OUTPUT, INPUT_NAME
from detcompress.deploy.graph import NMSParams

RT_INFO_KEY = ["detcompress", "metadata"]
INT8_PRECISIONS = {"u8", "i8"}
NO_LIMIT = 1 << 30


def convert(
    module: torch.nn.Module, example: torch.Tensor, batch: int | None, output_names: list[str]
) -> ov.Model:
    """torch module -> ov.Model with a static H, W and a static (or dynamic: None) batch."""
    shape = [batch if batch is not None else -1, *example.shape[1:]]
    model = ov.convert_model(module, example_input=example, input=[shape])
    model.inputs[0].get_tensor().set_names({INPUT_NAME})
    for output, name in zip(model.outputs, output_names, strict=True):
        output.get_tensor().set_names({name})
    return model


@functools.cache
def core() -> ov.Core:
    """One OpenVINO Core per process: each Core starts its own plugin and thread pools (several of
    them next to onnxruntime's crashed the process)."""
    return ov.Core()


def _i64(value: Any) -> Any:
    return ops.constant(np.array(value, dtype=np.int64))


def append_nms(model: ov.Model, params: NMSParams) -> ov.Model:
    """boxes [N, M, 4] + scores [N, C, M] -> detections [K, 7] (image index, label, score,
    x1, y1, x2, y2), sorted by image and then by score, at most `max_per_image` per image.

    The same graph as the ONNX export's (NonMaxSuppression, a stable sort, a per-image rank),
    not OpenVINO's MulticlassNms: its CPU sort treats scores within 1e-6 as equal in a comparator
    that is then not a strict weak ordering, and with many near-equal low scores (an under-trained
    model, score_thr 0) it corrupts memory and crashes (openvino 2026.4, multiclass_nms.cpp)."""
    boxes = model.get_results()[0].input_value(0)
    scores = model.get_results()[1].input_value(0)
    per_class = params.max_per_image if params.max_per_image > 0 else NO_LIMIT
    nms = ops.non_max_suppression(
        boxes,
        scores,
        _i64([per_class]),
        ops.constant(np.array([params.iou_threshold], np.float32)),
        ops.constant(np.array([params.score_threshold], np.float32)),
        box_encoding="corner",
        sort_result_descending=False,
        output_type="i64",
    )
    valid = nms.output(2)  # [1]: the rows of selected_indices that hold a selection
    selected = ops.slice(nms.output(0), _i64([0]), valid, _i64([1]), _i64([0]))
    image = ops.gather(selected, _i64(0), 1)
    label = ops.gather(selected, _i64(1), 1)
    box = ops.gather(selected, _i64(2), 1)
    score = ops.gather_nd(scores, selected)
    xyxy = ops.gather_nd(
        boxes, ops.concat([ops.unsqueeze(image, _i64([1])), ops.unsqueeze(box, _i64([1]))], 1)
    )
    # Sort by image, then by score (descending): key = score - 4 * image, largest first.
    key = ops.subtract(score, ops.multiply(ops.convert(image, "f32"), ops.constant(np.float32(4))))
    count = ops.shape_of(key, "i64")
    order = ops.topk(key, ops.squeeze(count, _i64([0])), 0, "max", "value", "i64", stable=True)
    order = order.output(1)
    image, label, score, xyxy = (ops.gather(t, order, 0) for t in (image, label, score, xyxy))
    if params.max_per_image > 0:
        # rank of a detection within its image = position - first position of that image
        num_images = ops.gather(ops.shape_of(scores, "i64"), _i64(0), 0)
        images = ops.range(_i64(0), num_images, _i64(1), "i64")
        is_image = ops.equal(ops.unsqueeze(image, _i64([1])), ops.unsqueeze(images, _i64([0])))
        per_image = ops.reduce_sum(ops.convert(is_image, "i64"), _i64([0]), keep_dims=False)
        first = ops.gather(ops.cumsum(per_image, _i64(0), exclusive=True), image, 0)
        position = ops.range(_i64(0), ops.squeeze(count, _i64([0])), _i64(1), "i64")
        keep = ops.less(ops.subtract(position, first), _i64(params.max_per_image))
        kept = ops.squeeze(ops.non_zero(keep, "i64"), _i64([0]))
        image, label, score, xyxy = (ops.gather(t, kept, 0) for t in (image, label, score, xyxy))
    columns = [
        ops.unsqueeze(ops.convert(image, "f32"), _i64([1])),
        ops.unsqueeze(ops.convert(label, "f32"), _i64([1])),
        ops.unsqueeze(score, _i64([1])),
        xyxy,
    ]
    result = ops.result(ops.concat(columns, 1))
    result.output(0).get_tensor().set_names({DETECTIONS_OUTPUT})
    return ov.Model([result], model.get_parameters(), model.get_friendly_name())


def save(model: ov.Model, xml: Path, metadata: dict[str, Any], fp16_weights: bool) -> None:
    model.set_rt_info(json.dumps(metadata), RT_INFO_KEY)
    ov.save_model(model, str(xml), compress_to_fp16=fp16_weights)


def read_metadata(xml: Path) -> dict[str, Any] | None:
    model = core().read_model(str(xml))
    if not model.has_rt_info(RT_INFO_KEY):
        return None
    result: dict[str, Any] = json.loads(model.get_rt_info(RT_INFO_KEY).astype(str))
    return result


def compile_model(xml: Path, device: str = "CPU", f32: bool = False) -> Any:
    """Compiled model; `f32` forces true fp32 (an FP32 IR otherwise runs in bf16 on AMX CPUs)."""
    config = {"INFERENCE_PRECISION_HINT": "f32"} if f32 else {}
    return core().compile_model(str(xml), device, config)


def read_model(xml: Path) -> ov.Model:
    return core().read_model(str(xml))


def input_shape(model: ov.Model) -> list[int]:
    """The model input's shape, -1 for a dynamic dimension."""
    shape = model.inputs[0].get_partial_shape()
    return [d.get_length() if d.is_static else -1 for d in shape]


def with_batch(model: ov.Model, batch: int) -> ov.Model:
    """`model` with a static batch (the NMS subgraph has dynamic outputs, so any batch works)."""
    shape = input_shape(model)
    if shape[0] != batch:
        model.reshape({model.inputs[0].get_any_name(): [batch, *shape[1:]]})
    return model


def compile_for_speed(
    model: ov.Model, device: str, hint: str, f32: bool, threads: int | None
) -> Any:
    """Compiled with OpenVINO's LATENCY or THROUGHPUT performance hint."""
    config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
    if f32:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return core().compile_model(model, device, config)


def run_async(compiled: Any, image: np.ndarray, seconds: float) -> tuple[int, float, int]:
    """(frames done, elapsed seconds, requests in flight): as many asynchronous requests as
    the plugin finds optimal, refilled for `seconds` after one warm-up round."""
    jobs = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    queue = ov.AsyncInferQueue(compiled, jobs)
    for _ in range(jobs):
        queue.start_async({INPUT_NAME: image})
    queue.wait_all()
    calls = 0
    start = time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        queue.start_async({INPUT_NAME: image})  # blocks until a request is free
        calls += 1
    queue.wait_all()
    elapsed = time.perf_counter() - start
    return calls * int(image.shape[0]), elapsed, jobs


def inference_precision(compiled: Any) -> str:
    """The floating-point precision a compiled model runs its non-int8 layers in (bf16 on CPUs
    with AMX or avx512-bf16 unless f32 was forced, else f32)."""
    return str(compiled.get_property("INFERENCE_PRECISION_HINT").to_string())


def infer(compiled: Any, image: np.ndarray) -> list[np.ndarray]:
    request = compiled.create_infer_request()
    result = request.infer({INPUT_NAME: image})
    return [np.asarray(result[output]) for output in compiled.outputs]


def runtime_precisions(compiled: Any) -> Counter[tuple[str, str]]:
    """(layer type, precision it runs in) -> count, from the compiled runtime graph."""
    counts: Counter[tuple[str, str]] = Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
        counts[(layer, precision)] += 1
    return counts


def int8_convolutions(compiled: Any) -> tuple[int, int]:
    """(convolutions running in int8, all convolutions) of a compiled model."""
    counts = runtime_precisions(compiled)
    convs = {k: v for k, v in counts.items() if k[0] == "Convolution"}
    return sum(v for k, v in convs.items() if k[1] in INT8_PRECISIONS), sum(convs.values())


def fake_quantize_count(xml: Path) -> int:
    model = core().read_model(str(xml))
    return sum(1 for op in model.get_ops() if op.get_type_name() == "FakeQuantize")
