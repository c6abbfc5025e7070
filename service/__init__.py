"""spikeguard's inference service: ONNX Runtime behind FastAPI; never imports torch."""

__version__ = "0.1.0"
