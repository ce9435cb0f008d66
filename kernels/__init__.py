"""Triton kernels of sgllie, installed as ``sgllie.kernels``.

This module is the ``triton`` backend: it will expose one kernel function per op under the names of
``sgllie/ops/reference.py``. Until those kernels exist it reports itself unavailable.
"""


def unavailable_reason() -> str:
    return "the Triton kernels are not part of this version of sgllie yet"
