"""Every OpenVINO call of detcompress: conversion from torch, the NMS subgraph (`deploy/nms.py`),
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

from detcompress.deploy import DETECTIONS_OUTPUT, INPUT_NAME, MODEL_API_OUTPUTS, nms
from detcompress.deploy.graph import NMSParams, as_u8_nhwc

RT_INFO_KEY = ["detcompress", "metadata"]
INT8_PRECISIONS = {"u8", "i8"}


def convert(
    module: torch.nn.Module,
    example: torch.Tensor,
    batch: int | None,
    output_names: list[str],
    dynamic_size: bool = False,
) -> ov.Model:
    """torch module -> ov.Model with a static (or dynamic: None) batch and a static (or, with
    `dynamic_size`, dynamic) height and width."""
    assert batch is None or not dynamic_size  # a dynamic size has a dynamic batch too
    height, width = (-1, -1) if dynamic_size else example.shape[2:]
    shape = [batch if batch is not None else -1, example.shape[1], height, width]
    model = ov.convert_model(module, example_input=example, input=[shape])
    model.inputs[0].get_tensor().set_names({INPUT_NAME})
    for output, name in zip(model.outputs, output_names, strict=True):
        output.get_tensor().set_names({name})
    explicit_ceil_pooling(model)
    fake_quantize_after_slicing(model)
    int8_weight_dequantization(model)
    return model


def convert_onnx(path: Path, output_names: list[str]) -> ov.Model:
    """An exported ONNX graph -> ov.Model, with our input and output names."""
    model = ov.convert_model(str(path))
    model.inputs[0].get_tensor().set_names({INPUT_NAME})
    for output, name in zip(model.outputs, output_names, strict=True):
        output.get_tensor().set_names({name})
    explicit_ceil_pooling(model)
    fake_quantize_after_slicing(model)
    int8_weight_dequantization(model)
    return model


SLICES = ("Slice", "StridedSlice")


def _per_tensor(fake_quantize: Any) -> bool:
    shapes = [fake_quantize.input_value(i).get_partial_shape() for i in range(1, 5)]
    return all(s.is_static and int(np.prod(s.to_shape())) == 1 for s in shapes)


def fake_quantize_after_slicing(model: ov.Model) -> int:
    """Move a per-tensor FakeQuantize whose output is only sliced and concatenated again (YOLOX's
    Focus stem: four strided slices of the image, then a Concat) after that Concat. NNCF's
    PyTorch side quantizes the image before the slices; OpenVINO then runs them in a reference
    int8 kernel (demo at 128 px: 84 against 33 µs, ~3% of the whole IR). Slicing and
    concatenating commute with an elementwise per-tensor quantizer: the values are the same.
    Returns how many it moved."""
    moved = 0
    for fq in model.get_ordered_ops():
        if fq.get_type_name() != "FakeQuantize" or not _per_tensor(fq):
            continue
        slices: set[str] = set()
        concats: dict[str, Any] = {}
        pending = [t.get_node() for t in fq.output(0).get_target_inputs()]
        while pending:
            node = pending.pop()
            if node.get_type_name() in SLICES:
                slices.add(node.get_name())
                pending += [t.get_node() for t in node.output(0).get_target_inputs()]
            else:
                concats[node.get_name()] = node
        if not slices or len(concats) != 1:
            continue
        (concat,) = concats.values()
        if concat.get_type_name() != "Concat" or any(
            concat.input_value(i).get_node().get_name() not in slices
            for i in range(concat.get_input_size())
        ):
            continue
        after = list(concat.output(0).get_target_inputs())
        for target in fq.output(0).get_target_inputs():
            target.replace_source_output(fq.input_value(0))
        quantized = ops.fake_quantize(
            concat.output(0), *(fq.input_value(i) for i in range(1, 5)), fq.get_levels()
        )
        for target in after:
            target.replace_source_output(quantized.output(0))
        moved += 1
    if moved:
        model.validate_nodes_and_infer_types()
    return moved


def explicit_ceil_pooling(model: ov.Model) -> int:
    """Rewrite each MaxPool that rounds its output size up (PyTorch's `ceil_mode=True`, e.g.
    SSD's VGG16) as a MaxPool that rounds down over explicit end padding: the same windows, the
    same values. Why: the CPU plugin lowers a ceil-rounded MaxPool to a padding subgraph that
    OpenVINO's low-precision transformations do not pass int8 data through, so the convolution
    after it ran in float (SSD300: 4 of 35 convolutions, 28% of the int8 IR's time). Needs static
    spatial sizes (a dynamic-size export keeps its ceil pooling); returns how many it rewrote."""
    rewritten = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "MaxPool":
            continue
        attrs = node.get_attributes()
        in_shape = node.input(0).get_partial_shape()
        out_shape = node.output(0).get_partial_shape()
        indices_used = node.get_output_size() > 1 and len(node.output(1).get_target_inputs()) > 0
        if (
            not str(attrs.get("rounding_type", "floor")).startswith("ceil")
            or in_shape.rank.is_dynamic
            or in_shape[2:].is_dynamic
            or out_shape[2:].is_dynamic
            or indices_used
        ):
            continue
        sizes = [d.get_length() for d in in_shape[2:]]
        outputs = [d.get_length() for d in out_shape[2:]]
        # The last window starts at (out - 1) * stride; pad the end so that it fits.
        pads_end = [
            max(pad, (out - 1) * stride + dilation * (kernel - 1) + 1 - (size + begin))
            for size, out, kernel, stride, dilation, begin, pad in zip(
                sizes,
                outputs,
                attrs["kernel"],
                attrs["strides"],
                attrs.get("dilations", [1] * len(sizes)),
                attrs["pads_begin"],
                attrs["pads_end"],
                strict=True,
            )
        ]
        floor_pool = ops.max_pool(
            node.input_value(0),
            strides=attrs["strides"],
            dilations=attrs.get("dilations", [1] * len(sizes)),
            pads_begin=attrs["pads_begin"],
            pads_end=pads_end,
            kernel_shape=attrs["kernel"],
            rounding_type="floor",
            auto_pad="explicit",
        )
        if floor_pool.output(0).get_partial_shape() != out_shape:  # never expected
            continue
        floor_pool.set_friendly_name(node.get_friendly_name())
        for target in node.output(0).get_target_inputs():
            target.replace_source_output(floor_pool.output(0))
        rewritten += 1
    if rewritten:
        model.validate_nodes_and_infer_types()
    return rewritten


CONVOLUTIONS = ("Convolution", "GroupConvolution")


def _constant(output: Any) -> np.ndarray | None:
    node = output.get_node()
    return node.get_data() if node.get_type_name() == "Constant" else None


def int8_weight_dequantization(model: ov.Model) -> int:
    """Rewrite two forms of int8 convolution weights that conversion leaves and the CPU plugin
    runs in float (its input quantizer then executed on its own) into the form OpenVINO's int8
    path recognises: an int8 constant, Convert, one Multiply by a per-output-channel scale.

    - a scale multiplied after the convolution (FCOS's and ATSS's per-level `Scale` on the box
      convolution, which shares its weights across levels) is folded in as a second Multiply
      over the shared Convert: merged into one scale over a copy of the constant per
      convolution (FCOS at 128 px: the 5 box convolutions, 4 output channels each);
    - a scale of zero everywhere (a batch norm with all-zero gamma folded in: the residual
      branch of a frozen ResNet stage with mmdet's zero-initialised last norm, trained from
      scratch) makes the constant unsigned: stored as int8 zeros with a scale of one, the same
      all-zero weights (RetinaNet and ATSS 2, FCOS 8 convolutions).

    The values are unchanged (up to the one rounding of the two scales' product in float).
    Symmetric weights only (no Subtract of a zero point: NNCF's presets quantize weights
    symmetrically). Returns how many convolutions it rewrote."""
    rewritten = 0
    for conv in model.get_ordered_ops():
        if conv.get_type_name() not in CONVOLUTIONS:
            continue
        outer = conv.input_value(1).get_node()
        if outer.get_type_name() != "Multiply":
            continue
        scale = _constant(outer.input_value(1))
        if scale is None:
            continue
        inner = outer.input_value(0).get_node()
        inner_scale = (
            _constant(inner.input_value(1)) if inner.get_type_name() == "Multiply" else None
        )
        if inner_scale is not None:  # a second scale, folded in after the first
            convert, scale = inner.input_value(0).get_node(), inner_scale * scale
        else:
            convert = inner
        integers = (
            _constant(convert.input_value(0)) if convert.get_type_name() == "Convert" else None
        )
        if (
            integers is None
            or integers.dtype not in (np.int8, np.uint8)
            or list(integers.shape) != list(conv.get_input_shape(1))
            or scale.ndim not in (0, integers.ndim)
        ):
            continue
        if not np.any(scale):
            integers, scale = np.zeros_like(integers, np.int8), np.ones_like(scale)
        elif convert is inner or integers.dtype != np.int8:
            continue  # already in the recognised form, or a form we do not know
        channel_axes = 1 if conv.get_type_name() == "Convolution" else 2  # grouped: [G, O/G, ...]
        if scale.ndim and any(size != 1 for size in scale.shape[channel_axes:]):
            continue  # not one scale per output channel
        float_type = convert.get_output_element_type(0)
        weights = ops.multiply(
            ops.convert(ops.constant(integers), float_type),
            ops.constant(scale.astype(float_type.to_dtype())),
        )
        conv.input(1).replace_source_output(weights.output(0))
        rewritten += 1
    if rewritten:
        model.validate_nodes_and_infer_types()
    return rewritten


@functools.cache
def core() -> ov.Core:
    """One OpenVINO Core per process: each Core starts its own plugin and thread pools (several of
    them next to onnxruntime's crashed the process)."""
    return ov.Core()


def _i64(value: Any) -> Any:
    return ops.constant(np.array(value, dtype=np.int64))


class _OpenVINOGraph:
    """`nms.GraphOps` as OpenVINO opset nodes."""

    def i64(self, value: int | list[int]) -> Any:
        return _i64(value)

    def f32(self, value: float) -> Any:
        return ops.constant(np.float32(value))

    def non_max_suppression(
        self, boxes: Any, scores: Any, per_class: int, iou: float, score_thr: float
    ) -> Any:
        selection = ops.non_max_suppression(
            boxes,
            scores,
            _i64([per_class]),
            ops.constant(np.array([iou], np.float32)),
            ops.constant(np.array([score_thr], np.float32)),
            box_encoding="corner",
            sort_result_descending=False,
            output_type="i64",
        )
        valid = selection.output(2)  # [1]: the rows of selected_indices that hold a selection
        return ops.slice(selection.output(0), _i64([0]), valid, _i64([1]), _i64([0]))

    def gather(self, data: Any, indices: Any, axis: int) -> Any:
        return ops.gather(data, indices, _i64(axis))

    def gather_nd(self, data: Any, indices: Any) -> Any:
        return ops.gather_nd(data, indices)

    def unsqueeze(self, data: Any, axis: int) -> Any:
        return ops.unsqueeze(data, _i64([axis]))

    def concat(self, parts: list[Any], axis: int) -> Any:
        return ops.concat(parts, axis)

    def to_float(self, data: Any) -> Any:
        return ops.convert(data, "f32")

    def to_int(self, data: Any) -> Any:
        return ops.convert(data, "i64")

    def sub(self, a: Any, b: Any) -> Any:
        return ops.subtract(a, b)

    def mul(self, a: Any, b: Any) -> Any:
        return ops.multiply(a, b)

    def equal(self, a: Any, b: Any) -> Any:
        return ops.equal(a, b)

    def less(self, a: Any, b: Any) -> Any:
        return ops.less(a, b)

    def dim(self, data: Any, axis: int) -> Any:
        return ops.gather(ops.shape_of(data, "i64"), _i64(axis), _i64(0))

    def arange(self, stop: Any) -> Any:
        return ops.range(_i64(0), stop, _i64(1), "i64")

    def sum_rows(self, data: Any) -> Any:
        return ops.reduce_sum(data, _i64([0]), keep_dims=False)

    def exclusive_cumsum(self, data: Any) -> Any:
        return ops.cumsum(data, _i64(0), exclusive=True)

    def descending_order(self, key: Any) -> Any:
        count = self.dim(key, 0)
        return ops.topk(key, count, 0, "max", "value", "i64", stable=True).output(1)

    def rows_where(self, data: Any, keep: Any) -> Any:
        return ops.gather(data, ops.squeeze(ops.non_zero(keep, "i64"), _i64([0])), _i64(0))


def append_nms(model: ov.Model, params: NMSParams, model_api_outputs: bool) -> ov.Model:
    """Results boxes [N, M, 4] + scores [N, C, M] -> detections [K, 7] (`nms.detections`), and
    with `model_api_outputs` also Model API's boxes [1, K, 5] and labels [1, K]."""
    graph = _OpenVINOGraph()
    boxes = model.get_results()[0].input_value(0)
    scores = model.get_results()[1].input_value(0)
    detections = nms.detections(graph, boxes, scores, params)
    outputs = {DETECTIONS_OUTPUT: detections}
    if model_api_outputs:
        api_outputs = nms.model_api_outputs(graph, detections)
        outputs.update(zip(MODEL_API_OUTPUTS, api_outputs, strict=True))
    results = []
    for name, value in outputs.items():
        result = ops.result(value)
        result.output(0).get_tensor().set_names({name})
        results.append(result)
    return ov.Model(results, model.get_parameters(), model.get_friendly_name())


def with_u8_nhwc_input(model: ov.Model) -> ov.Model:
    """The model taking uint8 NHWC images: OpenVINO's PrePostProcessor puts the conversion to
    float and the transposition to NCHW in front of the graph (which then fuses them)."""
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    ppp.input().preprocess().convert_element_type(ov.Type.f32)
    model = ppp.build()
    model.inputs[0].get_tensor().set_names({INPUT_NAME})
    return model


def save(
    model: ov.Model,
    xml: Path,
    metadata: dict[str, Any],
    fp16_weights: bool,
    model_info: dict[str, str] | None,
) -> None:
    """Writes the IR with our metadata and, where given, Model API's `model_info` entries."""
    model.set_rt_info(json.dumps(metadata), RT_INFO_KEY)
    for name, value in (model_info or {}).items():
        model.set_rt_info(value, ["model_info", name])
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
    model: ov.Model,
    device: str,
    hint: str,
    f32: bool,
    threads: int | None,
    perf_count: bool = False,
) -> Any:
    """Compiled with OpenVINO's LATENCY or THROUGHPUT performance hint (and, with
    `perf_count`, its per-layer performance counters on)."""
    config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
    if perf_count:
        config["PERF_COUNT"] = True
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


def takes_u8_nhwc(compiled_or_model: Any) -> bool:
    return bool(compiled_or_model.inputs[0].get_element_type() == ov.Type.u8)


def infer(compiled: Any, image: np.ndarray) -> list[np.ndarray]:
    """Outputs for images in the model's input type, or float NCHW ones (converted for a model
    that takes uint8 NHWC)."""
    if takes_u8_nhwc(compiled) and image.dtype != np.uint8:
        image = as_u8_nhwc(image)
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


def layer_times(
    model: ov.Model, device: str, f32: bool, threads: int | None, image: np.ndarray, calls: int
) -> list[dict[str, Any]]:
    """Mean time of each executed runtime layer over `calls` synchronous calls, from OpenVINO's
    performance counters (a separate compilation: counting slows the calls it counts), with
    the kernel (`exec_type`, e.g. `brgconv_avx512_amx_I8`) and the precision it ran in."""
    compiled = compile_for_speed(model, device, "LATENCY", f32, threads, perf_count=True)
    request = compiled.create_infer_request()
    request.infer({INPUT_NAME: image})  # warm-up
    totals: dict[str, dict[str, Any]] = {}
    for _ in range(calls):
        request.infer({INPUT_NAME: image})
        for info in request.profiling_info:
            if info.status != ov.ProfilingInfo.Status.EXECUTED:
                continue
            layer = totals.setdefault(
                info.node_name,
                {
                    "name": info.node_name,
                    "type": info.node_type,
                    "kernel": info.exec_type,
                    "precision": info.exec_type.rsplit("_", 1)[-1].lower(),
                    "ms": 0.0,
                },
            )
            layer["ms"] += info.real_time.total_seconds() * 1e3 / calls
    return sorted(totals.values(), key=lambda layer: -layer["ms"])


def fake_quantize_count(xml: Path) -> int:
    model = core().read_model(str(xml))
    return sum(1 for op in model.get_ops() if op.get_type_name() == "FakeQuantize")
