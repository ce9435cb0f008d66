"""Plain PyTorch reference for every sgllie op: the oracle all fused backends are tested against.

Forward functions follow the SGZ reference code literally (see SPEC.md in the project notes) and are
differentiable by autograd. The ``*_backward`` functions are the same gradients written out by hand;
they are the kernels of the ``reference`` backend (a custom op's kernel runs below autograd, so it
cannot differentiate its own forward) and double as a readable spec for the fused backward kernels.
Tests check each of them against autograd through the forward function.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Spatial-consistency neighbours (dy, dx) with their weights: 4 axial at 1, 4 diagonal at 0.5.
SPA_NEIGHBOURS = (
    ((0, -1), 1.0), ((0, 1), 1.0), ((-1, 0), 1.0), ((1, 0), 1.0),
    ((-1, -1), 0.5), ((-1, 1), 0.5), ((1, -1), 0.5), ((1, 1), 0.5),
)


# ----------------------------------------------------------------------------- dsconv2d
ACTIVATIONS = ("none", "relu", "tanh")  # dsconv2d's output activations (tanh: SGZ's last block)


def dsconv2d(x: Tensor, dw_weight: Tensor, dw_bias: Tensor, pw_weight: Tensor, pw_bias: Tensor,
             x2: Tensor | None = None, activation: str = "none",
             memory_format: torch.memory_format = torch.preserve_format) -> Tensor:
    """Depthwise 3x3 (padding 1) then pointwise 1x1, both with bias, then ``activation``;
    input cat([x, x2]) if x2; the result laid out as ``memory_format`` (preserve: as PyTorch's
    convolutions leave it)."""
    if x2 is not None:
        x = torch.cat([x, x2], 1)
    z = F.conv2d(x, dw_weight, dw_bias, padding=1, groups=x.shape[1])
    return laid_out(activate(_pointwise(z, pw_weight, pw_bias), activation), memory_format)


def is_channels_last(t: Tensor) -> bool:
    """Whether t is laid out channels-last and not NCHW as well (a tensor with one channel, or one
    pixel, is both)."""
    return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def output_format(x: Tensor, memory_format: torch.memory_format) -> torch.memory_format:
    """The layout ``memory_format`` asks of an op's result on input x: preserve_format resolved to
    x's (channels-last or NCHW)."""
    if memory_format == torch.preserve_format:
        return torch.channels_last if is_channels_last(x) else torch.contiguous_format
    return memory_format


def laid_out(t: Tensor, memory_format: torch.memory_format) -> Tensor:
    """t in ``memory_format`` (a copy only where it is laid out otherwise); preserve_format: t."""
    return t if memory_format == torch.preserve_format else t.contiguous(memory_format=memory_format)


def activate(y: Tensor, activation: str) -> Tensor:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return F.relu(y) if activation == "relu" else torch.tanh(y) if activation == "tanh" else y


def activation_backward(grad: Tensor, out: Tensor, activation: str) -> Tensor:
    """The gradient through ``activation``, from its output ``out`` (as PyTorch's relu and tanh
    backward): relu' = [out > 0], tanh' = 1 - out^2."""
    if activation == "relu":
        return grad * (out > 0)
    if activation == "tanh":
        return grad * (1 - out.square())
    return grad


def require_output(out: Tensor | None, activation: str) -> Tensor:
    """The forward's output, which an activated dsconv2d's backward takes the activation's gradient
    from (free to keep: autograd holds it anyway as the next layer's input)."""
    if out is None:
        raise ValueError(f"dsconv2d_backward with activation {activation!r} needs the forward's output `out`")
    return out


