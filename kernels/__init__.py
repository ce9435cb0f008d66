"""Triton kernels of sgllie, installed as ``sgllie.kernels``: the ``triton`` backend.

It exposes one kernel function per op under the names of ``sgllie/ops/reference.py``; the
``sgllie::`` custom ops in ``sgllie/ops/_library.py`` own autograd and the backend choice. CUDA
tensors normally; CPU tensors too under TRITON_INTERPRET=1 (Triton's interpreter: slow, for tests).
"""
from __future__ import annotations

import re

from sgllie.ops import _backends

# The oldest Triton the kernels build with (torch 2.7's 3.3; CI builds every launched specialisation
# with it, with 3.6 (torch 2.11's) and with 3.9, for sm_80 and sm_90). 3.2 specialises launches and
# takes ahead-of-time builds in another form, which the build test would need first.
MIN_TRITON = (3, 3)


def release(version: str) -> tuple[int, int] | None:
    """(major, minor) of a Triton version string; None where it names none."""
    found = re.match(r"(\d+)\.(\d+)", version)
    return (int(found[1]), int(found[2])) if found else None


def too_old(version: str) -> str:
    """Why a Triton of ``version`` cannot run the kernels, or "" if it can."""
    if (release(version) or (0, 0)) >= MIN_TRITON:
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
    if _backends.triton_interpreting():
        return _interpreter_problem()
    return ""


def _interpreter_problem() -> str:
    """Why this Triton's interpreter cannot run the kernels here, or "". Before 3.7 it makes a scalar
    an index with int() of a one-element array (a loop over range(lo, hi) of computed bounds),
    which NumPy refuses from 2.4 on (deprecated since 1.25)."""
    import numpy as np  # noqa: PLC0415

    if release(triton.__version__) >= (3, 7):
        return ""
    try:
        int(np.zeros(1, dtype=np.int32))
    except TypeError:
        return (f"triton {triton.__version__}'s interpreter cannot run the kernels with numpy {np.__version__}: "
                "interpret with triton >= 3.7 (GPU builds are unaffected)")
    return ""

