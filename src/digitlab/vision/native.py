"""The compiled part of digitlab (vision/_flat.c), or None where no C compiler built it.

Its to_mnist accelerates preprocess.to_mnist on flat paper, and its unfilter
vision/png.py; both have a NumPy/SciPy/Pillow form that runs when it is None. (Its resize
and edt are there for the tests, which hold those parts to Pillow's and SciPy's.)
"""

from __future__ import annotations

import types

flat: types.ModuleType | None
try:
    from digitlab.vision import _flat as flat
except ImportError:  # pragma: no cover - installed without a C compiler
    flat = None
