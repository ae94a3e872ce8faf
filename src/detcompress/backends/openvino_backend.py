"""Every OpenVINO call of detcompress: conversion from torch, NMS appended to the graph,
metadata in rt_info, compiled inference and the precision each layer really runs in."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import openvino.opset9 as opset9
import openvino.opset13 as ops
import torch

from detcompress.backends import DETECTIONS_OUTPUT, INPUT_NAME
from detcompress.deploy_graph import NMSParams

RT_INFO_KEY = ["detcompress", "metadata"]
INT8_PRECISIONS = {"u8", "i8"}


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


def append_nms(model: ov.Model, params: NMSParams) -> ov.Model:
    """boxes [N, M, 4] + scores [N, C, M] -> detections [K, 7] (image index, label, score,
    x1, y1, x2, y2), sorted by image and then by score, at most `max_per_image` per image."""
    boxes = model.get_results()[0].input_value(0)
    scores = model.get_results()[1].input_value(0)
    nms = opset9.multiclass_nms(
        boxes,
        scores,
        sort_result_type="score",
        sort_result_across_batch=False,
        output_type="i64",
        iou_threshold=params.iou_threshold,
        score_threshold=params.score_threshold,
        keep_top_k=params.max_per_image,
        background_class=-1,
        normalized=True,  # mmcv's nms: IoU without the +1 pixel offset
    )
    num_boxes = ops.gather(ops.shape_of(boxes), ops.constant(np.array([1], np.int64)), 0)
    image_index = ops.divide(nms.output(1), num_boxes)  # flat index = image * M + box
    detections = ops.concat([ops.convert(image_index, "f32"), nms.output(0)], axis=1)
    result = ops.result(detections)
    result.output(0).get_tensor().set_names({DETECTIONS_OUTPUT})
    return ov.Model([result], model.get_parameters(), model.get_friendly_name())


def save(model: ov.Model, xml: Path, metadata: dict[str, Any], fp16_weights: bool) -> None:
    model.set_rt_info(json.dumps(metadata), RT_INFO_KEY)
    ov.save_model(model, str(xml), compress_to_fp16=fp16_weights)


def read_metadata(xml: Path) -> dict[str, Any] | None:
    model = ov.Core().read_model(str(xml))
    if not model.has_rt_info(RT_INFO_KEY):
        return None
    result: dict[str, Any] = json.loads(model.get_rt_info(RT_INFO_KEY).astype(str))
    return result


def compile_model(xml: Path, device: str = "CPU", f32: bool = False) -> Any:
    """Compiled model; `f32` forces true fp32 (an FP32 IR otherwise runs in bf16 on AMX CPUs)."""
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32"} if f32 else {}
    return core.compile_model(str(xml), device, config)


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
    model = ov.Core().read_model(str(xml))
    return sum(1 for op in model.get_ops() if op.get_type_name() == "FakeQuantize")
