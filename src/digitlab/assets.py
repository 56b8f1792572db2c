"""The files of the model shipped inside the package, by name."""

from __future__ import annotations

DEFAULT_WEIGHTS = "default-model.safetensors"
DEFAULT_CARD = "default-model.json"  # how the shipped model was trained, and its figures
# The same weights exported to ONNX (`make default-model`), stamped with the SHA-256 of the
# weights they came from: where onnxruntime is installed the shipped model runs there, and
# torch is never imported.
DEFAULT_ONNX = "default-model.onnx"
