"""Backends: what runs a model, behind one protocol (base.Backend).

- backends.onnx: an exported ONNX file on onnxruntime, and the contract such a file
  carries. No torch: the core install runs the shipped model this way.
- backends.torch: a PyTorch model, and its ONNX twin made in memory (imports torch).
"""

from digitlab.backends.base import Backend, BackendError, ExportError
from digitlab.backends.onnx import OnnxBackend

__all__ = ["Backend", "BackendError", "ExportError", "OnnxBackend"]
