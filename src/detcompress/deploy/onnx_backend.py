"""Every ONNX / ONNX Runtime call of detcompress: export from torch, the NMS subgraph
(`deploy/nms.py`) in ONNX's own operations, metadata in metadata_props, and inference."""

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

from detcompress.deploy import (
    DECODED_OUTPUTS,
    DETECTIONS_OUTPUT,
    INPUT_NAME,
    MODEL_API_OUTPUTS,
    nms,
)
from detcompress.deploy.graph import NMSParams, as_u8_nhwc

METADATA_KEY = "detcompress"
OPSET = 17


def export(
    module: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    output_names: list[str],
    dynamic_batch: bool,
    dynamic_size: bool = False,
) -> None:
    """The legacy (TorchScript) exporter: the dynamo exporter fails on fake quantizers, and the
    legacy one turns torch's fake quantizers into standard QuantizeLinear/DequantizeLinear.
    With `dynamic_size`, the height and width are dynamic too, and so is every output's size
    but its channels (raw maps: height and width; decoded: the number of priors)."""
    axes: dict[str, dict[int, str]] | None = None
    if dynamic_size:
        boxes, scores = DECODED_OUTPUTS
        axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
        for name in output_names:
            if name == boxes:  # [N, M, 4]
                axes[name] = {0: "batch", 1: "priors"}
            elif name == scores:  # [N, C, M]
                axes[name] = {0: "batch", 2: "priors"}
            else:  # a raw map [N, C, h, w]
                axes[name] = {0: "batch", 2: f"{name}_height", 3: f"{name}_width"}
    elif dynamic_batch:
        axes = {name: {0: "batch"} for name in [INPUT_NAME, *output_names]}
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


