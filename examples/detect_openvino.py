"""Run a detcompress export (OpenVINO IR with postprocessing inside) on one image, with nothing
but openvino, numpy and opencv:

    python examples/detect_openvino.py out/model.xml image.jpg --out drawn.jpg
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import openvino as ov

from exported_model import preprocess, read_metadata, report, to_original

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("model", type=Path, help="model.xml (model.json beside it)")
parser.add_argument("image", type=Path)
parser.add_argument("--score-thr", type=float, default=0.3)
parser.add_argument("--out", type=Path, help="write the image with the detections drawn")
parser.add_argument("--json", type=Path, help="write the detections as JSON")
args = parser.parse_args()

metadata = read_metadata(args.model)
image = cv2.imread(str(args.image))
if image is None:
    raise SystemExit(f"{args.image}: not an image opencv can read")
blob, scale = preprocess(image, metadata)
compiled = ov.Core().compile_model(args.model, "CPU")
detections = compiled(blob)["detections"]
report(to_original(detections, scale, image, metadata), image, metadata, args)
