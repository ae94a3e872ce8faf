"""A two-stage detector (Faster R-CNN: RPN + RoI head) as one deployable graph: proposals, their
NMS, RoI feature extraction and the RoI head's decoding all inside it, ending in the same decoded
boxes [N, M, 4] and per-class scores [N, C, M] as the dense heads (the backends append the final
NMS).

Two standard operations carry what torch cannot trace: NonMaxSuppression for the proposals and
RoiAlign for the RoI features. Each is a torch function that computes eagerly with mmcv's kernels
(what mmdet runs) and exports as the ONNX operation; the OpenVINO IR is converted from that ONNX
graph, since OpenVINO's PyTorch frontend cannot convert a Python autograd function.

Shapes are fixed: each image gets exactly `max_per_img` proposals (the RPN's test_cfg), the ones
NMS did not keep padded with a 1-pixel box scored 0, so the RoI head always runs on N x P RoIs
and a padded RoI can never become a detection.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from detcompress.errors import DetcompressError

# The NMS operation's threshold for proposals: drops exactly the candidates scored 0 (a level's
# slots in the other levels' columns, boxes below min_bbox_size); every sigmoid score is above it.
_PROPOSAL_SCORE_FLOOR = 1e-30
# What a padded proposal is: a valid 1-pixel box (a 0-pixel one has no RoiAlign samples, whose
# result differs between runtimes).
_PAD_BOX = (0.0, 0.0, 1.0, 1.0)


def is_two_stage(detector: Any) -> bool:
    return hasattr(detector, "roi_head") and hasattr(detector, "rpn_head")


class _NonMaxSuppression(torch.autograd.Function):
    """ONNX's NonMaxSuppression: boxes [N, M, 4], scores [N, C, M] -> selected (image, class,
    box) triples [S, 3], each (image, class) in descending score order; scores must be above
    `score_threshold`. Eagerly: mmcv's nms kernel (mmdet's)."""

    @staticmethod
    def forward(
        ctx: Any,
        boxes: torch.Tensor,
        scores: torch.Tensor,
        max_per_class: int,
        iou_threshold: float,
        score_threshold: float,
    ) -> torch.Tensor:
        from mmcv.ops import nms

        selected = []
        for image in range(scores.shape[0]):
            for cls in range(scores.shape[1]):
                candidates = (scores[image, cls] > score_threshold).nonzero()[:, 0]
                if not len(candidates):
                    continue
                candidate_scores = scores[image, cls, candidates]
                _, kept = nms(boxes[image, candidates], candidate_scores, iou_threshold)
                kept = candidates[kept[:max_per_class]]
                index = torch.tensor([image, cls]).expand(len(kept), 2)
                selected.append(torch.cat([index, kept[:, None]], 1))
        if not selected:
            return torch.zeros(0, 3, dtype=torch.int64)
        return torch.cat(selected).to(torch.int64)

    @staticmethod
    def symbolic(
        g: Any,
        boxes: Any,
        scores: Any,
        max_per_class: int,
        iou_threshold: float,
        score_threshold: float,
    ) -> Any:
        def const(value: Any, dtype: torch.dtype) -> Any:
            return g.op("Constant", value_t=torch.tensor([value], dtype=dtype))

        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            const(max_per_class, torch.int64),
            const(iou_threshold, torch.float32),
            const(score_threshold, torch.float32),
        )


class _RoiAlign(torch.autograd.Function):
    """ONNX's RoiAlign (opset 16, average, `half_pixel` = mmcv's `aligned=True`): features
    [N, C, H, W], boxes [K, 4], their image indices [K] -> [K, C, h, w]. Eagerly: mmcv's
    roi_align kernel (mmdet's RoIAlign layer)."""

    @staticmethod
    def forward(
        ctx: Any,
        features: torch.Tensor,
        boxes: torch.Tensor,
        image_index: torch.Tensor,
        output_size: tuple[int, int],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool,
    ) -> torch.Tensor:
        from mmcv.ops import roi_align

        rois = torch.cat([image_index[:, None].to(boxes.dtype), boxes], 1)
        result: torch.Tensor = roi_align(
            features, rois, output_size, spatial_scale, sampling_ratio, "avg", aligned
        )
        return result

    @staticmethod
    def symbolic(
        g: Any,
        features: Any,
        boxes: Any,
        image_index: Any,
        output_size: tuple[int, int],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool,
    ) -> Any:
        return g.op(
            "RoiAlign",
            features,
            boxes,
            image_index,
            mode_s="avg",
            output_height_i=output_size[0],
            output_width_i=output_size[1],
            spatial_scale_f=spatial_scale,
            sampling_ratio_i=max(0, sampling_ratio),
            coordinate_transformation_mode_s="half_pixel" if aligned else "output_half_pixel",
        )


@contextlib.contextmanager
def _forward_replaced(detector: Any, forward: Any) -> Iterator[None]:
    """The detector's `tensor` mode running `forward` instead: the call still enters through the
    detector itself, so NNCF's quantizers (named by the module calls around each operation, and
    active only inside the root module's call) apply as in training."""
    previous = vars(detector).get("_forward")
    detector._forward = forward
    try:
        yield
    finally:
        if previous is None:
            vars(detector).pop("_forward", None)
        else:
            detector._forward = previous


class TwoStageDecoder(nn.Module):
    """image (normalized) -> boxes [N, P*C, 4], scores [N, C, P*C]: the RPN's proposals as mmdet
    selects them (per level the `nms_pre` best, decoded, clipped, boxes not larger than
    `min_bbox_size` dropped, NMS per level, the `max_per_img` best), RoIAlign on the level each
    RoI maps to, the RoI head, its class-specific boxes decoded and clipped, softmax scores
    without the background. Box k*C + c is RoI k's box for class c; only class c scores it."""

    def __init__(self, detector: Any) -> None:
        super().__init__()
        rpn, roi_head = detector.rpn_head, detector.roi_head
        self._check_supported(rpn, roi_head)
        rpn_cfg = rpn.test_cfg or {}
        self.nms_pre = int(rpn_cfg.get("nms_pre", -1))
        self.proposals = int(rpn_cfg.get("max_per_img", 1000))
        self.min_size = float(rpn_cfg.get("min_bbox_size", -1))
        self.rpn_iou = float((rpn_cfg.get("nms") or {}).get("iou_threshold", 0.7))
        extractor = roi_head.bbox_roi_extractor
        self.strides = [float(s) for s in extractor.featmap_strides]
        self.finest_scale = float(extractor.finest_scale)
        layer = extractor.roi_layers[0]
        self.output_size = tuple(int(v) for v in layer.output_size)
        self.sampling_ratio = int(layer.sampling_ratio)
        self.aligned = bool(layer.aligned)
        self.num_classes = int(roi_head.bbox_head.num_classes)

    @staticmethod
    def _check_supported(rpn: Any, roi_head: Any) -> None:
        from mmcv.ops import RoIAlign
        from mmdet.models.roi_heads import StandardRoIHead
        from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor

        extractor: Any = getattr(roi_head, "bbox_roi_extractor", None)
        head: Any = getattr(roi_head, "bbox_head", None)
        problems = []
        if type(roi_head) is not StandardRoIHead:
            problems.append(f"RoI head {type(roi_head).__name__} (available: StandardRoIHead)")
        elif type(extractor) is not SingleRoIExtractor:
            name = type(extractor).__name__
            problems.append(f"RoI extractor {name} (available: SingleRoIExtractor)")
        elif not all(
            isinstance(layer, RoIAlign) and layer.pool_mode == "avg"
            for layer in extractor.roi_layers
        ):
            problems.append("RoI layers other than RoIAlign with average pooling")
        elif getattr(head, "custom_cls_channels", False) or head.loss_cls.use_sigmoid:
            problems.append(f"{type(head).__name__} scores that are not a softmax")
        if ((rpn.test_cfg or {}).get("nms") or {}).get("type", "nms") != "nms":
            problems.append("an RPN NMS other than 'nms'")
        if problems:
            raise DetcompressError(
                f"postprocessing inside the exported graph is not available for {problems[0]}; "
                "compress and eval work on its checkpoints (detcompress eval CHECKPOINT)"
            )

    def run(self, detector: Any, inputs: torch.Tensor, image: torch.Tensor) -> Any:
        """The detector on `inputs`, entered through its `tensor` mode."""

        def forward(batch_inputs: torch.Tensor, data_samples: Any = None) -> Any:
            return self.decode(detector, batch_inputs, image)

        with _forward_replaced(detector, forward):
            return detector(inputs, mode="tensor")

    def decode(
        self, detector: Any, inputs: torch.Tensor, image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        features = detector.extract_feat(inputs)
        cls_maps, delta_maps = detector.rpn_head(features)
        boxes, scores = self._proposals(detector.rpn_head, cls_maps, delta_maps, image)
        n, p = scores.shape
        image_index = torch.arange(n).repeat_interleave(p)
        flat_boxes = boxes.reshape(n * p, 4)
        roi_features = self._roi_features(features, flat_boxes, image_index)
        bbox_head = detector.roi_head.bbox_head
        cls_score, bbox_pred = bbox_head(roi_features)
        class_scores = cls_score.softmax(-1)[:, : self.num_classes]
        decoded = bbox_head.bbox_coder.decode(flat_boxes, bbox_pred, max_shape=None)
        decoded = clipped(decoded.reshape(n * p, -1, 4), image)
        c = self.num_classes
        decoded = decoded.expand(n * p, c, 4).reshape(n, p * c, 4)
        # RoI k's box for class c is box k*C + c, which only class c scores; padded RoIs none.
        class_scores = class_scores.reshape(n, p, c) * (scores > 0).unsqueeze(-1).to(scores.dtype)
        one_class = torch.eye(c, dtype=class_scores.dtype)
        per_box = class_scores.permute(0, 2, 1).unsqueeze(-1) * one_class.view(1, c, 1, c)
        return decoded, per_box.reshape(n, c, p * c)

    def _proposals(
        self, rpn: Any, cls_maps: list[torch.Tensor], delta_maps: list[torch.Tensor], image: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """boxes [N, P, 4] and scores [N, P] of each image's proposals, best first, padded."""
        n = cls_maps[0].shape[0]
        priors = rpn.prior_generator.grid_priors(
            [m.shape[-2:] for m in cls_maps], dtype=cls_maps[0].dtype, device=cls_maps[0].device
        )
        level_scores, level_deltas, level_priors, levels = [], [], [], []
        maps = zip(cls_maps, delta_maps, priors, strict=True)
        for level, (cls, deltas, anchors) in enumerate(maps):
            logits = cls.permute(0, 2, 3, 1).reshape(n, -1, rpn.cls_out_channels)
            scores = logits.sigmoid()[..., 0] if rpn.use_sigmoid_cls else logits.softmax(-1)[..., 0]
            deltas = deltas.permute(0, 2, 3, 1).reshape(n, -1, 4)
            count = scores.shape[1]
            if 0 < self.nms_pre < count:  # static shapes: the count is known when tracing
                scores, best = scores.topk(self.nms_pre, dim=1)
                deltas = deltas.gather(1, best.unsqueeze(-1).expand(n, self.nms_pre, 4))
                anchors = anchors[best]
                count = self.nms_pre
            else:
                anchors = anchors.expand(n, count, 4)
            level_scores.append(scores)
            level_deltas.append(deltas)
            level_priors.append(anchors)
            levels.append(torch.full((count,), level, dtype=torch.int64))
        scores = torch.cat(level_scores, 1)
        boxes = rpn.bbox_coder.decode(
            torch.cat(level_priors, 1), torch.cat(level_deltas, 1), max_shape=None
        )
        boxes = clipped(boxes, image)
        if self.min_size >= 0:
            big = (boxes[..., 2] - boxes[..., 0] > self.min_size) & (
                boxes[..., 3] - boxes[..., 1] > self.min_size
            )
            scores = scores * big.to(scores.dtype)
        # NMS per level, as mmdet's batched_nms with the level as the class.
        level_of = torch.nn.functional.one_hot(torch.cat(levels), len(cls_maps)).t()
        by_level = scores.unsqueeze(1) * level_of.unsqueeze(0).to(scores.dtype)
        selected = _NonMaxSuppression.apply(
            boxes, by_level, self.proposals, self.rpn_iou, _PROPOSAL_SCORE_FLOOR
        )
        kept_boxes, kept_scores = [], []
        pad_boxes = torch.tensor(_PAD_BOX, dtype=boxes.dtype).expand(self.proposals, 4)
        pad_scores = scores.new_zeros(self.proposals)
        for i in range(n):  # static batch: unrolled when tracing
            index = selected[selected[:, 0] == i][:, 2]
            score = scores[i][index]
            order = score.sort(descending=True).indices[: self.proposals]
            kept_boxes.append(torch.cat([boxes[i][index[order]], pad_boxes])[: self.proposals])
            kept_scores.append(torch.cat([score[order], pad_scores])[: self.proposals])
        return torch.stack(kept_boxes), torch.stack(kept_scores)

    def _roi_features(
        self, features: list[torch.Tensor], boxes: torch.Tensor, image_index: torch.Tensor
    ) -> torch.Tensor:
        """mmdet's SingleRoIExtractor: each RoI pooled from the level its size maps to. Every
        level pools every RoI (the others replaced by a 1-pixel box, whose result is dropped):
        fixed shapes, no scatter."""
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        level = torch.floor(torch.log2(area.sqrt() / self.finest_scale + 1e-6))
        level = level.clamp(min=0, max=len(self.strides) - 1)
        pad = torch.tensor(_PAD_BOX, dtype=boxes.dtype)
        pooled = None
        for index, stride in enumerate(self.strides):
            mine = (level == index).unsqueeze(-1)
            level_boxes = torch.where(mine, boxes, pad)
            result = _RoiAlign.apply(
                features[index],
                level_boxes,
                image_index,
                self.output_size,
                1.0 / stride,
                self.sampling_ratio,
                self.aligned,
            )
            result = torch.where(mine.view(-1, 1, 1, 1), result, torch.zeros_like(result))
            pooled = result if pooled is None else pooled + result
        assert pooled is not None
        return pooled


def clipped(boxes: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Boxes [..., 4] clipped to the input image (its size read in the graph: any input size;
    a static export folds it into a constant)."""
    size = torch._shape_as_tensor(image)[2:].to(boxes.dtype)  # h, w
    limits = torch.stack([size[1], size[0], size[1], size[0]])
    return torch.minimum(boxes.clamp(min=0), limits)


def rpn_outputs(detector: Any, inputs: torch.Tensor) -> Any:
    """The RPN head's raw outputs (class maps, box deltas per level), entered through the
    detector's `tensor` mode."""

    def forward(batch_inputs: torch.Tensor, data_samples: Any = None) -> Any:
        return detector.rpn_head(detector.extract_feat(batch_inputs))

    with _forward_replaced(detector, forward):
        return detector(inputs, mode="tensor")
