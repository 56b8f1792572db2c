"""digitlab: handwritten digit recognition with PyTorch.

    from digitlab import Recognizer

    recognizer = Recognizer.load()
    print(recognizer.predict("photo.jpg").digit)

The names below load their modules on first use, so that `import digitlab` (which every
command does) stays cheap and never imports PyTorch.
"""

from __future__ import annotations

import os

from digitlab.errors import DigitlabError, ImageError

TYPE_CHECKING = False  # not typing's: importing typing would double `import digitlab`'s cost
if TYPE_CHECKING:
    from typing import Any

    from digitlab.api import Recognizer
    from digitlab.results import DigitResult, Prediction

__version__ = "0.1.0"
__all__ = ["DigitResult", "DigitlabError", "ImageError", "Prediction", "Recognizer",
           "__version__"]


# onnxruntime 1.29+ sends usage telemetry to Microsoft from Linux and macOS too, and keeps a
# device id and an event cache under ~/.cache/Microsoft; a digit reader has no business
# phoning home. Off unless the user has set the variable themselves (it must be set before
# onnxruntime creates its environment, so here, before any model is loaded).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def __getattr__(name: str) -> Any:
    if name == "Recognizer":
        from digitlab import api

        return api.Recognizer
    if name in ("DigitResult", "Prediction"):
        from digitlab import results

        return getattr(results, name)
    raise AttributeError(f"module 'digitlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
