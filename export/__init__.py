"""Device-ready models: the prompt model exported for ExecuTorch and ONNX Runtime."""
