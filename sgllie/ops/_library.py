"""The ``sgllie::`` ops: schema, fake (shape) kernels for torch.compile/export, and autograd.

Each op takes the resolved backend name as its last argument and runs that backend's kernel, so the
choice made in Python survives tracing. Backward is an op of its own (``<op>_backward``) calling the
backend's backward kernel. Double backward is not supported.

The ops are defined with ``torch.library.Library`` and an autograd.Function at the Autograd key, as
``torch.library.custom_op`` does, without its per-call Python layers (argument defaults filled back
in, an output-aliasing check, a Function even when no graph is recorded). Measured on a 2-core EPYC,
a no-op's forward+backward round trip: custom_op 86 us, this 49 us; these ops are often host-bound.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._backends import kernels

_EMPTY = ()  # shape of the placeholder returned for x2's gradient when there is no x2 (autograd drops it)

_lib = torch.library.Library("sgllie", "DEF")
BODIES: dict[str, Callable] = {}  # "sgllie::<op>" -> its Python body (sgllie.kernels._counting runs them)


def _op(fn: Callable) -> torch._ops.OpOverload:
    """Define ``sgllie::<fn's name>`` with the schema of fn's annotations and fn as its kernel for
    every device."""
    name = fn.__name__
    _lib.define(name + torch.library.infer_schema(fn, mutates_args=()), tags=(torch.Tag.pt2_compliant_tag,))
    _lib.impl(name, fn, "CompositeExplicitAutograd")
    BODIES[f"sgllie::{name}"] = fn
    return getattr(torch.ops.sgllie, name).default


def _fake(op: torch._ops.OpOverload):
    """Decorator: the op's shape function, for fake tensors (torch.compile, export)."""
    return torch.library.register_fake(op, lib=_lib)


def _autograd(op: torch._ops.OpOverload, backward: Callable, setup_context: Callable) -> None:
    """``op``'s autograd, with the signatures of ``torch.library.register_autograd``."""
    class Function(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            with torch._C._AutoDispatchBelowAutograd():  # run the kernel below this Autograd key
                output = op(*args)
            setup_context(ctx, args, output)
            return output

    Function.backward = staticmethod(backward)

    def autograd_kernel(*args):
        # no graph to record (inference, no_grad): skip autograd.Function's own overhead
        if torch.is_grad_enabled() and torch._C._any_requires_grad(*args):
            return Function.apply(*args)
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)

    _lib.impl(op._opname, autograd_kernel, "Autograd")


def _scalar(t: Tensor) -> Tensor:
    return t.new_empty(())


# ----------------------------------------------------------------------------- dsconv2d
@_op
def dsconv2d(x: Tensor, x2: Tensor | None, dw_weight: Tensor, dw_bias: Tensor, pw_weight: Tensor,
             pw_bias: Tensor, activation: str, channels_last: bool, backend: str) -> Tensor:
    return kernels(backend).dsconv2d(x, dw_weight, dw_bias, pw_weight, pw_bias, x2, activation,
                                     _layout(channels_last))


