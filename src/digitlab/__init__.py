"""digitlab: handwritten digit recognition with PyTorch."""

__version__ = "0.1.0"
