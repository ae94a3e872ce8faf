"""The built-in demo: a synthetic COCO-format detection dataset and an mmdet config for it.

The dataset is generated, never downloaded: shapes of three classes on textured backgrounds,
several per image, at varied scales, partly occluding each other. Everything is a function of
the seed, so two workspaces made with the same seed hold identical images and annotations.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from detcompress.errors import OutputExistsError
from detcompress.files import atomic_dir, check_output_dir, staging_dir
from detcompress.model.load import sha256_of

CLASSES = ("circle", "square", "triangle")
PALETTE = [(220, 20, 60), (0, 128, 255), (60, 180, 75)]


@dataclass(frozen=True)
class DemoSpec:
    image_size: int = 128
    train_images: int = 600
    val_images: int = 100
    min_objects: int = 2
    max_objects: int = 6
    min_object_size: int = 14
    max_object_size: int = 58
    # A new shape may hide at most this share of an already placed shape.
    max_occlusion: float = 0.4


# ---------------------------------------------------------------------------------------------
# Images


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth colour noise plus random lines: texture the detector must learn to ignore."""
    coarse = rng.uniform(40, 215, size=(rng.integers(3, 8), rng.integers(3, 8), 3))
    img = cv2.resize(coarse.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, 12, size=(size, size, 3)).astype(np.float32)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(2, 7)):
        p1 = tuple(int(v) for v in rng.integers(0, size, 2))
        p2 = tuple(int(v) for v in rng.integers(0, size, 2))
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.line(img, p1, p2, color, int(rng.integers(1, 3)), cv2.LINE_AA)
    return img


def _shape_mask(rng: np.random.Generator, label: int, size: int, image_size: int) -> np.ndarray:
    """A filled shape of class `label`, about `size` pixels across, somewhere in the image."""
    mask = np.zeros((image_size, image_size), np.uint8)
    half = size / 2
    cx, cy = rng.uniform(half * 0.6, image_size - half * 0.6, 2)
    if label == 0:  # circle
        cv2.circle(mask, (round(cx), round(cy)), round(half), 1, -1, cv2.LINE_AA)
    else:
        sides = 4 if label == 1 else 3
        angle = rng.uniform(0, 2 * np.pi)
        r = half * (np.sqrt(2) if sides == 4 else 1.15)
        # Squares are rotated by at most 20 degrees so they stay distinct from diamonds.
        if sides == 4:
            angle = np.pi / 4 + rng.uniform(-0.35, 0.35)
        pts = [
            (
                cx + r * np.cos(angle + 2 * np.pi * k / sides),
                cy + r * np.sin(angle + 2 * np.pi * k / sides),
            )
            for k in range(sides)
        ]
        cv2.fillPoly(mask, [np.round(np.array(pts)).astype(np.int32)], 1, cv2.LINE_AA)
    return mask


def _make_image(rng: np.random.Generator, spec: DemoSpec) -> tuple[np.ndarray, list[dict]]:
    size = spec.image_size
    img = _background(rng, size)
    owner = np.full((size, size), -1, np.int32)  # which object each pixel shows
    visible = np.zeros(0, np.int64)  # pixels of each placed object still visible
    objects: list[dict] = []
    for _ in range(int(rng.integers(spec.min_objects, spec.max_objects + 1))):
        for _attempt in range(20):
            label = int(rng.integers(len(CLASSES)))
            obj_size = int(rng.integers(spec.min_object_size, spec.max_object_size + 1))
            mask = _shape_mask(rng, label, obj_size, size).astype(bool)
            if mask.sum() < 20:
                continue
            covered = np.bincount(owner[mask] + 1, minlength=len(objects) + 1)[1:]
            total = np.array([o["pixels"] for o in objects], np.int64)
            if np.all(1 - (visible - covered) / np.maximum(total, 1) <= spec.max_occlusion):
                break
        else:
            continue
        color = rng.integers(0, 256, 3).astype(np.float32)
        shade = np.clip(color + rng.normal(0, 10, (size, size, 3)), 0, 255).astype(np.uint8)
        img[mask] = shade[mask]
        owner[mask] = len(objects)
        visible = np.append(visible - covered, mask.sum())
        ys, xs = np.nonzero(mask)
        objects.append(
            {
                "label": label,
                "pixels": int(mask.sum()),
                "bbox": [
                    int(xs.min()),
                    int(ys.min()),
                    int(xs.max() - xs.min() + 1),
                    int(ys.max() - ys.min() + 1),
                ],
            }
        )
    return img, objects


