"""The ``sgllie::`` custom ops: schema, fake (shape) kernels for torch.compile/export, and autograd.

Each op takes the resolved backend name as its last argument and runs that backend's kernel, so the
choice made in Python survives tracing. Backward is an op of its own (``<op>_backward``) calling the
backend's backward kernel. Double backward is not supported.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._backends import kernels

_EMPTY = ()  # shape of the placeholder returned for x2's gradient when there is no x2 (autograd drops it)


def _scalar(t: Tensor) -> Tensor:
    return t.new_empty(())


# ----------------------------------------------------------------------------- dsconv2d
@torch.library.custom_op("sgllie::dsconv2d", mutates_args=())
def dsconv2d(x: Tensor, x2: Tensor | None, dw_weight: Tensor, dw_bias: Tensor, pw_weight: Tensor,
             pw_bias: Tensor, activation: str, backend: str) -> Tensor:
    return kernels(backend).dsconv2d(x, dw_weight, dw_bias, pw_weight, pw_bias, x2, activation)


@dsconv2d.register_fake
def _(x, x2, dw_weight, dw_bias, pw_weight, pw_bias, activation, backend):
    return x.new_empty(x.shape[0], pw_weight.shape[0], x.shape[2], x.shape[3])


@torch.library.custom_op("sgllie::dsconv2d_backward", mutates_args=())
def dsconv2d_backward(grad: Tensor, x: Tensor, x2: Tensor | None, dw_weight: Tensor, dw_bias: Tensor,
                      pw_weight: Tensor, pw_bias: Tensor, out: Tensor | None, activation: str, backend: str
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    gx, gx2, *gparams = kernels(backend).dsconv2d_backward(
        grad, x, dw_weight, dw_bias, pw_weight, pw_bias, x2, activation, out)
    return (gx, x.new_empty(_EMPTY) if gx2 is None else gx2, *gparams)


@dsconv2d_backward.register_fake
def _(grad, x, x2, dw_weight, dw_bias, pw_weight, pw_bias, out, activation, backend):
    return (torch.empty_like(x), x.new_empty(_EMPTY) if x2 is None else torch.empty_like(x2),
            torch.empty_like(dw_weight), torch.empty_like(dw_bias), torch.empty_like(pw_weight),
            torch.empty_like(pw_bias))


def _dsconv2d_setup(ctx, inputs, output):
    x, x2, dw_weight, dw_bias, pw_weight, pw_bias, ctx.activation, ctx.backend = inputs
    # the output, for the activation's gradient: no extra memory, it is the next layer's saved input
    out = None if ctx.activation == "none" else output
    ctx.save_for_backward(x, x2, dw_weight, dw_bias, pw_weight, pw_bias, out)


def _dsconv2d_grad(ctx, grad):
    x, x2, *params, out = ctx.saved_tensors
    gx, gx2, *gparams = dsconv2d_backward(grad, x, x2, *params, out, ctx.activation, ctx.backend)
    return gx, (None if x2 is None else gx2), *gparams, None, None


dsconv2d.register_autograd(_dsconv2d_grad, setup_context=_dsconv2d_setup)


# ----------------------------------------------------------------------------- le_curve
@torch.library.custom_op("sgllie::le_curve", mutates_args=())
def le_curve(x: Tensor, r: Tensor, iterations: int, backend: str) -> Tensor:
    return kernels(backend).le_curve(x, r, iterations)


@le_curve.register_fake
def _(x, r, iterations, backend):
    return torch.empty_like(x)


@torch.library.custom_op("sgllie::le_curve_backward", mutates_args=())
def le_curve_backward(grad: Tensor, x: Tensor, r: Tensor, iterations: int, backend: str
                      ) -> tuple[Tensor, Tensor]:
    return tuple(kernels(backend).le_curve_backward(grad, x, r, iterations))


@le_curve_backward.register_fake
def _(grad, x, r, iterations, backend):
    return torch.empty_like(x), torch.empty_like(r)


def _le_curve_setup(ctx, inputs, output):
    x, r, ctx.iterations, ctx.backend = inputs
    ctx.save_for_backward(x, r)


def _le_curve_grad(ctx, grad):
    x, r = ctx.saved_tensors
    return *le_curve_backward(grad, x, r, ctx.iterations, ctx.backend), None, None


le_curve.register_autograd(_le_curve_grad, setup_context=_le_curve_setup)


# ----------------------------------------------------------------------------- losses
@torch.library.custom_op("sgllie::spatial_consistency_loss", mutates_args=())
def spatial_consistency_loss(y: Tensor, i: Tensor, patch: int, backend: str) -> Tensor:
    return kernels(backend).spatial_consistency_loss(y, i, patch)


@torch.library.custom_op("sgllie::spatial_consistency_loss_backward", mutates_args=())
def spatial_consistency_loss_backward(grad: Tensor, y: Tensor, i: Tensor, patch: int, backend: str
                                      ) -> tuple[Tensor, Tensor]:
    return tuple(kernels(backend).spatial_consistency_loss_backward(grad, y, i, patch))


@spatial_consistency_loss.register_fake
def _(y, i, patch, backend):
    return _scalar(y)


@spatial_consistency_loss_backward.register_fake
def _(grad, y, i, patch, backend):
    return torch.empty_like(y), torch.empty_like(i)


def _spa_setup(ctx, inputs, output):
    y, i, ctx.patch, ctx.backend = inputs
    ctx.save_for_backward(y, i)


def _spa_grad(ctx, grad):
    return *spatial_consistency_loss_backward(grad, *ctx.saved_tensors, ctx.patch, ctx.backend), None, None


spatial_consistency_loss.register_autograd(_spa_grad, setup_context=_spa_setup)


@torch.library.custom_op("sgllie::exposure_loss", mutates_args=())
def exposure_loss(y: Tensor, level: float, patch: int, backend: str) -> Tensor:
    return kernels(backend).exposure_loss(y, level, patch)


@torch.library.custom_op("sgllie::exposure_loss_backward", mutates_args=())
def exposure_loss_backward(grad: Tensor, y: Tensor, level: float, patch: int, backend: str) -> Tensor:
    return kernels(backend).exposure_loss_backward(grad, y, level, patch)


@exposure_loss.register_fake
def _(y, level, patch, backend):
    return _scalar(y)


@exposure_loss_backward.register_fake
def _(grad, y, level, patch, backend):
    return torch.empty_like(y)


def _exp_setup(ctx, inputs, output):
    y, ctx.level, ctx.patch, ctx.backend = inputs
    ctx.save_for_backward(y)


def _exp_grad(ctx, grad):
    (y,) = ctx.saved_tensors
    return exposure_loss_backward(grad, y, ctx.level, ctx.patch, ctx.backend), None, None, None


exposure_loss.register_autograd(_exp_grad, setup_context=_exp_setup)


@torch.library.custom_op("sgllie::color_constancy_loss", mutates_args=())
def color_constancy_loss(y: Tensor, backend: str) -> Tensor:
    return kernels(backend).color_constancy_loss(y)


@torch.library.custom_op("sgllie::color_constancy_loss_backward", mutates_args=())
def color_constancy_loss_backward(grad: Tensor, y: Tensor, backend: str) -> Tensor:
    return kernels(backend).color_constancy_loss_backward(grad, y)


@color_constancy_loss.register_fake
def _(y, backend):
    return _scalar(y)


@color_constancy_loss_backward.register_fake
def _(grad, y, backend):
    return torch.empty_like(y)


def _col_setup(ctx, inputs, output):
    y, ctx.backend = inputs
    ctx.save_for_backward(y)


def _col_grad(ctx, grad):
    (y,) = ctx.saved_tensors
    return color_constancy_loss_backward(grad, y, ctx.backend), None


color_constancy_loss.register_autograd(_col_grad, setup_context=_col_setup)


@torch.library.custom_op("sgllie::tv_loss", mutates_args=())
def tv_loss(r: Tensor, backend: str) -> Tensor:
    return kernels(backend).tv_loss(r)


@torch.library.custom_op("sgllie::tv_loss_backward", mutates_args=())
def tv_loss_backward(grad: Tensor, r: Tensor, backend: str) -> Tensor:
    return kernels(backend).tv_loss_backward(grad, r)


@tv_loss.register_fake
def _(r, backend):
    return _scalar(r)


@tv_loss_backward.register_fake
def _(grad, r, backend):
    return torch.empty_like(r)


def _tv_setup(ctx, inputs, output):
    r, ctx.backend = inputs
    ctx.save_for_backward(r)


def _tv_grad(ctx, grad):
    (r,) = ctx.saved_tensors
    return tv_loss_backward(grad, r, ctx.backend), None


tv_loss.register_autograd(_tv_grad, setup_context=_tv_setup)


@torch.library.custom_op("sgllie::zero_reference_loss", mutates_args=())
def zero_reference_loss(y: Tensor, i: Tensor, patch: int, level: float, exposure_patch: int, backend: str
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(spa, exp, col, pooled_grads): see reference.zero_reference_loss_forward."""
    return tuple(kernels(backend).zero_reference_loss_forward(y, i, patch, level, exposure_patch))


