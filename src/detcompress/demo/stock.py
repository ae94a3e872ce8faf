"""mmdet 3.3's stock configs of the detector families detcompress supports, pointed at the demo's
synthetic data: what `tests/test_stock_configs.py` and `benchmarks/model_coverage.py` run.

`small` shrinks a family for CI (input size as small as its anchors and strides allow; ResNet-50
becomes ResNet-18 with a 64-channel FPN); the head, neck and their operations stay those of the
stock config. Without `small`, the stock model at the stock input size, 3 classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HEAD = "backbone=dict(init_cfg=None), bbox_head=dict(num_classes=3)"
_R18 = (
    "backbone=dict(depth=18, init_cfg=None), "
    "neck=dict(in_channels=[64, 128, 256, 512], out_channels=64)"
)
R18_HEAD = f"{_R18}, bbox_head=dict(num_classes=3, in_channels=64, feat_channels=64)"
TWO_STAGE_HEAD = "backbone=dict(init_cfg=None), roi_head=dict(bbox_head=dict(num_classes=3))"
R18_TWO_STAGE = (
    f"{_R18}, rpn_head=dict(in_channels=64, feat_channels=64), "
    "roi_head=dict(bbox_roi_extractor=dict(out_channels=64), "
    "bbox_head=dict(num_classes=3, in_channels=64, fc_out_channels=256))"
)
# YOLOX's multi-scale batch augment resizes to 320-640 px whatever the pipeline says.
_NO_BATCH_AUGMENT = "data_preprocessor=dict(batch_augments=None)"


@dataclass(frozen=True)
class StockFamily:
    base: str  # the config under mmdet's configs/
    size: int  # the stock input size (square)
    small_size: int
    model: str  # model keys: 3 classes, no pretrained download
    small_model: str
    two_stage: bool = False
    # Gradient clipping for QAT of a barely trained model (see tests/test_stock_configs.py).
    qat_options: tuple[str, ...] = ()
    # Its first LR scheduler is a warm-up counted in iterations (500-2000 in the stock configs:
    # a short run would end inside it); YOLOX's counts epochs.
    iteration_warmup: bool = True


FAMILIES = {
    "ssdlite": StockFamily(
        "ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py", 320, 320, HEAD, HEAD
    ),
    "ssd300": StockFamily("ssd/ssd300_coco.py", 300, 300, HEAD, HEAD),
    "retinanet": StockFamily("retinanet/retinanet_r18_fpn_1x_coco.py", 640, 256, HEAD, HEAD),
    # GroupNorm heads (kept in float under int8), centerness-weighted scores in the graph.
    "atss": StockFamily("atss/atss_r50_fpn_1x_coco.py", 640, 128, HEAD, R18_HEAD),
    "fcos": StockFamily("fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py", 640, 128, HEAD, R18_HEAD),
    # Objectness and class scores in one output map per level.
    "yolov3": StockFamily("yolo/yolov3_mobilenetv2_8xb24-320-300e_coco.py", 320, 128, HEAD, HEAD),
    "yolox": StockFamily(
        "yolox/yolox_tiny_8xb8-300e_coco.py",
        416,
        128,
        f"{HEAD}, {_NO_BATCH_AUGMENT}",
        f"{HEAD}, {_NO_BATCH_AUGMENT}",
        qat_options=("optim_wrapper.clip_grad={max_norm: 10}",),
        iteration_warmup=False,
    ),
    "rtmdet": StockFamily("rtmdet/rtmdet_tiny_8xb32-300e_coco.py", 640, 128, HEAD, HEAD),
    # Two-stage: RPN proposals, RoIAlign and the RoI head inside the exported graph.
    "faster_rcnn": StockFamily(
        "faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py",
        640,
        128,
        TWO_STAGE_HEAD,
        R18_TWO_STAGE,
        two_stage=True,
    ),
}

DEMO_CLASSES = ("circle", "square", "triangle")
# A stock config on data in the demo's layout, e.g. `TEMPLATE.format(base=..., data=..., size=...,
# model=..., batch=..., classes=...)`.
TEMPLATE = """\
_base_ = 'mmdet::{base}'
data_root = '{data}/'
metainfo = dict(classes={classes!r})
model = dict({model})
pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=({size}, {size}), keep_ratio=False),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(_delete_=True, batch_size={batch}, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='CocoDataset', data_root=data_root, metainfo=metainfo, pipeline=pipeline,
                 ann_file='annotations/train.json', data_prefix=dict(img='train/')))
val_dataloader = dict(_delete_=True, batch_size={batch}, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='CocoDataset', data_root=data_root, metainfo=metainfo, pipeline=pipeline,
                 ann_file='annotations/val.json', data_prefix=dict(img='val/'), test_mode=True))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/val.json')
test_evaluator = val_evaluator
custom_hooks = []
"""


def write_config(
    family: StockFamily, data: Path, path: Path, small: bool, batch_size: int = 2
) -> Path:
    """The family's stock config on the demo data (`data`: a workspace's data folder)."""
    path.write_text(
        TEMPLATE.format(
            base=family.base,
            data=data,
            size=family.small_size if small else family.size,
            model=family.small_model if small else family.model,
            batch=batch_size,
            classes=DEMO_CLASSES,
        )
    )
    return path