def _pointwise(z: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """1x1 conv as one matrix product per image (faster than conv2d on CPU, same result)."""
    n, c, h, w = z.shape
    return torch.baddbmm(bias[None, :, None].expand(n, -1, h * w), weight.flatten(1).expand(n, -1, -1),
                         z.reshape(n, c, h * w)).view(n, -1, h, w)


def dsconv2d_backward(grad: Tensor, x: Tensor, dw_weight: Tensor, dw_bias: Tensor, pw_weight: Tensor,
                      pw_bias: Tensor, x2: Tensor | None = None, activation: str = "none",
                      out: Tensor | None = None):
    """Returns (grad_x, grad_x2 or None, grad_dw_weight, grad_dw_bias, grad_pw_weight, grad_pw_bias).
    ``out`` is the forward's output, needed with an activation (whose gradient is taken from it)."""
    if activation != "none":
        grad = activation_backward(grad, require_output(out, activation), activation)
    xc = x if x2 is None else torch.cat([x, x2], 1)
    c = xc.shape[1]
    z = F.conv2d(xc, dw_weight, dw_bias, padding=1, groups=c)
    n, o, h, w = grad.shape
    g = grad.reshape(n, o, h * w)
    g_pw_bias = g.sum((0, 2))
    g_pw_weight = torch.bmm(g, z.reshape(n, c, h * w).transpose(1, 2)).sum(0).view(pw_weight.shape)
    gz = torch.matmul(pw_weight.flatten(1).t(), g).view(n, c, h, w)
    g_dw_bias = gz.sum((0, 2, 3))
    g_dw_weight = torch.nn.grad.conv2d_weight(xc, dw_weight.shape, gz, padding=1, groups=c)
    gx = torch.nn.grad.conv2d_input(xc.shape, dw_weight, gz, padding=1, groups=c)
    gx1, gx2 = (gx, None) if x2 is None else (t.clone() for t in gx.split([x.shape[1], x2.shape[1]], 1))
    return gx1, gx2, g_dw_weight, g_dw_bias, g_pw_weight, g_pw_bias


# ----------------------------------------------------------------------------- le_curve
def upsample_factor_map(r: Tensor, size: tuple[int, int]) -> Tensor:
    """The reference's UpsamplingBilinear2d: bilinear with align_corners=True."""
    return F.interpolate(r, size=size, mode="bilinear", align_corners=True)


def le_curve(x: Tensor, r: Tensor, iterations: int = 8) -> Tensor:
    """``iterations`` steps of x = x + r * (x^2 - x); a smaller r is upsampled to x first."""
    if r.shape[-2:] != x.shape[-2:]:
        r = upsample_factor_map(r, tuple(x.shape[-2:]))
    for _ in range(iterations):
        x = x + r * (x * x - x)
    return x


def le_curve_backward(grad: Tensor, x: Tensor, r: Tensor, iterations: int = 8):
    """Returns (grad_x, grad_r); grad_r has r's (possibly smaller) shape."""
    rf = upsample_factor_map(r, tuple(x.shape[-2:])) if r.shape[-2:] != x.shape[-2:] else r
    steps = [x]
    for _ in range(iterations - 1):
        steps.append(steps[-1] + rf * (steps[-1] * steps[-1] - steps[-1]))
    gx, gr = grad, torch.zeros_like(rf)
    for xk in reversed(steps):  # d/dx_k = 1 + r(2x_k - 1), d/dr = x_k^2 - x_k
        gr = gr + gx * (xk * xk - xk)
        gx = gx * (1 + rf * (2 * xk - 1))
    if rf is not r:
        gr = torch.ops.aten.upsample_bilinear2d_backward(gr, list(x.shape[-2:]), list(r.shape), True)
    return gx, gr


# ----------------------------------------------------------------------------- losses
def _grey_pool(t: Tensor, patch: int) -> Tensor:
    """Channel mean then AvgPool2d(patch) (stride patch, remainder rows/columns dropped)."""
    return F.avg_pool2d(t.mean(1, keepdim=True), patch)


def _unpool_grey(g: Tensor, patch: int, like: Tensor) -> Tensor:
    """Adjoint of _grey_pool: spread each pooled gradient over its patch and the channels."""
    g = g.repeat_interleave(patch, -2).repeat_interleave(patch, -1) / (patch * patch * like.shape[1])
    g = F.pad(g, (0, like.shape[-1] - g.shape[-1], 0, like.shape[-2] - g.shape[-2]))
    return g.expand_as(like).contiguous()


def _neighbour(p: Tensor, dy: int, dx: int) -> Tensor:
    """p shifted so that out[i, j] = p[i + dy, j + dx], zero outside (the reference's padding 1)."""
    h, w = p.shape[-2:]
    return F.pad(p, (1, 1, 1, 1))[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


def spatial_consistency_loss(y: Tensor, i: Tensor, patch: int = 4) -> Tensor:
    """SGZ's spa8: 8-neighbour gradient difference of the patch-pooled grey maps of y and i."""
    py, pi = _grey_pool(y, patch), _grey_pool(i, patch)
    e = 0
    for (dy, dx), weight in SPA_NEIGHBOURS:
        d = (py - _neighbour(py, dy, dx)) - (pi - _neighbour(pi, dy, dx))
        e = e + weight * d * d
    return e.mean()


def spatial_consistency_loss_backward(grad: Tensor, y: Tensor, i: Tensor, patch: int = 4):
    """Returns (grad_y, grad_i)."""
    delta = _grey_pool(y, patch) - _grey_pool(i, patch)
    gdelta = torch.zeros_like(delta)
    for (dy, dx), weight in SPA_NEIGHBOURS:
        e = delta - _neighbour(delta, dy, dx)
        gdelta = gdelta + weight * (e - _neighbour(e, -dy, -dx))
    gdelta = gdelta * (2 * grad / delta.numel())
    return _unpool_grey(gdelta, patch, y), _unpool_grey(-gdelta, patch, i)


def exposure_loss(y: Tensor, level: float = 0.6, patch: int = 16) -> Tensor:
    """Mean squared distance of the patch-pooled grey map of y from the exposure level."""
    return ((_grey_pool(y, patch) - level) ** 2).mean()


def exposure_loss_backward(grad: Tensor, y: Tensor, level: float = 0.6, patch: int = 16) -> Tensor:
    p = _grey_pool(y, patch)
    return _unpool_grey((p - level) * (2 * grad / p.numel()), patch, y)


def color_constancy_loss(y: Tensor) -> Tensor:
    """Batch mean of sqrt((mR-mG)^4 + (mR-mB)^4 + (mB-mG)^4) over per-image channel means."""
    m = y.mean((2, 3))
    mr, mg, mb = m[:, 0], m[:, 1], m[:, 2]
    return torch.sqrt((mr - mg) ** 4 + (mr - mb) ** 4 + (mb - mg) ** 4).mean()


def color_constancy_loss_backward(grad: Tensor, y: Tensor) -> Tensor:
    m = y.mean((2, 3))
    a, b, c = m[:, 0] - m[:, 1], m[:, 0] - m[:, 2], m[:, 2] - m[:, 1]
    k = torch.sqrt(a ** 4 + b ** 4 + c ** 4)
    # dk/dS = 1 / (2k); at k = 0 (all channel means equal) autograd gives NaN: we take 0, the subgradient.
    scale = torch.where(k > 0, grad / (2 * k.clamp_min(torch.finfo(k.dtype).tiny) * y.shape[0]), 0)
    a3, b3, c3 = 4 * a ** 3, 4 * b ** 3, 4 * c ** 3
    gm = torch.stack([a3 + b3, -a3 - c3, c3 - b3], 1) * scale[:, None]
    return (gm / (y.shape[2] * y.shape[3]))[:, :, None, None].expand_as(y).contiguous()


def tv_loss(r: Tensor) -> Tensor:
    """Illumination smoothness of the factor map, normalised as the reference's L_TV."""
    n, _, h, w = r.shape
    dh = r[:, :, 1:, :] - r[:, :, :-1, :]
    dw = r[:, :, :, 1:] - r[:, :, :, :-1]
    return 2 * ((dh * dh).sum() / ((h - 1) * w) + (dw * dw).sum() / (h * (w - 1))) / n


def tv_loss_backward(grad: Tensor, r: Tensor) -> Tensor:
    n, _, h, w = r.shape
    gdh = (r[:, :, 1:, :] - r[:, :, :-1, :]) * (4 * grad / ((h - 1) * w * n))
    gdw = (r[:, :, :, 1:] - r[:, :, :, :-1]) * (4 * grad / (h * (w - 1) * n))
    return (F.pad(gdh, (0, 0, 1, 0)) - F.pad(gdh, (0, 0, 0, 1))
            + F.pad(gdw, (1, 0)) - F.pad(gdw, (0, 1)))


def zero_reference_loss(y: Tensor, i: Tensor, patch: int = 4, level: float = 0.6,
                        exposure_patch: int = 16) -> tuple[Tensor, Tensor, Tensor]:
    """(spa, exp, col): the three image-space losses, unweighted."""
    return (spatial_consistency_loss(y, i, patch), exposure_loss(y, level, exposure_patch),
            color_constancy_loss(y))


def zero_reference_loss_forward(y: Tensor, i: Tensor, patch: int = 4, level: float = 0.6,
                                exposure_patch: int = 16) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(spa, exp, col, pooled_grads): the losses and what their backward needs, so that the
    backward never reads y or i again.

    pooled_grads (float64, flat) packs, per image, the gradients of spa, exp and col with respect
    to each pixel of a spa patch, an exposure patch and a channel: (n, H // patch, W // patch),
    then (n, H // exposure_patch, W // exposure_patch), then (n, 3).
    """
    y64, i64 = y.double(), i.double()
    one = y64.new_ones(())
    delta = _grey_pool(y64, patch) - _grey_pool(i64, patch)
    gdelta = torch.zeros_like(delta)
    for (dy, dx), weight in SPA_NEIGHBOURS:
        e = delta - _neighbour(delta, dy, dx)
        gdelta = gdelta + weight * (e - _neighbour(e, -dy, -dx))
    gdelta = gdelta * (2 / delta.numel() / (3 * patch * patch))
    pe = _grey_pool(y64, exposure_patch)
    gexp = (pe - level) * (2 / pe.numel() / (3 * exposure_patch * exposure_patch))
    gcol = color_constancy_loss_backward(one, y64)[:, :, 0, 0]
    pooled = torch.cat([gdelta.flatten(), gexp.flatten(), gcol.flatten()])
    return (*zero_reference_loss(y, i, patch, level, exposure_patch), pooled)


def zero_reference_loss_backward(g_spa: Tensor, g_exp: Tensor, g_col: Tensor, pooled_grads: Tensor,
                                 y: Tensor, need_grad_i: bool, patch: int = 4, exposure_patch: int = 16):
    """Returns (grad_y, grad_i) for upstream gradients of the three scalars, from the forward's
    pooled_grads (y gives only the shape and dtype; grad_i is None unless need_grad_i)."""
    n, _, h, w = y.shape
    ns, ne = n * (h // patch) * (w // patch), n * (h // exposure_patch) * (w // exposure_patch)
    gdelta = pooled_grads[:ns].view(n, 1, h // patch, w // patch)
    gexp = pooled_grads[ns:ns + ne].view(n, 1, h // exposure_patch, w // exposure_patch)
    gcol = pooled_grads[ns + ne:].view(n, 3, 1, 1)

    def spread(g: Tensor, p: int) -> Tensor:  # each patch's value over its pixels, zero in the remainder
        g = g.repeat_interleave(p, -2).repeat_interleave(p, -1)
        return F.pad(g, (0, w - g.shape[-1], 0, h - g.shape[-2]))

    spa = spread(gdelta, patch) * g_spa.double()
    gy = spa + spread(gexp, exposure_patch) * g_exp.double() + gcol * g_col.double()
    gi = (-spa).expand(y.shape).to(y.dtype).contiguous() if need_grad_i else None
    return gy.to(y.dtype), gi
