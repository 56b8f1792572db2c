"""Builds the one compiled part of digitlab: vision/_flat.c (metadata is in pyproject.toml).

It is optional: without a C compiler the build goes on and digitlab runs the same steps
in NumPy, SciPy and Pillow (vision/preprocess.py), a few times slower per drawn digit.
"""

import sys

from setuptools import Extension, setup

# A fused multiply-add rounds once where the Python code rounds twice: keep them apart, so
# that the compiled path gives the Python path's results bit for bit. Python's own flags
# include -fwrapv (CPython's code relies on signed overflow wrapping; this file never
# overflows), which keeps the compiler from widening loop counters: 6% slower here.
FLAGS = (["/O2", "/fp:precise"] if sys.platform == "win32"
         else ["-O3", "-ffp-contract=off", "-fno-wrapv"])

setup(
    ext_modules=[
        Extension("digitlab.vision._flat", ["src/digitlab/vision/_flat.c"],
                  extra_compile_args=FLAGS, optional=True),
    ],
)
