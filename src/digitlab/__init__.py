"""digitlab: handwritten digit recognition with PyTorch."""

import os

__version__ = "0.1.0"

# onnxruntime 1.29+ sends usage telemetry to Microsoft from Linux and macOS too, and keeps a
# device id and an event cache under ~/.cache/Microsoft; a digit reader has no business
# phoning home. Off unless the user has set the variable themselves (it must be set before
# onnxruntime creates its environment, so here, before any model is loaded).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
