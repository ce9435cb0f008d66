"""LE curve: 8 steps of x + r (x^2 - x) per pixel, with the align_corners=True bilinear upsample
of a smaller r fused in. float32/float16/bfloat16 I/O, computed in float32 (float64 in float64).

Forward: one read of x (and of r's few rows: each program reads the stretch of r's two source
rows under its columns once, blends them, and gathers each pixel's taps from registers), one
write of y. Backward: one read of the gradient and x, one write of dL/dx and of the full-size
factor gradient; where r is smaller, two small gather kernels fold that gradient back to r's size
(the upsample's adjoint, in a fixed order: no atomics, the same result every run).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import release
from ._runtime import autotune, cdiv, constexpr_function, launch, next_power_of_2

_ROW_CONFIGS = [triton.Config({"BLOCK_W": bw}, num_warps=nw) for bw, nw in ((256, 2), (1024, 4), (2048, 4))]
# Upsampling gathers r's taps from registers (tl.gather), except with Triton 3.3, whose compiler
# fails on those gathers (an assertion in its gather layout pass; 3.4 builds them): there each
# pixel reads its four taps from memory (same results; the 4K forward's build has 23-34% more
# instructions, sm_90)
_GATHER = tl.constexpr(release(triton.__version__) >= (3, 4))


@triton.jit
def _div_rn(a, b, COMPUTE: tl.constexpr):
    """a / b rounded to nearest: Triton's float32 ``/`` is an approximate division (float64's is exact)."""
    if COMPUTE == tl.float64:
        return a / b
    else:
        return tl.math.div_rn(a, b)


@triton.jit
def _scale(in_size, out_size, COMPUTE: tl.constexpr):
    """align_corners=True source step per output index, rounded as PyTorch's: an approximate division's
    last-bit error, times a 4K frame's column index, moved the taps by 3e-5 of a pixel (measured on an
    H100)."""
    return tl.where(out_size > 1, _div_rn(tl.cast(in_size - 1, COMPUTE), tl.cast(out_size - 1, COMPUTE), COMPUTE),
                    0.0)


@triton.jit
def _taps(out_index, scale, in_size, COMPUTE: tl.constexpr):
    """The taps of output index (a tensor or scalar) at ``scale``: (i0, i1, weight of i1), as PyTorch."""
    src = scale * tl.cast(out_index, COMPUTE)
    i0 = tl.cast(src, tl.int32)
    i1 = i0 + tl.where(i0 < in_size - 1, 1, 0)
    return i0, i1, src - tl.cast(i0, COMPUTE)


@triton.jit
def _source(out_index, in_size, out_size, COMPUTE: tl.constexpr):
    """align_corners=True taps of output index (a tensor or scalar): (i0, i1, weight of i1), as PyTorch."""
    return _taps(out_index, _scale(in_size, out_size, COMPUTE), in_size, COMPUTE)


@constexpr_function
def _span(block, shrink):
    """r's columns under a block of output columns (a power of 2), r at least ``shrink`` times narrower."""
    return triton.next_power_of_2(block // shrink + 2)


@triton.jit
def _upsample_taps(i, cols, H, W, h, w, UPSAMPLE: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_W: tl.constexpr):
    """Upsampling, the taps in r of output row i and of each of the block's columns, with the
    weights of the second taps, and the first and last column of r under the block. The same in
    every plane: a program works them out once for all its planes."""
    if UPSAMPLE:
        y0, y1, wy = _source(i, h, H, COMPUTE)
        scale = _scale(w, W, COMPUTE)
        x0, x1, wx = _taps(cols, scale, w, COMPUTE)
        first, _, _ = _taps(tl.program_id(1) * BLOCK_W, scale, w, COMPUTE)
        _, end, _ = _taps(tl.minimum(tl.program_id(1) * BLOCK_W + BLOCK_W, W) - 1, scale, w, COMPUTE)
        return y0, y1, wy, x0, x1, wx, first, end
    else:
        return 0, 0, 0, cols, cols, cols, 0, 0


@triton.jit
def _factors(r_ptr, plane, i, cols, mask, taps, H, W, h, w, UPSAMPLE: tl.constexpr, SHRINK: tl.constexpr,
             COMPUTE: tl.constexpr, BLOCK_W: tl.constexpr):
    """r at output row i, columns cols (a block of BLOCK_W), of one plane: read, or bilinearly upsampled
    from (h, w) with the ``taps`` (_upsample_taps), r at least SHRINK times narrower
    (w - 1 <= (W - 1) / SHRINK). Upsampled, the two source rows' few columns under the block are
    read once and blended vertically, then each column's two taps are gathered from registers:
    four gathers from memory per pixel, with their address arithmetic, made the 4K forward
    instruction-bound (Triton 3.3 still reads them from memory: _GATHER). (PyTorch blends
    horizontally first: the same value to a rounding.)"""
    if UPSAMPLE:
        y0, y1, wy, x0, x1, wx, first, end = taps
        if _GATHER:
            j = tl.arange(0, _span(BLOCK_W, SHRINK))
            under = first + j <= end  # the columns the block reads, no more
            base = r_ptr + plane.to(tl.int64) * h * w + first + j
            blend = (1 - wy) * tl.load(base + y0 * w, mask=under, other=0.0).to(COMPUTE) \
                + wy * tl.load(base + y1 * w, mask=under, other=0.0).to(COMPUTE)
            last = _span(BLOCK_W, SHRINK) - 1  # columns past W (masked) may look past the span
            a = tl.gather(blend, tl.minimum(x0 - first, last), 0)
            b = tl.gather(blend, tl.minimum(x1 - first, last), 0)
        else:  # the same blends, of taps read from memory
            plane_ptr = r_ptr + plane.to(tl.int64) * h * w
            a = (1 - wy) * tl.load(plane_ptr + y0 * w + x0, mask=mask, other=0.0).to(COMPUTE) \
                + wy * tl.load(plane_ptr + y1 * w + x0, mask=mask, other=0.0).to(COMPUTE)
            b = (1 - wy) * tl.load(plane_ptr + y0 * w + x1, mask=mask, other=0.0).to(COMPUTE) \
                + wy * tl.load(plane_ptr + y1 * w + x1, mask=mask, other=0.0).to(COMPUTE)
        return (1 - wx) * a + wx * b
    else:
        return tl.load(r_ptr + (plane.to(tl.int64) * H + i) * W + cols, mask=mask, other=0.0).to(COMPUTE)


# A program takes one row of PLANES planes (an image's 3 colours), sharing its columns' taps.
@autotune(_ROW_CONFIGS, key=["W"])
@triton.jit
def _le_curve_fwd(x_ptr, r_ptr, y_ptr, H, W, h, w, ITERATIONS: tl.constexpr, UPSAMPLE: tl.constexpr,
                  SHRINK: tl.constexpr, PLANES: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_W: tl.constexpr):
    group, i = tl.program_id(0) // H, tl.program_id(0) % H
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    mask = cols < W
    taps = _upsample_taps(i, cols, H, W, h, w, UPSAMPLE, COMPUTE, BLOCK_W)
    for k in tl.static_range(PLANES):  # unrolled: the planes' loads in flight together
        plane = group * PLANES + k
        offs = (plane.to(tl.int64) * H + i) * W + cols
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
        r = _factors(r_ptr, plane, i, cols, mask, taps, H, W, h, w, UPSAMPLE, SHRINK, COMPUTE, BLOCK_W)
        for _ in tl.static_range(ITERATIONS):
            x = x + r * (x * x - x)
        tl.store(y_ptr + offs, x, mask=mask)


# One plane a program: the backward computes ~5x more per pixel than the forward, and taps kept
# across planes took ~90 more registers (143 -> 232 at 2048 columns, sm_90).
@autotune(_ROW_CONFIGS, key=["W"])
@triton.jit
def _le_curve_bwd(g_ptr, x_ptr, r_ptr, gx_ptr, gr_ptr, H, W, h, w, ITERATIONS: tl.constexpr,
                  UPSAMPLE: tl.constexpr, SHRINK: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_W: tl.constexpr):
    row = tl.program_id(0)
    plane, i = row // H, row % H
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    mask = cols < W
    offs = row.to(tl.int64) * W + cols
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    taps = _upsample_taps(i, cols, H, W, h, w, UPSAMPLE, COMPUTE, BLOCK_W)
    r = _factors(r_ptr, plane, i, cols, mask, taps, H, W, h, w, UPSAMPLE, SHRINK, COMPUTE, BLOCK_W)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    gr = tl.zeros_like(x)
    # walk the steps back; each step's input is recomputed from x (registers only, no step storage)
    for k in tl.static_range(ITERATIONS - 1, -1, -1):
        xk = x
        for _ in tl.static_range(k):
            xk = xk + r * (xk * xk - xk)
        gr += g * (xk * xk - xk)
        g = g * (1 + r * (xk + xk - 1))
    tl.store(gx_ptr + offs, g, mask=mask)
    tl.store(gr_ptr + offs, gr, mask=mask)


@triton.jit
def _fold_rows(g_ptr, out_ptr, H, W, h, COMPUTE: tl.constexpr, BLOCK_W: tl.constexpr):
    """out[plane, p, :] = sum over the output rows i that read r's row p of their weight x g[plane, i, :]."""
    prow = tl.program_id(0)  # plane * h + p
    plane, p = prow // h, prow % h
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    mask = cols < W
    # rows i whose taps include p lie within one source step of p: i in [(p - 1) / s, (p + 1) / s]
    s = tl.where(H > 1, tl.cast(h - 1, COMPUTE) / tl.cast(H - 1, COMPUTE), 0.0)
    lo = tl.where(s > 0, tl.cast(tl.cast(p - 1, COMPUTE) / tl.maximum(s, 1e-30), tl.int32) - 1, 0)
    hi = tl.where(s > 0, tl.cast(tl.cast(p + 1, COMPUTE) / tl.maximum(s, 1e-30), tl.int32) + 2, H)
    lo, hi = tl.maximum(lo, 0), tl.minimum(hi, H)
    acc = tl.zeros([BLOCK_W], dtype=COMPUTE)
    for i in range(lo, hi):
        i0, i1, wy = _source(i, h, H, COMPUTE)
        weight = tl.where(i0 == p, 1 - wy, 0.0) + tl.where(i1 == p, wy, 0.0)
        g = tl.load(g_ptr + (plane.to(tl.int64) * H + i) * W + cols, mask=mask, other=0.0).to(COMPUTE)
        acc += weight * g
    tl.store(out_ptr + prow.to(tl.int64) * W + cols, acc, mask=mask)


@triton.jit
def _fold_cols(g_ptr, out_ptr, W, w, SPAN: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_Q: tl.constexpr):
    """out[row, q] = sum over the columns j that read r's column q of their weight x g[row, j]."""
    row = tl.program_id(0)
    q = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    qmask = q < w
    s = tl.where(W > 1, tl.cast(w - 1, COMPUTE) / tl.cast(W - 1, COMPUTE), 0.0)
    lo = tl.where(s > 0, tl.cast(tl.cast(q - 1, COMPUTE) / tl.maximum(s, 1e-30), tl.int32) - 1, 0)
    lo = tl.maximum(lo, 0)
    acc = tl.zeros([BLOCK_Q], dtype=COMPUTE)
    for t in range(SPAN):
        j = lo + t
        jmask = qmask & (j < W)
        j0, j1, wx = _source(j, w, W, COMPUTE)
        weight = tl.where(j0 == q, 1 - wx, 0.0) + tl.where(j1 == q, wx, 0.0)
        g = tl.load(g_ptr + row.to(tl.int64) * W + j, mask=jmask, other=0.0).to(COMPUTE)
        acc += tl.where(jmask, weight * g, 0.0)
    tl.store(out_ptr + row.to(tl.int64) * w + q, acc, mask=qmask)


def _compute(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _check(x: torch.Tensor, r: torch.Tensor) -> None:
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64) or r.dtype != x.dtype:
        raise TypeError(f"sgllie.kernels.le_curve: float32/float16/bfloat16/float64 x and r of one dtype, "
                        f"got {x.dtype} and {r.dtype}")


def _shrink(W: int, w: int) -> int:
    """How many times narrower r (w columns, at most W) is than x, at least, as a power of 2 (few
    compiled variants; at most 1024)."""
    ratio = (W - 1) // (w - 1) if w > 1 else 1024
    return 1 << (min(ratio, 1024).bit_length() - 1)


def _planes(planes: int) -> int:
    """Planes per program: an image's three colours where the planes come in threes."""
    return 3 if planes % 3 == 0 else 1


def le_curve(x: torch.Tensor, r: torch.Tensor, iterations: int) -> torch.Tensor:
    _check(x, r)
    x, r = x.contiguous(), r.contiguous()
    n, c, H, W = x.shape
    h, w = r.shape[-2:]
    y = torch.empty_like(x)
    planes = _planes(n * c)
    grid = lambda meta: (n * c // planes * H, cdiv(W, meta["BLOCK_W"]))  # noqa: E731
    launch(_le_curve_fwd, grid, x, r, y, H, W, h, w, ITERATIONS=iterations, UPSAMPLE=(h, w) != (H, W),
           SHRINK=_shrink(W, w), PLANES=planes, COMPUTE=_compute(x.dtype))
    return y


def le_curve_backward(grad: torch.Tensor, x: torch.Tensor, r: torch.Tensor, iterations: int):
    _check(x, r)
    grad, x, r = grad.contiguous().to(x.dtype), x.contiguous(), r.contiguous()
    n, c, H, W = x.shape
    h, w = r.shape[-2:]
    upsample = (h, w) != (H, W)
    gx = torch.empty_like(x)
    # the full-size factor gradient: r's own gradient, or (upsampled) kept in float32 to be folded
    gr_full = torch.empty(x.shape, device=x.device, dtype=torch.float64 if x.dtype == torch.float64
                          else torch.float32) if upsample else torch.empty_like(r)
    grid = lambda meta: (n * c * H, cdiv(W, meta["BLOCK_W"]))  # noqa: E731
    compute = _compute(x.dtype)
    launch(_le_curve_bwd, grid, grad, x, r, gx, gr_full, H, W, h, w, ITERATIONS=iterations, UPSAMPLE=upsample,
           SHRINK=_shrink(W, w), COMPUTE=compute)
    if not upsample:
        return gx, gr_full
    rows = torch.empty((n * c, h, W), device=x.device, dtype=gr_full.dtype)
    launch(_fold_rows, (n * c * h, cdiv(W, 256)), gr_full, rows, H, W, h, COMPUTE=compute, BLOCK_W=256)
    gr = torch.empty_like(r)
    span = next_power_of_2(2 * (W - 1) // max(w - 1, 1) + 4) if w > 1 else next_power_of_2(W)
    launch(_fold_cols, (n * c * h, cdiv(w, 128)), rows, gr, W, w, SPAN=span, COMPUTE=compute,
           BLOCK_Q=128)
    return gx, gr