@torch.library.custom_op("sgllie::zero_reference_loss_backward", mutates_args=())
def zero_reference_loss_backward(g_spa: Tensor, g_exp: Tensor, g_col: Tensor, pooled_grads: Tensor,
                                 y: Tensor, need_grad_i: bool, patch: int, exposure_patch: int, backend: str
                                 ) -> tuple[Tensor, Tensor]:
    gy, gi = kernels(backend).zero_reference_loss_backward(
        g_spa, g_exp, g_col, pooled_grads, y, need_grad_i, patch, exposure_patch)
    return gy, y.new_empty(_EMPTY) if gi is None else gi


@zero_reference_loss.register_fake
def _(y, i, patch, level, exposure_patch, backend):
    n, _, h, w = y.shape
    pooled = n * ((h // patch) * (w // patch) + (h // exposure_patch) * (w // exposure_patch) + 3)
    return _scalar(y), _scalar(y), _scalar(y), y.new_empty(pooled, dtype=torch.float64)


@zero_reference_loss_backward.register_fake
def _(g_spa, g_exp, g_col, pooled_grads, y, need_grad_i, patch, exposure_patch, backend):
    return torch.empty_like(y), torch.empty_like(y) if need_grad_i else y.new_empty(_EMPTY)


def _zrl_setup(ctx, inputs, output):
    y, _, patch, _, exposure_patch, ctx.backend = inputs
    ctx.args = (patch, exposure_patch)
    ctx.mark_non_differentiable(output[3])
    ctx.save_for_backward(output[3], y)


def _zrl_grad(ctx, g_spa, g_exp, g_col, _):
    # an unused output arrives as None in some paths: materialise it as a zero scalar
    pooled, y = ctx.saved_tensors
    g_spa, g_exp, g_col = (y.new_zeros(()) if g is None else g for g in (g_spa, g_exp, g_col))
    need_grad_i = ctx.needs_input_grad[1]
    gy, gi = zero_reference_loss_backward(g_spa, g_exp, g_col, pooled, y, need_grad_i, *ctx.args, ctx.backend)
    return gy, gi if need_grad_i else None, None, None, None, None


zero_reference_loss.register_autograd(_zrl_grad, setup_context=_zrl_setup)
