"""Layer 6, publish: export (ONNX, OpenVINO), model cards and the Hub. Imports everything below."""