def generate_split(root: Path, split: str, num_images: int, seed: int, spec: DemoSpec) -> dict:
    """Write `root/<split>/*.png` and return the split's COCO annotation dict."""
    rng = np.random.default_rng([seed, {"train": 0, "val": 1}[split]])
    (root / split).mkdir(parents=True, exist_ok=True)
    images: list[dict] = []
    annotations: list[dict] = []
    for image_id in range(1, num_images + 1):
        img, objects = _make_image(rng, spec)
        file_name = f"{image_id:05d}.png"
        cv2.imwrite(str(root / split / file_name), img)
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": spec.image_size,
                "height": spec.image_size,
            }
        )
        for obj in objects:
            x, y, w, h = obj["bbox"]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj["label"] + 1,
                    "bbox": [x, y, w, h],
                    "area": obj["pixels"],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_dataset(data_dir: Path, seed: int, spec: DemoSpec = DemoSpec()) -> dict[str, int]:
    """Generate train and val splits into `data_dir`; returns image counts."""
    (data_dir / "annotations").mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, n in (("train", spec.train_images), ("val", spec.val_images)):
        coco = generate_split(data_dir, split, n, seed, spec)
        (data_dir / "annotations" / f"{split}.json").write_text(json.dumps(coco))
        counts[split] = n
    return counts


# ---------------------------------------------------------------------------------------------
# The demo config

DEMO_CONFIG = """\
# detcompress demo: {model_name} on the synthetic shapes dataset of this workspace.
# It inherits mmdet's stock config and adapts it to the data: 3 classes, {size}x{size} input,
# no pretrained-weight download, small batches on CPU, iteration-based schedule.
_base_ = 'mmdet::{base}'

data_root = '{{{{ fileDirname }}}}/../data/'
metainfo = dict(classes={classes!r}, palette={palette!r})
img_scale = ({size}, {size})

{model_part}

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Pad', size=img_scale, pad_val=dict(img=(114, 114, 114))),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='Pad', size=img_scale, pad_val=dict(img=(114, 114, 114))),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]

train_dataloader = dict(
    _delete_=True,
    batch_size={batch_size},
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type='CocoDataset',
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=1),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    _delete_=True,
    batch_size=8,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='CocoDataset',
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/val.json',
        data_prefix=dict(img='val/'),
        test_mode=True,
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(
    _delete_=True, type='CocoMetric', ann_file=data_root + 'annotations/val.json', metric='bbox')
test_evaluator = val_evaluator

max_iters = {max_iters}
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
{optim_part}
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end={warmup}),
    dict(type='CosineAnnealingLR', eta_min_ratio=0.02, by_epoch=False, begin={warmup},
         end=max_iters, T_max=max_iters - {warmup}),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=2),
)
log_processor = dict(by_epoch=False)
custom_hooks = []
auto_scale_lr = dict(enable=False, base_batch_size={batch_size})
randomness = dict(seed=0)
"""

# Candidate stock models, adapted to the demo data. Chosen by measurement on 2 CPU cores, same
# data, batch 8, AdamW 2e-3, 600 iterations at 160 px: yolox_tiny reached bbox mAP 0.344 in
# 346 s, rtmdet_tiny 0.089 in 437 s. yolox_tiny with AdamW 4e-3, 900 iterations at 128 px: 0.579
# in 471 s. See the README for the demo's current numbers.
MODELS = {
    "rtmdet_tiny": dict(
        base="rtmdet/rtmdet_tiny_8xb32-300e_coco.py",
        model_part=(
            "model = dict(\n"
            "    backbone=dict(init_cfg=None),  # no ImageNet download\n"
            "    bbox_head=dict(num_classes=3),\n"
            "    test_cfg=dict(nms_pre=1000, max_per_img=100),\n"
            ")"
        ),
        optim_part=(
            "optim_wrapper = dict(_delete_=True, type='OptimWrapper',\n"
            "                     optimizer=dict(type='AdamW', lr={lr}, weight_decay=0.05),\n"
            "                     paramwise_cfg=dict(norm_decay_mult=0, bias_decay_mult=0,\n"
            "                                        bypass_duplicate=True))"
        ),
    ),
    "yolox_tiny": dict(
        base="yolox/yolox_tiny_8xb8-300e_coco.py",
        model_part=(
            "model = dict(\n"
            "    data_preprocessor=dict(batch_augments=None),\n"
            "    bbox_head=dict(num_classes=3),\n"
            "    test_cfg=dict(max_per_img=100),\n"
            ")"
        ),
        optim_part=(
            "optim_wrapper = dict(_delete_=True, type='OptimWrapper',\n"
            "                     optimizer=dict(type='AdamW', lr={lr}, weight_decay=0.05),\n"
            "                     paramwise_cfg=dict(norm_decay_mult=0, bias_decay_mult=0))"
        ),
    ),
}
DEFAULT_MODEL = "yolox_tiny"
DEMO_MAX_ITERS = 900
DEMO_LR = 0.004


