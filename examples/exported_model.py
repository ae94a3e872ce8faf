"""What both examples share: the export's `model.json` (beside the model), the preprocessing it
describes (mmdet's keep-ratio resize, bottom-right padding), and the output: detections scaled
back to the original image, printed, drawn, and optionally saved as JSON.

Nothing here needs detcompress, mmdet or torch: numpy and opencv only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import cv2
import numpy as np


def fail(message: str) -> NoReturn:
    """One line on stderr and exit code 2, as for a bad command-line argument."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def arguments(description: str, model_file: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("model", type=Path, help=f"{model_file} (model.json beside it)")
    parser.add_argument("image", type=Path)
    parser.add_argument("--score-thr", type=float, default=0.3)
    parser.add_argument("--out", type=Path, help="write the image with the detections drawn")
    parser.add_argument("--json", type=Path, help="write the detections as JSON")
    return parser.parse_args()


def load(args: argparse.Namespace) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray]:
    """The metadata, the image, the model's input and the resize scale."""
    metadata = read_metadata(args.model)
    image = cv2.imread(str(args.image))
    if image is None:
        fail(f"{args.image}: not an image opencv can read")
    blob, scale = preprocess(image, metadata)
    return metadata, image, blob, scale


def read_metadata(model: Path) -> dict[str, Any]:
    """The export's model.json: classes, input size, resize and pad rule, outputs."""
    path = model.with_name("model.json")
    metadata: dict[str, Any] = json.loads(path.read_text())
    if not metadata.get("postprocessing"):
        fail(
            f"{model}: exported with --no-postprocessing; these examples need the "
            "`detections` output (export again without that option)"
        )
    return metadata


def preprocess(image: np.ndarray, metadata: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The BGR image as the model's input, [1, 3, H, W] float32 (0-255; the channel flip and
    mean/std are inside the model) or, for an export with `--input u8-nhwc`, [1, H, W, 3]
    uint8 as decoded, and the (x, y) scale from the original to the input."""
    prep = metadata["preprocessing"]
    height, width = image.shape[:2]
    target_w, target_h = prep["resize_scale"]
    if prep.get("keep_ratio", True):
        # mmcv's rescale: the longer side to the longer target side, unless the shorter side
        # would then exceed the shorter target side.
        factor = min(
            max(target_w, target_h) / max(height, width),
            min(target_w, target_h) / min(height, width),
        )
        new_w, new_h = int(width * factor + 0.5), int(height * factor + 0.5)
    else:
        new_w, new_h = target_w, target_h
    pad_h, pad_w = prep["height"], prep["width"]  # the export size
    if new_w > pad_w or new_h > pad_h:
        if -1 not in metadata["input"]["shape"][1:]:
            fail(
                f"the image resizes to {new_w}x{new_h}, larger than the model's fixed input "
                f"{pad_w}x{pad_h} (a portrait image for a landscape input); export with a larger "
                "--input-shape or with --dynamic-shape"
            )
        # --dynamic-shape: any size that is a multiple of the size divisor
        divisor = int(prep.get("size_divisor") or 1)
        pad_h = max(pad_h, -(-new_h // divisor) * divisor)
        pad_w = max(pad_w, -(-new_w // divisor) * divisor)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    padded = np.full((pad_h, pad_w, 3), prep["pad_value"], dtype=np.uint8)
    padded[:new_h, :new_w] = resized
    scale = np.array([new_w / width, new_h / height], dtype=np.float32)
    # A model exported with a fixed batch above 1 gets the image in every slot.
    batch = max(int(metadata["input"]["shape"][0]), 1)
    if metadata["input"].get("dtype") == "uint8":  # exported with --input u8-nhwc
        return np.repeat(padded[None], batch, axis=0), scale
    return np.repeat(padded.transpose(2, 0, 1)[None].astype(np.float32), batch, axis=0), scale


def to_original(
    detections: np.ndarray, scale: np.ndarray, image: np.ndarray, metadata: dict[str, Any]
) -> list[dict]:
    """The model's [K, 7] rows (image index, label, score, x1, y1, x2, y2 in input pixels) as
    boxes in the original image: clipped to it where mmdet clips them (not YOLOX's and YOLOv3's:
    the export's "clip_boxes")."""
    height, width = image.shape[:2]
    detections = detections[detections[:, 0] == 0]  # the first image of the batch
    boxes = detections[:, 3:7] / np.tile(scale, 2)
    if metadata.get("clip_boxes", metadata.get("head") != "YOLOXHead"):
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    return [
        {"label": int(row[1]), "score": float(row[2]), "box": box.tolist()}
        for row, box in zip(detections, boxes, strict=True)
    ]


def report(found: list[dict], image: np.ndarray, metadata: dict[str, Any], args: Any) -> None:
    """Print the detections above --score-thr, draw them (--out) and save them (--json)."""
    classes = metadata["classes"]
    kept = [d for d in found if d["score"] >= args.score_thr]
    for d in kept:
        x1, y1, x2, y2 = d["box"]  # may lie partly outside the image (YOLOX, YOLOv3)
        print(
            f"{classes[d['label']]:>12} {d['score']:.3f}  [{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}]"
        )
        cv2.rectangle(image, (int(x1), int(y1)), (int(x2), int(y2)), (0, 200, 0), 1)
        cv2.putText(
            image,
            f"{classes[d['label']]} {d['score']:.2f}",
            (int(x1), max(int(y1) - 2, 8)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.35,
            (0, 200, 0),
            1,
        )
    if args.out:
        cv2.imwrite(str(args.out), image)
    if args.json:
        Path(args.json).write_text(json.dumps(kept, indent=1))