def _layout(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


@_fake(dsconv2d)
def _(x, x2, dw_weight, dw_bias, pw_weight, pw_bias, activation, channels_last, backend):
    return torch.empty((x.shape[0], pw_weight.shape[0], x.shape[2], x.shape[3]), dtype=x.dtype, device=x.device,
                       memory_format=_layout(channels_last))


@_op
def dsconv2d_backward(grad: Tensor, x: Tensor, x2: Tensor | None, dw_weight: Tensor, dw_bias: Tensor,
                      pw_weight: Tensor, pw_bias: Tensor, out: Tensor | None, activation: str, backend: str
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    gx, gx2, *gparams = kernels(backend).dsconv2d_backward(
        grad, x, dw_weight, dw_bias, pw_weight, pw_bias, x2, activation, out)
    # laid out as the inputs, as the shape function says (the kernels may work in NCHW)
    return (_strided_as(gx, x), x.new_empty(_EMPTY) if gx2 is None else _strided_as(gx2, x2), *gparams)


def _strided_as(t: Tensor, like: Tensor) -> Tensor:
    return t if t.stride() == like.stride() else torch.empty_like(like).copy_(t)


@_fake(dsconv2d_backward)
def _(grad, x, x2, dw_weight, dw_bias, pw_weight, pw_bias, out, activation, backend):
    return (torch.empty_like(x), x.new_empty(_EMPTY) if x2 is None else torch.empty_like(x2),
            torch.empty_like(dw_weight), torch.empty_like(dw_bias), torch.empty_like(pw_weight),
            torch.empty_like(pw_bias))


def _dsconv2d_setup(ctx, inputs, output):
    x, x2, dw_weight, dw_bias, pw_weight, pw_bias, ctx.activation, _, ctx.backend = inputs
    # the output, for the activation's gradient: no extra memory, it is the next layer's saved input
    out = None if ctx.activation == "none" else output
    ctx.save_for_backward(x, x2, dw_weight, dw_bias, pw_weight, pw_bias, out)


def _dsconv2d_grad(ctx, grad):
    x, x2, *params, out = ctx.saved_tensors
    gx, gx2, *gparams = dsconv2d_backward(grad, x, x2, *params, out, ctx.activation, ctx.backend)
    return gx, (None if x2 is None else gx2), *gparams, None, None, None


_autograd(dsconv2d, _dsconv2d_grad, _dsconv2d_setup)


# ----------------------------------------------------------------------------- le_curve
@_op
def le_curve(x: Tensor, r: Tensor, iterations: int, backend: str) -> Tensor:
    return kernels(backend).le_curve(x, r, iterations)


@_fake(le_curve)
def _(x, r, iterations, backend):
    return torch.empty_like(x)


@_op
def le_curve_backward(grad: Tensor, x: Tensor, r: Tensor, iterations: int, backend: str
                      ) -> tuple[Tensor, Tensor]:
    return tuple(kernels(backend).le_curve_backward(grad, x, r, iterations))


@_fake(le_curve_backward)
def _(grad, x, r, iterations, backend):
    return torch.empty_like(x), torch.empty_like(r)


def _le_curve_setup(ctx, inputs, output):
    x, r, ctx.iterations, ctx.backend = inputs
    ctx.save_for_backward(x, r)


def _le_curve_grad(ctx, grad):
    x, r = ctx.saved_tensors
    return *le_curve_backward(grad, x, r, ctx.iterations, ctx.backend), None, None


_autograd(le_curve, _le_curve_grad, _le_curve_setup)


# ----------------------------------------------------------------------------- losses
@_op
def spatial_consistency_loss(y: Tensor, i: Tensor, patch: int, backend: str) -> Tensor:
    return kernels(backend).spatial_consistency_loss(y, i, patch)


@_op
def spatial_consistency_loss_backward(grad: Tensor, y: Tensor, i: Tensor, patch: int, backend: str
                                      ) -> tuple[Tensor, Tensor]:
    return tuple(kernels(backend).spatial_consistency_loss_backward(grad, y, i, patch))


@_fake(spatial_consistency_loss)
def _(y, i, patch, backend):
    return _scalar(y)


@_fake(spatial_consistency_loss_backward)
def _(grad, y, i, patch, backend):
    return torch.empty_like(y), torch.empty_like(i)


def _spa_setup(ctx, inputs, output):
    y, i, ctx.patch, ctx.backend = inputs
    ctx.save_for_backward(y, i)


def _spa_grad(ctx, grad):
    return *spatial_consistency_loss_backward(grad, *ctx.saved_tensors, ctx.patch, ctx.backend), None, None


_autograd(spatial_consistency_loss, _spa_grad, _spa_setup)


@_op
def exposure_loss(y: Tensor, level: float, patch: int, backend: str) -> Tensor:
    return kernels(backend).exposure_loss(y, level, patch)


@_op
def exposure_loss_backward(grad: Tensor, y: Tensor, level: float, patch: int, backend: str) -> Tensor:
    return kernels(backend).exposure_loss_backward(grad, y, level, patch)


@_fake(exposure_loss)
def _(y, level, patch, backend):
    return _scalar(y)


@_fake(exposure_loss_backward)
def _(grad, y, level, patch, backend):
    return torch.empty_like(y)


def _exp_setup(ctx, inputs, output):
    y, ctx.level, ctx.patch, ctx.backend = inputs
    ctx.save_for_backward(y)


def _exp_grad(ctx, grad):
    (y,) = ctx.saved_tensors
    return exposure_loss_backward(grad, y, ctx.level, ctx.patch, ctx.backend), None, None, None


_autograd(exposure_loss, _exp_grad, _exp_setup)


def _single_input_loss(name: str) -> torch._ops.OpOverload:
    """``sgllie::<name>(Tensor x, str backend) -> 0-d``, its backward op and its autograd."""
    def forward(x: Tensor, backend: str) -> Tensor:
        return getattr(kernels(backend), name)(x)

    def backward(grad: Tensor, x: Tensor, backend: str) -> Tensor:
        return getattr(kernels(backend), f"{name}_backward")(grad, x)

    forward.__name__, backward.__name__ = name, f"{name}_backward"
    op, backward_op = _op(forward), _op(backward)
    _fake(op)(lambda x, backend: _scalar(x))
    _fake(backward_op)(lambda grad, x, backend: torch.empty_like(x))

    def setup(ctx, inputs, output):
        x, ctx.backend = inputs
        ctx.save_for_backward(x)

    def grad(ctx, g):
        (x,) = ctx.saved_tensors
        return backward_op(g, x, ctx.backend), None

    _autograd(op, grad, setup)
    return op


color_constancy_loss = _single_input_loss("color_constancy_loss")
tv_loss = _single_input_loss("tv_loss")


@_op
def zero_reference_loss(y: Tensor, i: Tensor, patch: int, level: float, exposure_patch: int, backend: str
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(spa, exp, col, pooled_grads): see reference.zero_reference_loss_forward."""
    return tuple(kernels(backend).zero_reference_loss_forward(y, i, patch, level, exposure_patch))


@_op
def zero_reference_loss_backward(g_spa: Tensor, g_exp: Tensor, g_col: Tensor, pooled_grads: Tensor,
                                 y: Tensor, need_grad_i: bool, patch: int, exposure_patch: int, backend: str
                                 ) -> tuple[Tensor, Tensor]:
    gy, gi = kernels(backend).zero_reference_loss_backward(
        g_spa, g_exp, g_col, pooled_grads, y, need_grad_i, patch, exposure_patch)
    return gy, y.new_empty(_EMPTY) if gi is None else gi


@_fake(zero_reference_loss)
def _(y, i, patch, level, exposure_patch, backend):
    n, _, h, w = y.shape
    pooled = n * ((h // patch) * (w // patch) + (h // exposure_patch) * (w // exposure_patch) + 3)
    return _scalar(y), _scalar(y), _scalar(y), y.new_empty(pooled, dtype=torch.float64)


@_fake(zero_reference_loss_backward)
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


_autograd(zero_reference_loss, _zrl_grad, _zrl_setup)