def demo_config_text(
    model: str = DEFAULT_MODEL,
    max_iters: int = DEMO_MAX_ITERS,
    batch_size: int = 8,
    size: int = DemoSpec.image_size,
    lr: float = DEMO_LR,
) -> str:
    parts = MODELS[model]
    return DEMO_CONFIG.format(
        model_name=model,
        base=parts["base"],
        model_part=parts["model_part"],
        optim_part=parts["optim_part"].format(lr=lr),
        classes=CLASSES,
        palette=PALETTE,
        size=size,
        batch_size=batch_size,
        max_iters=max_iters,
        warmup=max(1, min(100, max_iters // 5)),
    )


WORKSPACE_README = """\
# detcompress demo workspace

Made by `detcompress init demo` (seed {seed}): synthetic shapes ({classes}), {train} train and
{val} val images of {size}x{size} pixels in `data/`, COCO annotations in `data/annotations/`.

Next commands (run from this folder):

    detcompress compress configs/demo.py                      # FP32 baseline
    detcompress compress configs/demo.py --preset presets/int8.yaml --dry-run
"""


MANIFEST = ".detcompress-workspace.json"


def init_demo(
    directory: Path,
    seed: int = 0,
    force: bool = False,
    spec: DemoSpec = DemoSpec(),
    report: Callable[[str], None] = lambda line: None,
) -> Path:
    """Write a demo workspace into `directory`. Returns the config path.

    A new folder is written atomically. With `force`, an existing folder keeps everything that
    `init` did not write (work dirs, the user's own files); of the files `init` writes, those it
    wrote before and nobody changed since (see the manifest) are replaced, any other is moved
    to `previous_init_<time>/`, never deleted."""
    check_output_dir(directory, "init demo")
    if directory.exists() and any(directory.iterdir()) and not force:
        raise OutputExistsError(
            f"{directory}: folder exists and is not empty; choose another or pass --force "
            "(which refreshes only the workspace's own files)"
        )
    if not directory.exists() or not any(directory.iterdir()):
        with atomic_dir(directory, replace=True) as tmp:
            _write_workspace(tmp, seed, spec)
    else:
        with staging_dir(directory) as tmp:
            _write_workspace(tmp, seed, spec)
            aside = _refresh_into(tmp, directory)
            if aside.exists():
                report(f"files of the earlier workspace that were edited moved to {aside}")
    return directory / "configs" / "demo.py"


def _write_workspace(folder: Path, seed: int, spec: DemoSpec) -> None:
    from detcompress.config.presets import bundled_presets

    write_dataset(folder / "data", seed, spec)
    (folder / "configs").mkdir()
    (folder / "configs" / "demo.py").write_text(demo_config_text(size=spec.image_size))
    (folder / "presets").mkdir()
    for name, path in bundled_presets().items():
        shutil.copy(path, folder / "presets" / f"{name}.yaml")
    (folder / "README.md").write_text(
        WORKSPACE_README.format(
            seed=seed,
            classes=", ".join(CLASSES),
            train=spec.train_images,
            val=spec.val_images,
            size=spec.image_size,
        )
    )
    written = {
        str(p.relative_to(folder)): sha256_of(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }
    (folder / MANIFEST).write_text(json.dumps(written, indent=1) + "\n")


def _refresh_into(new: Path, directory: Path) -> Path:
    """Move the files of the workspace just written in `new` into the existing `directory`
    (emptying `new`); a file there that `init` did not write, or that changed since, is moved
    aside first."""
    import os
    import time

    manifest = directory / MANIFEST
    try:
        ours = json.loads(manifest.read_text()) if manifest.is_file() else {}
    except (OSError, ValueError):
        ours = {}
    aside = directory / time.strftime("previous_init_%Y%m%d_%H%M%S")
    for source in sorted(p for p in new.rglob("*") if p.is_file()):
        relative = source.relative_to(new)
        target = directory / relative
        for parent in reversed(relative.parents[:-1]):  # a file where we need a folder
            if (directory / parent).is_file():
                _move_aside(directory / parent, aside / parent)
        unchanged = target.is_file() and ours.get(str(relative)) == sha256_of(target)
        if target.exists() and relative.name != MANIFEST and not unchanged:
            _move_aside(target, aside / relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
    return aside


def _move_aside(path: Path, to: Path) -> None:
    to.parent.mkdir(parents=True, exist_ok=True)
    path.rename(to)
