"""The NMS subgraph appended to an exported detector, written once for both formats: decoded
boxes [N, M, 4] and per-class scores [N, C, M] in, detections [K, 7] out (image index, label,
score, x1, y1, x2, y2), sorted by image and then by score, at most `max_per_image` per image.

Each backend supplies the few graph operations it is made of (`GraphOps`: ONNX nodes in
`onnx_backend`, OpenVINO opset nodes in `openvino_backend`); the steps live here only. Not
OpenVINO's MulticlassNms: its CPU sort treats scores within 1e-6 as equal in a comparator that
is then not a strict weak ordering, and with many near-equal low scores (an under-trained
model, score_thr 0) it corrupts memory and crashes (openvino 2026.4, multiclass_nms.cpp).
"""

from __future__ import annotations

from typing import Any, Protocol

from detcompress.deploy.graph import NMSParams

# "No limit" on detections per class for NonMaxSuppression, which needs a number.
NO_LIMIT = 1 << 30

Tensor = Any  # a backend's handle of a graph value (an ONNX value name, an OpenVINO output)


class GraphOps(Protocol):
    """The graph operations the NMS subgraph is built from. Integer tensors are int64."""

    def i64(self, value: int | list[int]) -> Tensor: ...
    def f32(self, value: float) -> Tensor: ...
    def non_max_suppression(
        self, boxes: Tensor, scores: Tensor, per_class: int, iou: float, score_thr: float
    ) -> Tensor:
        """The selected (image, class, box) index triples [S, 3], and nothing else."""
        ...

    def gather(self, data: Tensor, indices: Tensor, axis: int) -> Tensor: ...
    def gather_nd(self, data: Tensor, indices: Tensor) -> Tensor: ...
    def unsqueeze(self, data: Tensor, axis: int) -> Tensor: ...
    def concat(self, parts: list[Tensor], axis: int) -> Tensor: ...
    def to_float(self, data: Tensor) -> Tensor: ...
    def to_int(self, data: Tensor) -> Tensor: ...
    def sub(self, a: Tensor, b: Tensor) -> Tensor: ...
    def mul(self, a: Tensor, b: Tensor) -> Tensor: ...
    def equal(self, a: Tensor, b: Tensor) -> Tensor: ...
    def less(self, a: Tensor, b: Tensor) -> Tensor: ...
    def dim(self, data: Tensor, axis: int) -> Tensor:
        """The size of one dimension, as a scalar."""
        ...

    def arange(self, stop: Tensor) -> Tensor: ...
    def sum_rows(self, data: Tensor) -> Tensor:
        """Sum over axis 0."""
        ...

    def exclusive_cumsum(self, data: Tensor) -> Tensor: ...
    def descending_order(self, key: Tensor) -> Tensor:
        """Indices that sort the 1-D `key` largest first; ties keep their order."""
        ...

    def rows_where(self, data: Tensor, keep: Tensor) -> Tensor:
        """The rows of `data` whose entry in the boolean 1-D `keep` is true."""
        ...


def detections(g: GraphOps, boxes: Tensor, scores: Tensor, params: NMSParams) -> Tensor:
    """boxes [N, M, 4] + scores [N, C, M] -> detections [K, 7]."""
    per_class = params.max_per_image if params.max_per_image > 0 else NO_LIMIT
    selected = g.non_max_suppression(
        boxes, scores, per_class, params.iou_threshold, params.score_threshold
    )
    image, label, box = (g.gather(selected, g.i64(column), 1) for column in range(3))
    score = g.gather_nd(scores, selected)
    xyxy = g.gather_nd(boxes, g.concat([g.unsqueeze(image, 1), g.unsqueeze(box, 1)], 1))
    # Sort by image, then by score (descending): key = score - 4 * image, largest first
    # (scores are in [0, 1], so images never interleave).
    key = g.sub(score, g.mul(g.to_float(image), g.f32(4.0)))
    order = g.descending_order(key)
    columns = [g.gather(column, order, 0) for column in (image, label, score, xyxy)]
    if params.max_per_image > 0:
        columns = _first_per_image(g, columns, g.dim(scores, 0), params.max_per_image)
    image, label, score, xyxy = columns
    return g.concat(
        [
            g.unsqueeze(g.to_float(image), 1),
            g.unsqueeze(g.to_float(label), 1),
            g.unsqueeze(score, 1),
            xyxy,
        ],
        1,
    )


def model_api_outputs(g: GraphOps, detections: Tensor) -> tuple[Tensor, Tensor]:
    """detections [K, 7] of a one-image batch -> boxes [1, K, 5] (x1, y1, x2, y2, score) and
    labels [1, K]: what openvino-model-api's SSD wrapper reads ("boxes-labels" outputs, the
    layout of OpenVINO's training extensions' detectors)."""
    boxes = g.gather(detections, g.i64([3, 4, 5, 6, 2]), 1)
    labels = g.to_int(g.gather(detections, g.i64(1), 1))
    return g.unsqueeze(boxes, 0), g.unsqueeze(labels, 0)


def _first_per_image(
    g: GraphOps, columns: list[Tensor], num_images: Tensor, count: int
) -> list[Tensor]:
    """The first `count` rows of each image in rows sorted by image: a row's rank within its
    image is its position minus the position of its image's first row."""
    image = columns[0]
    is_image = g.equal(g.unsqueeze(image, 1), g.unsqueeze(g.arange(num_images), 0))
    per_image = g.sum_rows(g.to_int(is_image))
    first = g.gather(g.exclusive_cumsum(per_image), image, 0)
    position = g.arange(g.dim(image, 0))
    keep = g.less(g.sub(position, first), g.i64(count))
    return [g.rows_where(column, keep) for column in columns]
