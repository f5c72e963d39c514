"""Object detection for snapshots: Rekognition, a local CPU model, an ONNX model, or none."""
