"""Publishing a trained model (PyTorch, ONNX), the promotion gate, and loading exports for
inference."""
