"""The ``cpu`` backend: fused C++ kernels from sgllie._C (csrc/cpu/), float32 and float64.

Ops without a compiled kernel yet, and other dtypes, run the reference kernels: ``FUSED`` lists
what is compiled.
"""
from __future__ import annotations

import torch

import sgllie._C  # noqa: F401  (loads the library: registers torch.ops.sgllie_C)
from . import reference

_K = torch.ops.sgllie_C
_DTYPES = (torch.float32, torch.float64)
FUSED = ("dsconv2d", "le_curve", "tv_loss", "zero_reference_loss")


def le_curve(x, r, iterations):
    if x.dtype not in _DTYPES:
        return reference.le_curve(x, r, iterations)
    return _K.le_curve(x, r, iterations)


def le_curve_backward(grad, x, r, iterations):
    if x.dtype not in _DTYPES:
        return reference.le_curve_backward(grad, x, r, iterations)
    return _K.le_curve_backward(grad, x, r, iterations)


def tv_loss(r):
    return _K.tv_loss(r) if r.dtype in _DTYPES else reference.tv_loss(r)


def tv_loss_backward(grad, r):
    return _K.tv_loss_backward(grad, r) if r.dtype in _DTYPES else reference.tv_loss_backward(grad, r)


def zero_reference_loss_forward(y, i, patch, level, exposure_patch):
    if y.dtype not in _DTYPES:
        return reference.zero_reference_loss_forward(y, i, patch, level, exposure_patch)
    return _K.zero_reference_loss(y, i, patch, level, exposure_patch)


def zero_reference_loss_backward(g_spa, g_exp, g_col, pooled_grads, y, need_grad_i, patch, exposure_patch):
    if y.dtype not in _DTYPES:
        return reference.zero_reference_loss_backward(g_spa, g_exp, g_col, pooled_grads, y, need_grad_i,
                                                      patch, exposure_patch)
    gy, gi = _K.zero_reference_loss_backward(g_spa, g_exp, g_col, pooled_grads, y, need_grad_i, patch,
                                             exposure_patch)
    return gy, gi if need_grad_i else None


def dsconv2d(x, dw_weight, dw_bias, pw_weight, pw_bias, x2=None, activation="none",
             memory_format=torch.preserve_format):
    if x.dtype not in _DTYPES:
        return reference.dsconv2d(x, dw_weight, dw_bias, pw_weight, pw_bias, x2, activation, memory_format)
    # the kernel reads and writes NCHW (a channels-last x is copied)
    y = _K.dsconv2d(x, x2, dw_weight, dw_bias, pw_weight, pw_bias, int(activation == "relu"))
    if activation == "tanh":  # SGZ's 3-channel last block: a cheap pass
        y = y.tanh_()
    return reference.laid_out(y, memory_format)


def dsconv2d_backward(grad, x, dw_weight, dw_bias, pw_weight, pw_bias, x2=None, activation="none", out=None):
    if x.dtype not in _DTYPES:
        return reference.dsconv2d_backward(grad, x, dw_weight, dw_bias, pw_weight, pw_bias, x2, activation, out)
    if activation == "tanh":  # relu's mask the kernel recomputes in the rows it holds anyway
        grad = reference.activation_backward(grad, reference.require_output(out, activation), "tanh")
    gx, gx2, *gparams = _K.dsconv2d_backward(grad, x, x2, dw_weight, dw_bias, pw_weight, pw_bias,
                                             int(activation == "relu"))
    return (gx, None if x2 is None else gx2, *gparams)


# Not compiled yet: the reference kernels.
spatial_consistency_loss = reference.spatial_consistency_loss
spatial_consistency_loss_backward = reference.spatial_consistency_loss_backward
exposure_loss = reference.exposure_loss
exposure_loss_backward = reference.exposure_loss_backward
color_constancy_loss = reference.color_constancy_loss
color_constancy_loss_backward = reference.color_constancy_loss_backward
