"""freshrank exporter: live weights -> ONNX -> check -> publish version directory -> Triton load."""
