"""Runtimes for exported models: one adapter module per outside library (OpenVINO, ONNX)."""

# Outputs of a model exported with postprocessing inside: one row per detection.
DETECTIONS_OUTPUT = "detections"
DETECTION_COLUMNS = ["image_index", "label", "score", "x1", "y1", "x2", "y2"]
INPUT_NAME = "image"
