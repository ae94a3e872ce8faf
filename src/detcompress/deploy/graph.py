"""The detector as a deployable graph: an image batch in, the head's raw outputs (or decoded boxes
and per-class scores, ready for a backend's NMS operation) out.

The exported model takes images as mmdet's test pipeline delivers them (BGR, 0..255, resized as
the pipeline says, padded bottom-right to the export size); the data preprocessor's channel flip
and mean/std run inside the graph, so a deployment needs nothing from mmdet.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from detcompress.deploy.two_stage import TwoStageDecoder, clipped, is_two_stage, rpn_outputs
from detcompress.errors import ConfigError, DetcompressError

# Heads whose boxes mmdet leaves unclipped (their bbox coders decode without a max shape): eval
# and the examples clip every other head's boxes to the image, as mmdet does.
UNCLIPPED_HEADS = ("YOLOXHead", "YOLOV3Head")
# Heads whose box decoding detcompress can put inside the graph: YOLOX keeps one label per box
# (its best class), YOLOv3 filters on objectness; the others keep mmdet's generic postprocessing
# (every (box, class) pair a candidate), and so does any dense head that does not override it.
SUPPORTED_HEADS = (
    "YOLOXHead",
    "YOLOV3Head",
    "SSDHead",
    "RetinaHead",
    "ATSSHead",
    "FCOSHead",
    "RTMDetHead",
    "RPNHead + StandardRoIHead (Faster R-CNN)",
)


@dataclass(frozen=True)
class Preprocessing:
    """What a deployment does to an image before the exported model sees it, and what the model
    does itself (channel flip, mean/std)."""

    height: int
    width: int
    mean: list[float]
    std: list[float]
    bgr_to_rgb: bool
    pad_value: float
    size_divisor: int
    resize_scale: list[int] | None  # (w, h) as in mmdet's Resize
    keep_ratio: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class NMSParams:
    score_threshold: float
    iou_threshold: float
    max_per_image: int  # -1: unlimited
    one_label_per_box: bool  # YOLOX: only the best class of a box takes part

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _pipeline_step(pipeline: list[Any], name: str) -> dict[str, Any] | None:
    for step in pipeline:
        if step.get("type") == name:
            return dict(step)
    return None


def preprocessing_of(cfg: Any, input_shape: tuple[int, int] | None, source: str) -> Preprocessing:
    """The preprocessing of `cfg`'s test pipeline and data preprocessor, for a fixed input size
    (`input_shape` (h, w), else the pipeline's Pad size or Resize scale rounded up to the size
    divisor)."""
    prep = dict(cfg.model.get("data_preprocessor") or {})
    divisor = int(prep.get("pad_size_divisor", 1) or 1)
    pipeline = list(cfg.get("test_dataloader", {}).get("dataset", {}).get("pipeline", []) or [])
    resize = _pipeline_step(pipeline, "Resize")
    pad = _pipeline_step(pipeline, "Pad")
    scale = list(resize["scale"]) if resize and resize.get("scale") else None
    pad_value = float(prep.get("pad_value", 0) or 0)
    if pad:
        pad_val = pad.get("pad_val", {})
        img_val = pad_val.get("img", 0) if isinstance(pad_val, dict) else pad_val
        pad_value = float(img_val[0] if isinstance(img_val, list | tuple) else img_val)
    if input_shape is None:
        if pad and pad.get("size"):
            width, height = pad["size"]
        elif scale:
            width, height = scale
        else:
            raise ConfigError(
                f"{source}: the test pipeline has no Resize scale or Pad size to take the input "
                "size from; pass --input-shape H W"
            )
        height, width = _round_up(height, divisor), _round_up(width, divisor)
    else:
        height, width = input_shape
        if height < 1 or width < 1:
            raise DetcompressError(
                f"--input-shape {height} {width}: height and width must be positive"
            )
    if height % divisor or width % divisor:
        raise DetcompressError(
            f"--input-shape {height} {width}: not divisible by {divisor} (the model's "
            f"data_preprocessor.pad_size_divisor); use e.g. {_round_up(height, divisor)} "
            f"{_round_up(width, divisor)}"
        )
    return Preprocessing(
        height=int(height),
        width=int(width),
        mean=[float(v) for v in prep.get("mean") or [0.0, 0.0, 0.0]],
        std=[float(v) for v in prep.get("std") or [1.0, 1.0, 1.0]],
        bgr_to_rgb=bool(prep.get("bgr_to_rgb", False) or prep.get("rgb_to_bgr", False)),
        pad_value=pad_value,
        size_divisor=divisor,
        resize_scale=[int(v) for v in scale] if scale else None,
        keep_ratio=bool(resize.get("keep_ratio", False)) if resize else False,
    )


def _round_up(value: int, divisor: int) -> int:
    return -(-int(value) // divisor) * divisor


# The NMS operation's threshold when the decoder already applied `score_thr`: it drops exactly
# the candidates scored 0 (OpenVINO keeps scores >= threshold, ONNX Runtime scores > it).
AFTER_DECODER_THRESHOLD = 1e-30


def has_score_factors(head: Any, group_count: int) -> bool:
    """Whether the head's third output group multiplies the scores (ATSS's centerness)."""
    return group_count > 2 and output_groups(head, group_count)[2] == "score_factors"


def nms_params(head: Any, score_threshold_applied: bool = False) -> NMSParams:
    """NMS settings from the head's test_cfg; `score_threshold_applied`: the decoder applied
    `score_thr` before multiplying score factors, so the NMS operation only drops zeros."""
    cfg = head.test_cfg or {}
    nms = cfg.get("nms") or {}
    if nms.get("type", "nms") != "nms":
        raise DetcompressError(
            f"test_cfg.nms.type is '{nms.get('type')}': only 'nms' can go inside the exported "
            "graph; export with --no-postprocessing"
        )
    # mmdet caps at nms.max_num, then at max_per_img (YOLOXHead skips the latter; the graph
    # applies it anyway, as the config asks, and COCO's metric counts 100 per image at most).
    limits = [int(v) for v in (nms.get("max_num"), cfg.get("max_per_img")) if v and int(v) > 0]
    return NMSParams(
        score_threshold=(
            AFTER_DECODER_THRESHOLD if score_threshold_applied else float(cfg.get("score_thr", 0.0))
        ),
        iou_threshold=float(nms.get("iou_threshold", 0.5)),
        max_per_image=min(limits) if limits else -1,
        one_label_per_box=type(head).__name__ == "YOLOXHead",
    )


def output_groups(head: Any, count: int) -> list[str]:
    """Names of the head's `tensor`-mode output groups, as its `predict_by_feat` calls them
    (cls_scores, bbox_preds, objectnesses/score_factors, ...)."""
    params = [p for p in inspect.signature(head.predict_by_feat).parameters if p != "self"]
    return params[:count]


class _YOLOXDecoder(nn.Module):
    """YOLOXHead.predict_by_feat before NMS, in traceable torch: boxes [N, M, 4] and
    scores [N, C, M] where only each box's best class keeps its score."""

    def __init__(self, head: Any) -> None:
        super().__init__()
        self.prior_generator = head.prior_generator
        self.num_classes = head.cls_out_channels

    def forward(self, outs: Any, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cls_scores, bbox_preds, objectnesses = outs
        n = cls_scores[0].shape[0]
        cls = torch.cat(
            [c.permute(0, 2, 3, 1).reshape(n, -1, self.num_classes) for c in cls_scores], 1
        ).sigmoid()
        deltas = torch.cat([b.permute(0, 2, 3, 1).reshape(n, -1, 4) for b in bbox_preds], 1)
        obj = torch.cat([o.permute(0, 2, 3, 1).reshape(n, -1) for o in objectnesses], 1).sigmoid()
        priors = torch.cat(grid_priors(self.prior_generator, cls_scores, with_stride=True))
        xy = deltas[..., :2] * priors[:, 2:] + priors[:, :2]
        wh = deltas[..., 2:].exp() * priors[:, 2:]
        boxes = torch.cat([xy - wh / 2, xy + wh / 2], -1)
        best = torch.nn.functional.one_hot(cls.argmax(-1), self.num_classes).to(cls.dtype)
        scores = cls * best * obj.unsqueeze(-1)
        return boxes, scores.transpose(1, 2)


class _DenseHeadDecoder(nn.Module):
    """mmdet's `BaseDenseHead` postprocessing before NMS, in traceable torch, for every head that
    keeps it (RetinaNet, SSD, ATSS, FCOS, RTMDet): the head's prior generator and bbox coder
    decode the boxes; every (prior, class) pair is a candidate, the best `nms_pre` of each level,
    as mmdet keeps them (the others score 0); boxes are clipped to the input and boxes not larger
    than `min_bbox_size` score 0.

    Heads with score factors (ATSS's and FCOS's centerness) score `sigmoid(cls) *
    sigmoid(factor)` as mmdet does, with `score_thr` applied to the class score before the product
    (so here, not by the NMS operation: see `nms_params(score_threshold_applied=True)`)."""

    def __init__(self, head: Any):
        super().__init__()
        self.prior_generator = head.prior_generator
        self.head_coder: Any = head.bbox_coder
        self.cls_out = getattr(head, "cls_out_channels", head.num_classes)
        self.use_sigmoid = getattr(head, "use_sigmoid_cls", True)
        cfg = head.test_cfg or {}
        self.min_size = float(cfg.get("min_bbox_size", -1))
        self.nms_pre = int(cfg.get("nms_pre", -1))
        self.score_thr = float(cfg.get("score_thr", 0.0))

    def forward(self, outs: Any, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cls_scores, bbox_preds = outs[0], outs[1]
        n = cls_scores[0].shape[0]
        scores = torch.cat([self._best(self._class_scores(c, n)) for c in cls_scores], 1)
        deltas = torch.cat([b.permute(0, 2, 3, 1).reshape(n, -1, 4) for b in bbox_preds], 1)
        priors = torch.cat(grid_priors(self.prior_generator, cls_scores))
        # max_shape=None: mmdet's clamp path imports a module removed in mmdet 3 under ONNX export
        boxes = self.head_coder.decode(priors.expand(n, -1, -1), deltas, max_shape=None)
        factors = None
        if len(outs) > 2:  # score factors: one per prior
            factors = torch.cat(
                [f.permute(0, 2, 3, 1).reshape(n, -1) for f in outs[2]], 1
            ).sigmoid()
        return self._candidates(clipped(boxes, image), scores, factors)

    def _class_scores(self, cls_score: torch.Tensor, n: int) -> torch.Tensor:
        logits = cls_score.permute(0, 2, 3, 1).reshape(n, -1, self.cls_out)
        return logits.sigmoid() if self.use_sigmoid else logits.softmax(-1)[..., :-1]

    def _best(self, scores: torch.Tensor) -> torch.Tensor:
        """The `nms_pre` best (prior, class) pairs keep their scores, the others score 0 (all
        keep theirs when there are fewer pairs: the zeros appended make the k-th best 0 then,
        whatever the input size)."""
        if self.nms_pre <= 0:
            return scores
        flat = scores.reshape(scores.shape[0], -1)
        padded = torch.cat([flat, flat.new_zeros(flat.shape[0], self.nms_pre)], 1)
        kth = padded.topk(self.nms_pre, dim=1).values[:, -1:]
        return scores * (scores >= kth.unsqueeze(-1)).to(scores.dtype)

    def _candidates(
        self, boxes: torch.Tensor, scores: torch.Tensor, factors: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """boxes [N, M, 4] and scores [N, C, M] for the NMS operation: score factors multiplied
        in after `score_thr`, boxes not larger than `min_bbox_size` scored 0."""
        if factors is not None:
            kept = (scores > self.score_thr).to(scores.dtype)
            scores = scores * kept * factors.unsqueeze(-1)
        if self.min_size >= 0:
            big = (boxes[..., 2] - boxes[..., 0] > self.min_size) & (
                boxes[..., 3] - boxes[..., 1] > self.min_size
            )
            scores = scores * big.unsqueeze(-1).to(scores.dtype)
        return boxes, scores.transpose(1, 2)


class _YOLOV3Decoder(_DenseHeadDecoder):
    """YOLOV3Head.predict_by_feat before NMS: one output map per level holding, per anchor, box
    deltas (xy through a sigmoid), objectness and class logits. Candidates need objectness >=
    `conf_thr` and class score > `score_thr`; the best `nms_pre` over all levels together keep
    their score, multiplied by the objectness. mmdet does not clip YOLOv3's boxes."""

    def __init__(self, head: Any):
        super().__init__(head)
        self.level_strides = [
            float(stride[0] if isinstance(stride, tuple) else stride)
            for stride in head.featmap_strides
        ]
        self.attributes = head.num_attrib
        self.conf_thr = float((head.test_cfg or {}).get("conf_thr", -1))

    def forward(self, outs: Any, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (pred_maps,) = outs
        n = pred_maps[0].shape[0]
        preds = torch.cat(
            [p.permute(0, 2, 3, 1).reshape(n, -1, self.attributes) for p in pred_maps], 1
        )
        deltas = torch.cat([preds[..., :2].sigmoid(), preds[..., 2:4]], -1)
        priors = grid_priors(self.prior_generator, pred_maps)
        strides = torch.cat(
            [torch.ones_like(p[:, :1]) * s for p, s in zip(priors, self.level_strides, strict=True)]
        )
        boxes = self.head_coder.decode(torch.cat(priors), deltas, strides)
        objectness = preds[..., 4].sigmoid()
        scores = preds[..., 5:].sigmoid()
        if self.conf_thr > 0:
            scores = scores * (objectness >= self.conf_thr).unsqueeze(-1).to(scores.dtype)
        # Below score_thr before the top nms_pre, as mmdet filters: a pair it dropped for its
        # objectness or class score must not take one of the nms_pre places.
        scores = scores * (scores > self.score_thr).to(scores.dtype)
        return self._candidates(boxes, self._best(scores), objectness)


class DeployableDetector(nn.Module):
    """image [N, 3, H, W] (BGR, 0..255) -> the head's outputs, flattened, or with
    `decode_boxes` (boxes [N, M, 4] in input pixels, scores [N, C, M]) for an NMS operation
    with the settings in `nms`."""

    def __init__(self, detector: nn.Module, prep: Preprocessing, decode_boxes: bool) -> None:
        super().__init__()
        self.detector = detector
        self.prep = prep
        self.nms: NMSParams | None = None
        self.decoder: nn.Module | None = None
        self.two_stage = is_two_stage(detector)
        if self.two_stage:
            # Raw outputs: the RPN head's (what verification compares when detections are few).
            self.group_sizes = [len(self.head.prior_generator.strides)] * 2
            self.groups = output_groups(self.head, 2)
            if decode_boxes:
                self.decoder = TwoStageDecoder(detector)
                self.nms = nms_params(detector.roi_head)
            return
        example = torch.zeros(1, 3, prep.height, prep.width)
        with torch.no_grad():
            outs = detector(example, mode="tensor")
        self.group_sizes = [len(group) for group in outs]
        self.groups = output_groups(self.head, len(outs))
        if decode_boxes:
            self.decoder, self.nms = _decoder_for(self.head, len(outs))

    @property
    def head(self) -> Any:
        """The head whose outputs are the raw outputs (a two-stage detector's RPN head)."""
        return getattr(self.detector, "rpn_head" if self.two_stage else "bbox_head")

    @property
    def head_name(self) -> str:
        """The head(s) whose decoding the graph holds: `RPNHead+Shared2FCBBoxHead` for two
        stages."""
        if self.two_stage:
            roi_head: Any = self.detector.roi_head
            return f"{type(self.head).__name__}+{type(roi_head.bbox_head).__name__}"
        return type(self.head).__name__

    @property
    def raw_output_names(self) -> list[str]:
        return [
            f"{group}.{level}"
            for group, size in zip(self.groups, self.group_sizes, strict=True)
            for level in range(size)
        ]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        inputs = normalize(self.prep, image)
        if isinstance(self.decoder, TwoStageDecoder):
            return tuple(self.decoder.run(self.detector, inputs, image))
        if self.two_stage:
            outs = rpn_outputs(self.detector, inputs)
        else:
            outs = self.detector(inputs, mode="tensor")
        if self.decoder is not None:
            return tuple(self.decoder(outs, image))
        return tuple(t for group in outs for t in group)


def grid_priors(prior_generator: Any, feature_maps: list[torch.Tensor], **options: Any) -> Any:
    """mmdet's priors (anchors or points) per level for these feature maps, computed from their
    sizes inside the traced graph, so that an export with a dynamic input size decodes at any
    size (a static one folds them into constants)."""
    sizes = [f.shape[-2:] for f in feature_maps]
    first = feature_maps[0]
    return prior_generator.grid_priors(sizes, dtype=first.dtype, device=first.device, **options)


def _decoder_for(head: Any, group_count: int) -> tuple[nn.Module, NMSParams]:
    """The head's decoding in torch and the NMS settings that complete it."""
    kind = type(head).__name__
    if kind == "YOLOXHead":
        return _YOLOXDecoder(head), nms_params(head)
    if kind == "YOLOV3Head":
        decoder: nn.Module = _YOLOV3Decoder(head)
        return decoder, nms_params(head, score_threshold_applied=True)
    if _keeps_base_postprocessing(head):
        decoder = _DenseHeadDecoder(head)
        return decoder, nms_params(head, has_score_factors(head, group_count))
    raise DetcompressError(
        f"postprocessing inside the exported graph is not available for {kind} (available: "
        f"{', '.join(SUPPORTED_HEADS)}); export with --no-postprocessing and detcompress "
        "applies mmdet's own postprocessing when evaluating"
    )


def _keeps_base_postprocessing(head: Any) -> bool:
    """A dense head whose postprocessing is mmdet's generic one (prior generator + bbox coder +
    score activation): a head that overrides it decodes differently and needs its own decoder."""
    from mmdet.models.dense_heads.base_dense_head import BaseDenseHead

    return (
        isinstance(head, BaseDenseHead)
        and hasattr(head, "prior_generator")
        and hasattr(head, "bbox_coder")
        and type(head)._predict_by_feat_single is BaseDenseHead._predict_by_feat_single
        and type(head).predict_by_feat is BaseDenseHead.predict_by_feat
    )


def normalize(prep: Preprocessing, images: torch.Tensor) -> torch.Tensor:
    """What the detector itself sees: the data preprocessor's channel flip and mean/std (traced
    into the exported graph as constants)."""
    x = images.flip(1) if prep.bgr_to_rgb else images
    mean = torch.tensor(prep.mean).view(1, -1, 1, 1)
    std = torch.tensor(prep.std).view(1, -1, 1, 1)
    return (x - mean) / std


def as_u8_nhwc(images: np.ndarray) -> np.ndarray:
    """float [N, 3, H, W] images holding whole 0..255 values (the test pipeline's, padded) ->
    the uint8 [N, H, W, 3] that an export with `--input u8-nhwc` takes."""
    return np.ascontiguousarray(np.rint(images).clip(0, 255).astype(np.uint8).transpose(0, 2, 3, 1))


def size_to_fit(prep: Preprocessing, images: list[torch.Tensor]) -> Preprocessing:
    """For a model with a dynamic input size: the export size, or larger where the images need
    it (multiples of the size divisor, as mmdet pads a batch)."""
    height = max([prep.height] + [_round_up(i.shape[-2], prep.size_divisor) for i in images])
    width = max([prep.width] + [_round_up(i.shape[-1], prep.size_divisor) for i in images])
    return replace(prep, height=height, width=width)


def pad_batch(images: list[torch.Tensor], prep: Preprocessing) -> torch.Tensor:
    """uint8/float images [3, h, w] from the test pipeline -> float [N, 3, H, W], padded
    bottom-right with the pipeline's pad value, as the exported model expects."""
    batch = torch.full((len(images), 3, prep.height, prep.width), prep.pad_value)
    for i, image in enumerate(images):
        h, w = image.shape[-2:]
        if h > prep.height or w > prep.width:
            raise DetcompressError(
                f"an image of {h}x{w} after the test pipeline does not fit the model's input "
                f"{prep.height}x{prep.width}; export with a larger --input-shape or with "
                "--dynamic-shape"
            )
        batch[i, :, :h, :w] = image.float()
    return batch
