"""Deployment: the detector as a graph (`graph`), its export to OpenVINO IR and ONNX with NMS
inside (`export`), one adapter module per runtime (`openvino_backend`, `onnx_backend`), and an
exported model run as an mmengine model (`exported_model`)."""

# Outputs of a model exported with postprocessing inside: one row per detection.
DETECTIONS_OUTPUT = "detections"
DETECTION_COLUMNS = ["image_index", "label", "score", "x1", "y1", "x2", "y2"]
INPUT_NAME = "image"
