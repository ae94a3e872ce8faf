"""Run a detcompress export (ONNX with postprocessing inside) on one image, with nothing but
onnxruntime, numpy and opencv:

    python examples/detect_onnxruntime.py out/model.onnx image.jpg --out drawn.jpg
"""

from __future__ import annotations

import onnxruntime as ort

from exported_model import arguments, load, report, to_original

args = arguments(__doc__.splitlines()[0], "model.onnx")
metadata, image, blob, scale = load(args)
session = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
(detections,) = session.run(["detections"], {session.get_inputs()[0].name: blob})
report(to_original(detections, scale, image, metadata), image, metadata, args)