class _OnnxGraph:
    """`nms.GraphOps` as ONNX nodes: each operation appends a node and returns its output's
    name."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []

    def _node(self, op: str, inputs: list[str], **attributes: Any) -> str:
        name = f"nms_{len(self.nodes)}_{op.lower()}"
        self.nodes.append(helper.make_node(op, inputs, [name], **attributes))
        return name

    def _const(self, value: Any, dtype: Any) -> str:
        array = np.asarray(value, dtype=dtype)
        return self._node("Constant", [], value=onnx.numpy_helper.from_array(array))

    def i64(self, value: int | list[int]) -> str:
        return self._const(value, np.int64)

    def f32(self, value: float) -> str:
        return self._const(value, np.float32)

    def non_max_suppression(
        self, boxes: str, scores: str, per_class: int, iou: float, score_thr: float
    ) -> str:
        limits = [
            self._const([per_class], np.int64),
            self._const([iou], np.float32),
            self._const([score_thr], np.float32),
        ]
        return self._node("NonMaxSuppression", [boxes, scores, *limits])

    def gather(self, data: str, indices: str, axis: int) -> str:
        return self._node("Gather", [data, indices], axis=axis)

    def gather_nd(self, data: str, indices: str) -> str:
        return self._node("GatherND", [data, indices])

    def unsqueeze(self, data: str, axis: int) -> str:
        return self._node("Unsqueeze", [data, self._const([axis], np.int64)])

    def concat(self, parts: list[str], axis: int) -> str:
        return self._node("Concat", parts, axis=axis)

    def to_float(self, data: str) -> str:
        return self._node("Cast", [data], to=TensorProto.FLOAT)

    def to_int(self, data: str) -> str:
        return self._node("Cast", [data], to=TensorProto.INT64)

    def sub(self, a: str, b: str) -> str:
        return self._node("Sub", [a, b])

    def mul(self, a: str, b: str) -> str:
        return self._node("Mul", [a, b])

    def equal(self, a: str, b: str) -> str:
        return self._node("Equal", [a, b])

    def less(self, a: str, b: str) -> str:
        return self._node("Less", [a, b])

    def dim(self, data: str, axis: int) -> str:
        return self.gather(self._node("Shape", [data]), self.i64(axis), 0)

    def arange(self, stop: str) -> str:
        return self._node("Range", [self.i64(0), stop, self.i64(1)])

    def sum_rows(self, data: str) -> str:
        return self._node("ReduceSum", [data, self._const([0], np.int64)], keepdims=0)

    def exclusive_cumsum(self, data: str) -> str:
        return self._node("CumSum", [data, self.i64(0)], exclusive=1)

    def descending_order(self, key: str) -> str:
        # ONNX's TopK keeps the lower index first among equal values: a stable sort.
        count = self._node("Shape", [key])
        name = f"nms_{len(self.nodes)}_topk"
        self.nodes.append(
            helper.make_node(
                "TopK", [key, count], [f"{name}_values", name], axis=0, largest=1, sorted=1
            )
        )
        return name

    def rows_where(self, data: str, keep: str) -> str:
        return self._node("Compress", [data, keep], axis=0)


def append_nms(path: Path, params: NMSParams, model_api_outputs: bool) -> None:
    """Graph outputs boxes [N, M, 4] + scores [N, C, M] -> detections [K, 7] (`nms.detections`),
    and with `model_api_outputs` also Model API's boxes [1, K, 5] and labels [1, K]."""
    model = onnx.load(str(path))
    graph = model.graph
    boxes, scores = graph.output[0].name, graph.output[1].name
    builder = _OnnxGraph()
    detections = nms.detections(builder, boxes, scores, params)
    Shape = list[str | int]
    outputs: list[tuple[str, str, int, Shape]] = [
        (DETECTIONS_OUTPUT, detections, TensorProto.FLOAT, ["K", 7])
    ]
    if model_api_outputs:
        api_boxes, api_labels = nms.model_api_outputs(builder, detections)
        outputs += [
            (MODEL_API_OUTPUTS[0], api_boxes, TensorProto.FLOAT, [1, "K", 5]),
            (MODEL_API_OUTPUTS[1], api_labels, TensorProto.INT64, [1, "K"]),
        ]
    graph.node.extend(builder.nodes)
    del graph.output[:]
    for name, value, dtype, shape in outputs:
        graph.node.append(helper.make_node("Identity", [value], [name]))
        graph.output.append(helper.make_tensor_value_info(name, dtype, shape))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def with_u8_nhwc_input(path: Path) -> None:
    """The model taking uint8 NHWC images: a Cast to float and a Transpose to NCHW in front of
    the graph, which keeps the input's name."""
    model = onnx.load(str(path))
    graph = model.graph
    old = graph.input[0]
    # Renaming the input's uses is enough for the graphs we export: no subgraphs, and the
    # input is not an output.
    assert old.name == INPUT_NAME and INPUT_NAME not in {o.name for o in graph.output}
    assert not any(a.type == onnx.AttributeProto.GRAPH for n in graph.node for a in n.attribute)
    n, c, h, w = [
        d.dim_param or d.dim_value or f"{INPUT_NAME}_{i}"
        for i, d in enumerate(old.type.tensor_type.shape.dim)
    ]
    as_float, as_nchw = f"{INPUT_NAME}_f32", f"{INPUT_NAME}_nchw"
    for node in graph.node:
        node.input[:] = [as_nchw if name == INPUT_NAME else name for name in node.input]
    front = [
        helper.make_node("Cast", [INPUT_NAME], [as_float], to=TensorProto.FLOAT),
        helper.make_node("Transpose", [as_float], [as_nchw], perm=[0, 3, 1, 2]),
    ]
    for node in reversed(front):
        graph.node.insert(0, node)
    graph.input.remove(old)
    graph.input.insert(
        0, helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, [n, h, w, c])
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def set_metadata(path: Path, metadata: dict[str, Any], model_info: dict[str, str] | None) -> None:
    """Our metadata, and Model API's `model_info` entries as it reads them from ONNX
    (one property per entry, keyed "model_info NAME")."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    for name, value in (model_info or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"model_info {name}", value
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


def takes_u8_nhwc(sess: Any) -> bool:
    return bool(sess.get_inputs()[0].type == "tensor(uint8)")


def infer(sess: Any, image: np.ndarray) -> list[np.ndarray]:
    """Outputs for images in the model's input type, or float NCHW ones (converted for a model
    that takes uint8 NHWC)."""
    if takes_u8_nhwc(sess) and image.dtype != np.uint8:
        image = as_u8_nhwc(image)
    return [np.asarray(o) for o in sess.run(None, {INPUT_NAME: image})]
