"""Numbers the user can trust: evaluation (mAP of checkpoints, IR and ONNX alike), latency and
throughput side by side, and the tables and plots that report them."""
