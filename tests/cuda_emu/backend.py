"""The ``cuda_emu`` test backend: sgllie.ops._cuda's wrappers over the host-emulated CUDA kernels."""
from __future__ import annotations

import torch

from sgllie.ops._cuda import CudaKernels
from . import NAME, build

_why_not = build()
_kernels = CudaKernels(getattr(torch.ops, NAME)) if not _why_not else None


def unavailable_reason() -> str:
    return _why_not


def __getattr__(name: str):
    return getattr(_kernels, name)
