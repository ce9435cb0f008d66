"""Triton kernels of sgllie, installed as ``sgllie.kernels``: the ``triton`` backend.

It exposes one kernel function per op under the names of ``sgllie/ops/reference.py``; the
``sgllie::`` custom ops in ``sgllie/ops/_library.py`` own autograd and the backend choice. CUDA
tensors normally; CPU tensors too under TRITON_INTERPRET=1 (Triton's interpreter: slow, for tests).
"""
from __future__ import annotations

import re

from sgllie.ops import _backends

# The oldest Triton the kernels have been built with (3.5.1: every launched specialisation, for
# sm_80 and sm_90, once by hand; CI builds them with 3.6 and 3.9). Older ones lack
# triton.constexpr_function: refused here by version, not by an AttributeError from a kernel module.
MIN_TRITON = (3, 5)


def too_old(version: str) -> str:
    """Why a Triton of ``version`` cannot run the kernels, or "" if it can."""
    found = re.match(r"(\d+)\.(\d+)", version)
    if found and tuple(map(int, found.groups())) >= MIN_TRITON:
        return ""
    return f"needs triton >= {'.'.join(map(str, MIN_TRITON))}, found {version}"


try:
    import triton
except ImportError as e:  # reported by unavailable_reason(), the package still imports
    _IMPORT_ERROR: str | None = f"triton is not importable ({e})"
else:
    _IMPORT_ERROR = too_old(triton.__version__) or None
if _IMPORT_ERROR is None:
    from .dsconv2d import dsconv2d, dsconv2d_backward  # noqa: F401
    from .le_curve import le_curve, le_curve_backward  # noqa: F401
    from .losses import (color_constancy_loss, color_constancy_loss_backward, exposure_loss,  # noqa: F401
                         exposure_loss_backward, spatial_consistency_loss, spatial_consistency_loss_backward,
                         tv_loss, tv_loss_backward, zero_reference_loss_backward, zero_reference_loss_forward)


def unavailable_reason() -> str:
    if _IMPORT_ERROR:
        return _IMPORT_ERROR
    import torch  # noqa: PLC0415

    if not torch.cuda.is_available() and not _backends.triton_on_cpu():
        return "no CUDA device (TRITON_INTERPRET=1 runs the kernels on CPU tensors, slowly, for tests)"
    return ""

