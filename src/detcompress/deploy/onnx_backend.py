"""Every ONNX / ONNX Runtime call of detcompress: export from torch, NMS appended to the graph
with ONNX's own operations, metadata in metadata_props, and inference."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from detcompress.deploy import DETECTIONS_OUTPUT, INPUT_NAME
from detcompress.deploy.graph import NMSParams

METADATA_KEY = "detcompress"
OPSET = 17
NO_LIMIT = 1 << 30


def export(
    module: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    output_names: list[str],
    dynamic_batch: bool,
) -> None:
    """The legacy (TorchScript) exporter: the dynamo exporter fails on fake quantizers, and the
    legacy one turns torch's fake quantizers into standard QuantizeLinear/DequantizeLinear."""
    axes = {name: {0: "batch"} for name in [INPUT_NAME, *output_names]} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about constant shapes are expected
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=output_names,
            dynamic_axes=axes,
        )


def _const(name: str, value: Any, dtype: Any) -> onnx.NodeProto:
    array = np.asarray(value, dtype=dtype)
    return helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(array, name))


def append_nms(path: Path, params: NMSParams) -> None:
    """Graph outputs boxes [N, M, 4] + scores [N, C, M] -> detections [K, 7] (image index,
    label, score, x1, y1, x2, y2), sorted by image and then by score, at most `max_per_image`
    per image (NonMaxSuppression, then a sort and a per-image rank)."""
    model = onnx.load(str(path))
    graph = model.graph
    boxes, scores = graph.output[0].name, graph.output[1].name
    per_class = params.max_per_image if params.max_per_image > 0 else NO_LIMIT
    n = helper.make_node
    nodes = [
        _const("nms_max", [per_class], np.int64),
        _const("nms_iou", [params.iou_threshold], np.float32),
        _const("nms_thr", [params.score_threshold], np.float32),
        n("NonMaxSuppression", [boxes, scores, "nms_max", "nms_iou", "nms_thr"], ["sel"]),
        _const("i0", 0, np.int64),
        _const("i1", 1, np.int64),
        _const("i2", 2, np.int64),
        _const("ax1", [1], np.int64),
        n("Gather", ["sel", "i0"], ["sel_image"], axis=1),
        n("Gather", ["sel", "i1"], ["sel_label"], axis=1),
        n("Gather", ["sel", "i2"], ["sel_box"], axis=1),
        n("GatherND", [scores, "sel"], ["sel_score"]),
        n("Unsqueeze", ["sel_image", "ax1"], ["sel_image_col"]),
        n("Unsqueeze", ["sel_box", "ax1"], ["sel_box_col"]),
        n("Concat", ["sel_image_col", "sel_box_col"], ["image_box"], axis=1),
        n("GatherND", [boxes, "image_box"], ["sel_xyxy"]),
        # Sort by image, then by score (descending): key = 4 * image - score, ascending.
        n("Cast", ["sel_image"], ["image_f"], to=TensorProto.FLOAT),
        _const("f4", 4.0, np.float32),
        n("Mul", ["image_f", "f4"], ["image_x4"]),
        n("Sub", ["sel_score", "image_x4"], ["neg_key"]),
        n("Shape", ["neg_key"], ["count"]),
        n("TopK", ["neg_key", "count"], ["_sorted", "order"], axis=0, largest=1, sorted=1),
        n("Gather", ["sel_image", "order"], ["s_image"], axis=0),
        n("Gather", ["sel_label", "order"], ["s_label"], axis=0),
        n("Gather", ["sel_score", "order"], ["s_score"], axis=0),
        n("Gather", ["sel_xyxy", "order"], ["s_xyxy"], axis=0),
    ]
    columns = "s_image", "s_label", "s_score", "s_xyxy"
    if params.max_per_image > 0:
        # rank of a detection within its image = position - first position of that image
        nodes += [
            n("Shape", [scores], ["scores_shape"]),
            n("Gather", ["scores_shape", "i0"], ["num_images"]),
            n("Range", ["i0", "num_images", "i1"], ["images"]),
            n("Unsqueeze", ["s_image", "ax1"], ["s_image_col"]),
            _const("ax0", [0], np.int64),
            n("Unsqueeze", ["images", "ax0"], ["images_row"]),
            n("Equal", ["s_image_col", "images_row"], ["is_image"]),
            n("Cast", ["is_image"], ["is_image_i"], to=TensorProto.INT64),
            n("ReduceSum", ["is_image_i", "ax0"], ["per_image"], keepdims=0),
            n("CumSum", ["per_image", "i0"], ["first"], exclusive=1),
            n("Gather", ["first", "s_image"], ["first_of_row"], axis=0),
            n("Gather", ["count", "i0"], ["count_scalar"]),
            n("Range", ["i0", "count_scalar", "i1"], ["position"]),
            n("Sub", ["position", "first_of_row"], ["rank"]),
            _const("keep_top", params.max_per_image, np.int64),
            n("Less", ["rank", "keep_top"], ["keep"]),
            n("Compress", ["s_image", "keep"], ["k_image"], axis=0),
            n("Compress", ["s_label", "keep"], ["k_label"], axis=0),
            n("Compress", ["s_score", "keep"], ["k_score"], axis=0),
            n("Compress", ["s_xyxy", "keep"], ["k_xyxy"], axis=0),
        ]
        columns = "k_image", "k_label", "k_score", "k_xyxy"
    image, label, score, xyxy = columns
    nodes += [
        n("Cast", [image], ["d_image"], to=TensorProto.FLOAT),
        n("Cast", [label], ["d_label"], to=TensorProto.FLOAT),
        n("Unsqueeze", ["d_image", "ax1"], ["d_image_col"]),
        n("Unsqueeze", ["d_label", "ax1"], ["d_label_col"]),
        n("Unsqueeze", [score, "ax1"], ["d_score_col"]),
        n(
            "Concat",
            ["d_image_col", "d_label_col", "d_score_col", xyxy],
            [DETECTIONS_OUTPUT],
            axis=1,
        ),
    ]
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info(DETECTIONS_OUTPUT, TensorProto.FLOAT, ["K", 7])
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def set_metadata(path: Path, metadata: dict[str, Any]) -> None:
    model = onnx.load(str(path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.save(model, str(path))


def read_metadata(path: Path) -> dict[str, Any] | None:
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            result: dict[str, Any] = json.loads(entry.value)
            return result
    return None


def operation_counts(path: Path) -> Counter[str]:
    model = onnx.load(str(path), load_external_data=False)
    return Counter(node.op_type for node in model.graph.node)


def input_shape(path: Path) -> list[int]:
    """The model input's shape, -1 for a dynamic (named or unknown) dimension."""
    model = onnx.load(str(path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else -1 for d in dims]


def external_data_files(path: Path) -> list[Path]:
    """The files holding the weights of an ONNX model saved with external data."""
    model = onnx.load(str(path), load_external_data=False)
    names = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL:
            names |= {e.value for e in tensor.external_data if e.key == "location"}
    return [path.parent / name for name in sorted(names)]


def session(path: Path, threads: int | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def infer(sess: Any, image: np.ndarray) -> list[np.ndarray]:
    return [np.asarray(o) for o in sess.run(None, {INPUT_NAME: image})]
