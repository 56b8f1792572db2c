"""Builds the one compiled part of digitlab: vision/_flat.c (metadata is in pyproject.toml).

It is optional: without a C compiler the build goes on and digitlab runs the same steps
in NumPy, SciPy and Pillow (vision/preprocess.py, the reference the compiled path is
tested against), several times slower per drawn digit.
"""

import sys

from setuptools import Extension, setup

# Python's own flags include -fwrapv (CPython's code relies on signed overflow wrapping;
# this file never overflows), which keeps the compiler from widening loop counters.
FLAGS = ["/O2"] if sys.platform == "win32" else ["-O3", "-fno-wrapv"]

setup(
    ext_modules=[
        Extension("digitlab.vision._flat", ["src/digitlab/vision/_flat.c"],
                  extra_compile_args=FLAGS, optional=True),
    ],
)
