"""The compiled part of digitlab (vision/_flat.c), or None where no C compiler built it.

Every function in it has a NumPy/SciPy/Pillow form that runs when it is None.
"""

from __future__ import annotations

import types

flat: types.ModuleType | None
try:
    from digitlab.vision import _flat as flat
except ImportError:  # pragma: no cover - installed without a C compiler
    flat = None
