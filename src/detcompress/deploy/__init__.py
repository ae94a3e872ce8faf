"""Deployment: the detector as a graph (`graph`), its export to OpenVINO IR and ONNX with NMS
inside (`export`), one adapter module per runtime (`openvino_backend`, `onnx_backend`), and an
exported model run as an mmengine model (`exported_model`)."""

# Outputs of a model exported with postprocessing inside: one row per detection.
DETECTIONS_OUTPUT = "detections"
DETECTION_COLUMNS = ["image_index", "label", "score", "x1", "y1", "x2", "y2"]
INPUT_NAME = "image"
# What the exported model's input takes: float32 NCHW (mmdet's layout), or decoded camera frames
# as they come, uint8 NHWC (the conversion to float and the layout change inside the graph).
# Both BGR, 0..255; the channel flip to RGB, where the model wants it, is inside the graph.
INPUT_FORMATS = ("f32-nchw", "u8-nhwc")
# The decoder's outputs that the NMS subgraph consumes (not outputs of the exported file).
DECODED_OUTPUTS = ["decoded_boxes", "class_scores"]
# Beside `detections` in an export with a static batch of 1: the same rows as OpenVINO's Model
# API (openvino-model-api) parses them, boxes [1, K, 5] = x1, y1, x2, y2, score (input pixels)
# and labels [1, K] (int64).
MODEL_API_OUTPUTS = ["boxes", "labels"]
