"""Run a detcompress export (OpenVINO IR with postprocessing inside) on one image, with nothing
but openvino, numpy and opencv:

    python examples/detect_openvino.py out/model.xml image.jpg --out drawn.jpg
"""

from __future__ import annotations

import openvino as ov

from exported_model import arguments, load, report, to_original

args = arguments(__doc__.splitlines()[0], "model.xml")
metadata, image, blob, scale = load(args)
compiled = ov.Core().compile_model(args.model, "CPU")
detections = compiled(blob)["detections"]
report(to_original(detections, scale, image, metadata), image, metadata, args)
