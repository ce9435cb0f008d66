"""The ``cuda`` backend: hand-written CUDA kernels from sgllie._C (csrc/cuda/), every float dtype.

``CudaKernels`` wraps one ``torch.ops`` namespace: ``sgllie_C`` here; the tests wrap the same kernels
built for the host emulation of CUDA (tests/cuda_emu/). The single losses (in float64), and shapes the
kernels do not take (dsconv2d over 64 input channels, lcm(patch, exposure_patch) over 256), run the
reference.
"""
from __future__ import annotations

import math

import torch

import sgllie._C  # noqa: F401  (loads the library: registers torch.ops.sgllie_C)
from . import reference

_ACTIVATIONS = {"none": 0, "relu": 1, "tanh": 2}
MAX_DSCONV_CHANNELS = 64    # csrc/cuda/launchers.h, kMaxDsconvChannels
MAX_LOSS_TILE = 256         # zero_reference_loss's one pass: lcm(patch, exposure_patch) rows per tile


def _in_float64(fn):
    """``fn`` on float64 copies of the tensor arguments, its tensor results cast back: the colour
    loss is ill-conditioned enough that float32 arithmetic strays beyond float32 tolerance."""
    def wrapped(*args):
        dtype = next(a.dtype for a in args if isinstance(a, torch.Tensor))
        out = fn(*(a.double() if isinstance(a, torch.Tensor) else a for a in args))
        return tuple(t.to(dtype) for t in out) if isinstance(out, tuple) else out.to(dtype)
    return wrapped


class CudaKernels:
    """The cuda backend's kernels, under the names of ``reference.py``, on the ops namespace ``ops``."""

    def __init__(self, ops):
        self._K = ops

    def le_curve(self, x, r, iterations):
        return self._K.le_curve(x, r, iterations)

    def le_curve_backward(self, grad, x, r, iterations):
        return tuple(self._K.le_curve_backward(grad, x, r, iterations))

    def tv_loss(self, r):
        return self._K.tv_loss(r)

    def tv_loss_backward(self, grad, r):
        return self._K.tv_loss_backward(grad, r)

    def zero_reference_loss_forward(self, y, i, patch, level, exposure_patch):
        if math.lcm(patch, exposure_patch) > MAX_LOSS_TILE:
            return reference.zero_reference_loss_forward(y, i, patch, level, exposure_patch)
        return self._K.zero_reference_loss(y, i, patch, level, exposure_patch)

    def zero_reference_loss_backward(self, g_spa, g_exp, g_col, pooled_grads, y, need_grad_i, patch,
                                     exposure_patch):
        gy, gi = self._K.zero_reference_loss_backward(g_spa, g_exp, g_col, pooled_grads, y, need_grad_i, patch,
                                                      exposure_patch)
        return gy, gi if need_grad_i else None

    def dsconv2d(self, x, dw_weight, dw_bias, pw_weight, pw_bias, x2=None, activation="none",
                 memory_format=torch.preserve_format):
        if dw_weight.shape[0] > MAX_DSCONV_CHANNELS:
            return reference.dsconv2d(x, dw_weight, dw_bias, pw_weight, pw_bias, x2, activation, memory_format)
        # the kernel reads and writes NCHW (a channels-last x is copied)
        y = self._K.dsconv2d(x, x2, dw_weight, dw_bias, pw_weight, pw_bias, _ACTIVATIONS[activation])
        return reference.laid_out(y, memory_format)

    def dsconv2d_backward(self, grad, x, dw_weight, dw_bias, pw_weight, pw_bias, x2=None, activation="none",
                          out=None):
        # out unused: the kernel recomputes the pre-activation from the z tile it holds in shared memory
        if dw_weight.shape[0] > MAX_DSCONV_CHANNELS:
            return reference.dsconv2d_backward(grad, x, dw_weight, dw_bias, pw_weight, pw_bias, x2, activation, out)
        gx, gx2, *gparams = self._K.dsconv2d_backward(grad, x, x2, dw_weight, dw_bias, pw_weight, pw_bias,
                                                      _ACTIVATIONS[activation])
        return (gx, None if x2 is None else gx2, *gparams)

    # No kernels of their own (zero_reference_loss is the fused form): the reference, in float64.
    spatial_consistency_loss = staticmethod(_in_float64(reference.spatial_consistency_loss))
    spatial_consistency_loss_backward = staticmethod(_in_float64(reference.spatial_consistency_loss_backward))
    exposure_loss = staticmethod(_in_float64(reference.exposure_loss))
    exposure_loss_backward = staticmethod(_in_float64(reference.exposure_loss_backward))
    color_constancy_loss = staticmethod(_in_float64(reference.color_constancy_loss))
    color_constancy_loss_backward = staticmethod(_in_float64(reference.color_constancy_loss_backward))


def unavailable_reason() -> str:
    if not torch._C._dispatch_has_kernel_for_dispatch_key("sgllie_C::le_curve", "CUDA"):
        return "sgllie._C was built without CUDA kernels (build with nvcc and a CUDA build of torch)"
    return ""


_kernels = CudaKernels(torch.ops.sgllie_C)


def __getattr__(name: str):
    return getattr(_kernels, name)
