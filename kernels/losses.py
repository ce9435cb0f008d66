"""SGZ's losses: the three zero-reference image losses (spatial consistency, exposure, colour) and the
total-variation loss of the factor map, forward and backward. float32/float16/bfloat16 I/O computed
in float32 (float64 in float64); arithmetic on the small pooled maps in float64.

zero_reference_loss forward:
- _zrl_pool, one read of y and i: each program takes a band of rows x a column tile made of whole
  patches of both sizes and writes the grey patch sums of y - i (delta, a scratch map ~1/50 of the
  input), the exposure patch gradients (into pooled_grads), and partial sums of the exposure term
  and of the three channels.
- _spa_map: delta -> the spa term's partial sums and its per-patch gradients (into pooled_grads).
- _zrl_finish, one program: the partials added in a fixed order (no atomics anywhere: the same bits
  every run), blocks of images at once, into the three losses, and the colour gradients (into
  pooled_grads).
The forward's scratch (tile count, partials, delta) is one buffer, its parts found by offset.
Backward (_zrl_spread): one write of dL/dy (and dL/di) from pooled_grads; y and i are not read.

tv_loss: forward one read of r into per-program partials (_tv_fwd, then _sum_finish; the count and the
partials in one scratch buffer, as the zero_reference_loss forward's); backward one
read of r and one write of dL/dr (_tv_bwd).

The single losses run the same kernels with the other terms switched off (constexprs), so they read
only what their term needs; their backward recomputes the pooled maps (one more read of y (and i)).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
import torch
import triton
import triton.language as tl

from ._runtime import autotune, cdiv, constexpr_function, launch

# Tile targets (columns, rows); the tiles actually used are whole patches of both sizes near them.
_POOL_CONFIGS = [triton.Config({"TILE_W": tw, "TILE_H": th}, num_warps=nw)
                 for tw, th, nw in ((64, 16, 2), (128, 32, 4), (256, 16, 4))]
_SPREAD_CONFIGS = [triton.Config({"BLOCK_H": bh, "BLOCK_W": bw}, num_warps=nw)
                   for bh, bw, nw in ((4, 64, 2), (8, 128, 4), (8, 256, 8))]
_TV_CONFIGS = [triton.Config({"BLOCK_W": bw, "BAND": band}, num_warps=nw)
               for bw, band, nw in ((128, 16, 2), (512, 16, 4), (1024, 16, 8))]
_SPA_TILE = (16, 32)   # _spa_map tile of the pooled map: fixed, so its partials need no count
_FINISH_BLOCK = 256
_FINISH_IMAGES, _FINISH_TILES = 8, 128   # _zrl_finish's [images, tiles] blocks of partials (8 warps)


@constexpr_function
def _lcm(a, b):
    return a * b // math.gcd(a, b)


@constexpr_function
def _whole(target, unit):
    """The multiple of unit nearest below target, at least unit."""
    return max(1, target // unit) * unit


@constexpr_function
def _pow2(x):
    return triton.next_power_of_2(x)


@triton.jit
def _f64(x):
    return tl.cast(x, tl.float64)


@triton.jit
def _masked(mask, cond):
    """mask and a scalar condition (the interpreter's ``&`` of a block and a scalar is not boolean)."""
    return tl.where(cond, mask, False)


@triton.jit
def _record_tiles(tiles_ptr, tiles):
    """The partials' count depends on the config the autotuner picked: the finish kernel reads it here."""
    if (tl.program_id(0) == 0) & (tl.program_id(1) == 0):
        tl.store(tiles_ptr, tiles)


@triton.jit
def _tile_count(scratch_ptr):
    """A scratch buffer's first float64 slot, as the int32 count of the partials (_record_tiles)."""
    return scratch_ptr.to(tl.pointer_type(tl.int32))


# a scratch buffer's float64 slots before its partials: the count's (_tile_count); a constexpr, the
# kind of global a kernel may read (the host reads .value)
_COUNT_SLOTS = tl.constexpr(1)


@triton.jit
def _partials(scratch_ptr):
    """A scratch buffer's partials, after its count (_tile_count)."""
    return scratch_ptr + _COUNT_SLOTS


@triton.jit
def _sum(ptr, count, STRIDE: tl.constexpr, BLOCK: tl.constexpr):
    """sum of ptr[k * STRIDE] for k < count in float64, always in the same order."""
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], tl.float64)
    for start in range(0, count, BLOCK):
        acc += tl.load(ptr + (start + offs) * STRIDE, mask=start + offs < count, other=0.0).to(tl.float64)
    return tl.sum(acc, 0)


# ----------------------------------------------------------------------------- zero_reference_loss
# The forward's scratch, one float64 buffer (one allocation, no views: the kernels take offsets):
# [the pool's tile count (int32) | the spa map's partials (_partials) | delta | the pool's partials]
@triton.jit
def _delta(scratch_ptr, delta_at, COMPUTE: tl.constexpr):
    """delta, the grey patch sums of y - i, in COMPUTE's type (a float64 slot a value: float32 uses half)."""
    return (scratch_ptr + delta_at).to(tl.pointer_type(COMPUTE))


@autotune(_POOL_CONFIGS, key=["H", "W", "P", "E", "SPA", "EXPOSURE", "COLOUR"])
@triton.jit(do_not_specialize=["exp_at", "delta_at", "part_at"])
def _zrl_pool(y_ptr, i_ptr, pooled_ptr, scratch_ptr, n, H, W, rows, exp_at, delta_at, part_at, level_hi, level_lo,
              P: tl.constexpr, E: tl.constexpr, SPA: tl.constexpr, EXPOSURE: tl.constexpr,
              COLOUR: tl.constexpr, COMPUTE: tl.constexpr, TILE_W: tl.constexpr, TILE_H: tl.constexpr):
    ph, pw, eh, ew = H // P, W // P, H // E, W // E
    gexp_ptr, tiles_ptr = pooled_ptr + exp_at, _tile_count(scratch_ptr)
    delta_ptr, part_ptr = _delta(scratch_ptr, delta_at, COMPUTE), scratch_ptr + part_at
    # whole patches of both sizes per tile: every pooled value is finished inside one program
    L: tl.constexpr = _lcm(P, E)
    CW: tl.constexpr = _whole(TILE_W, L)
    BAND: tl.constexpr = _whole(TILE_H, L)
    bands = tl.cdiv(rows, BAND)
    b, band, tile = tl.program_id(0) // bands, tl.program_id(0) % bands, tl.program_id(1)
    _record_tiles(tiles_ptr, bands * tl.num_programs(1))
    r0, c0 = band * BAND, tile * CW
    plane = tl.cast(H, tl.int64) * W
    y_img = y_ptr + b * 3 * plane
    i_img = i_ptr + b * 3 * plane

    # spa layout: [patch, column in patch] (y for delta and the channel sums, i for delta)
    QN: tl.constexpr = CW // P
    q = tl.arange(0, _pow2(QN))
    s_col = c0 + q[:, None] * P + tl.arange(0, _pow2(P))[None, :]
    s_tile = (q[:, None] < QN) & (tl.arange(0, _pow2(P))[None, :] < P) & (s_col < W)
    s_pool = s_tile & (s_col < pw * P)      # columns of whole patches
    s_out = (q < QN) & (c0 // P + q < pw)
    # exposure layout: [patch, column in patch]; y again, from cache (the same bytes just read)
    EN: tl.constexpr = CW // E
    j = tl.arange(0, _pow2(EN))
    e_col = c0 + j[:, None] * E + tl.arange(0, _pow2(E))[None, :]
    e_pool = (j[:, None] < EN) & (tl.arange(0, _pow2(E))[None, :] < E) & (e_col < ew * E)
    e_out = (j < EN) & (c0 // E + j < ew)
    level = _f64(level_hi) + _f64(level_lo)
    e_scale = 2.0 / (_f64(n) * eh * ew) / (3 * E * E)   # d exp / d pixel = (mean - level) * e_scale

    acc_d = tl.zeros([_pow2(QN), _pow2(P)], COMPUTE)
    acc_e = tl.zeros([_pow2(EN), _pow2(E)], COMPUTE)
    sum0 = tl.zeros([_pow2(QN), _pow2(P)], COMPUTE)
    sum1 = tl.zeros([_pow2(QN), _pow2(P)], COMPUTE)
    sum2 = tl.zeros([_pow2(QN), _pow2(P)], COMPUTE)
    exp_acc = tl.zeros([_pow2(EN)], tl.float64)
    for r in range(r0, tl.minimum(r0 + BAND, rows)):
        y_row, i_row = y_img + r * W, i_img + r * W
        if SPA or COLOUR:
            in_spa = _masked(s_pool, r < ph * P)
            y_mask = s_tile if COLOUR else in_spa
            y0 = tl.load(y_row + s_col, mask=y_mask, other=0.0).to(COMPUTE)
            y1 = tl.load(y_row + plane + s_col, mask=y_mask, other=0.0).to(COMPUTE)
            y2 = tl.load(y_row + 2 * plane + s_col, mask=y_mask, other=0.0).to(COMPUTE)
            if COLOUR:
                sum0 += y0
                sum1 += y1
                sum2 += y2
            if SPA:
                i0 = tl.load(i_row + s_col, mask=in_spa, other=0.0).to(COMPUTE)
                i1 = tl.load(i_row + plane + s_col, mask=in_spa, other=0.0).to(COMPUTE)
                i2 = tl.load(i_row + 2 * plane + s_col, mask=in_spa, other=0.0).to(COMPUTE)
                # columns past the last whole patch hold y alone here, but only whole patches are stored
                acc_d += (y0 + y1 + y2) - (i0 + i1 + i2)
                if (r + 1) % P == 0:   # a patch row is complete (never for the remainder rows)
                    out = delta_ptr + (b * ph + r // P) * pw + c0 // P + q
                    tl.store(out, tl.sum(acc_d, 1) / (3 * P * P), mask=s_out)
                    acc_d = tl.zeros([_pow2(QN), _pow2(P)], COMPUTE)
        if EXPOSURE:
            in_exp = _masked(e_pool, r < eh * E)
            e0 = tl.load(y_row + e_col, mask=in_exp, other=0.0).to(COMPUTE)
            e1 = tl.load(y_row + plane + e_col, mask=in_exp, other=0.0).to(COMPUTE)
            e2 = tl.load(y_row + 2 * plane + e_col, mask=in_exp, other=0.0).to(COMPUTE)
            acc_e += e0 + e1 + e2
            if (r + 1) % E == 0:
                dev = _f64(tl.sum(acc_e, 1)) / (3 * E * E) - level
                tl.store(gexp_ptr + (b * eh + r // E) * ew + c0 // E + j, dev * e_scale, mask=e_out)
                exp_acc += tl.where(e_out, dev * dev, 0.0)
                acc_e = tl.zeros([_pow2(EN), _pow2(E)], COMPUTE)
    # partials: (exposure, channel 0, 1, 2) per program, the programs of an image consecutive
    part = part_ptr + (tl.program_id(0) * tl.num_programs(1) + tile) * 4
    if EXPOSURE:
        tl.store(part, tl.sum(exp_acc, 0))
    if COLOUR:
        tl.store(part + 1, tl.sum(tl.sum(_f64(sum0), 1), 0))
        tl.store(part + 2, tl.sum(tl.sum(_f64(sum1), 1), 0))
        tl.store(part + 3, tl.sum(tl.sum(_f64(sum2), 1), 0))


@triton.jit
def _spa_neighbour(base, rr, cc, ph, pw, delta, e, near, weight_in, DY: tl.constexpr, DX: tl.constexpr,
                   WEIGHT: tl.constexpr):
    """Adds one neighbour's term: delta beyond the map is 0 (the reference's zero padding)."""
    r, c = rr + DY, cc + DX
    inside = (r >= 0) & (r < ph) & (c >= 0) & (c < pw)
    other = tl.load(base + r * pw + c, mask=inside, other=0.0).to(tl.float64)
    d = delta - other
    return e + WEIGHT * d * d, near + WEIGHT * other, weight_in + tl.where(inside, WEIGHT, 0.0)


@triton.jit(do_not_specialize=["delta_at"])
def _spa_map(scratch_ptr, gdelta_ptr, n, H, W, delta_at, P: tl.constexpr, COMPUTE: tl.constexpr,
             BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    ph, pw = H // P, W // P
    delta_ptr, part_ptr = _delta(scratch_ptr, delta_at, COMPUTE), _partials(scratch_ptr)
    pid = tl.program_id(0)
    tiles_w = tl.cdiv(pw, BLOCK_W)
    per_image = tl.cdiv(ph, BLOCK_H) * tiles_w
    b, t = pid // per_image, pid % per_image
    rr = (t // tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    cc = (t % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    inside = (rr < ph) & (cc < pw)
    base = delta_ptr + b * ph * pw
    delta = tl.load(base + rr * pw + cc, mask=inside, other=0.0).to(tl.float64)
    e = tl.zeros([BLOCK_H, BLOCK_W], tl.float64)
    near = tl.zeros([BLOCK_H, BLOCK_W], tl.float64)
    w_in = tl.zeros([BLOCK_H, BLOCK_W], tl.float64)
    # reference.SPA_NEIGHBOURS, in its order
    e, near, w_in = _spa_neighbour(base, rr, cc, ph, pw, delta, e, near, w_in, 0, -1, 1.0)
    e, near, w_in = _spa_neighbour(base, rr, cc, ph, pw, delta, e, near, w_in, 0, 1, 1.0)
    e, near, w_in = _spa_neighbour(base, rr, cc, ph, pw, delta, e, near, w_in, -1, 0, 1.0)
    e, near, w_in = _spa_neighbour(base, rr, cc, ph, pw, delta, e, near, w_in, 1, 0, 1.0)
    e, near, w_in = _spa_neighbour(base, rr, cc, ph, pw, delta, e, near, w_in, -1, -1, 0.5)
    e, near, w_in = _spa_neighbour(base, rr, cc, ph, pw, delta, e, near, w_in, -1, 1, 0.5)
    e, near, w_in = _spa_neighbour(base, rr, cc, ph, pw, delta, e, near, w_in, 1, -1, 0.5)
    e, near, w_in = _spa_neighbour(base, rr, cc, ph, pw, delta, e, near, w_in, 1, 1, 0.5)
    tl.store(part_ptr + pid, tl.sum(tl.sum(tl.where(inside, e, 0.0), 1), 0))
    # d/d delta of sum_d w_d (delta - delta_d)^2 over the map: the neighbours come in +-d pairs of
    # equal weight, so it is 2 ((6 + inside weights) delta - 2 sum_d w_d delta_d)
    scale = 2.0 / (_f64(n) * ph * pw) / (3 * P * P)
    grad = ((6.0 + w_in) * delta - 2.0 * near) * scale
    tl.store(gdelta_ptr + b * ph * pw + rr * pw + cc, grad, mask=inside)


@triton.jit(do_not_specialize=["col_at", "part_at"])
def _zrl_finish(scratch_ptr, pooled_ptr, spa_ptr, exp_ptr, col_ptr, n, H, W, spa_parts, col_at, part_at,
                P: tl.constexpr, E: tl.constexpr, SPA: tl.constexpr, EXPOSURE: tl.constexpr, COLOUR: tl.constexpr,
                COMPUTE: tl.constexpr, BLOCK: tl.constexpr, IMAGES: tl.constexpr, TILES: tl.constexpr):
    ph, pw, eh, ew = H // P, W // P, H // E, W // E
    gcol_ptr, part_ptr = pooled_ptr + col_at, scratch_ptr + part_at
    # the losses leave through COMPUTE: float64 -> bfloat16 is no conversion every target has
    if SPA:
        tl.store(spa_ptr, (_sum(_partials(scratch_ptr), spa_parts, 1, BLOCK) / (_f64(n) * ph * pw)).to(COMPUTE))
    if EXPOSURE or COLOUR:
        # the pool's partials as [images, tiles] blocks: IMAGES images' sums load together, where one
        # image's after another made a chain of dependent loads (14 us of one program, H100, batch 8)
        tiles = tl.load(_tile_count(scratch_ptr))   # _zrl_pool's programs per image
        pixels = _f64(H) * W
        exp = tl.zeros([IMAGES], tl.float64)
        col = tl.zeros([IMAGES], tl.float64)
        t = tl.arange(0, TILES)[None, :]
        for b0 in range(0, n, IMAGES):
            b = b0 + tl.arange(0, IMAGES)
            e = tl.zeros([IMAGES, TILES], tl.float64)
            s0 = tl.zeros([IMAGES, TILES], tl.float64)
            s1 = tl.zeros([IMAGES, TILES], tl.float64)
            s2 = tl.zeros([IMAGES, TILES], tl.float64)
            for t0 in range(0, tiles, TILES):
                inside = (b[:, None] < n) & (t0 + t < tiles)
                part = part_ptr + (b[:, None] * tiles + t0 + t) * 4
                if EXPOSURE:
                    e += tl.load(part, mask=inside, other=0.0)
                if COLOUR:
                    s0 += tl.load(part + 1, mask=inside, other=0.0)
                    s1 += tl.load(part + 2, mask=inside, other=0.0)
                    s2 += tl.load(part + 3, mask=inside, other=0.0)
            exp += tl.sum(e, 1)
            if COLOUR:
                m0, m1, m2 = tl.sum(s0, 1) / pixels, tl.sum(s1, 1) / pixels, tl.sum(s2, 1) / pixels
                a, c, d = m0 - m1, m0 - m2, m2 - m1
                k = tl.sqrt(a * a * a * a + c * c * c * c + d * d * d * d)
                image = b < n
                col += tl.where(image, k, 0.0)
                # dk/dm; at k = 0 (all channel means equal) the subgradient 0, as the reference
                s = tl.where(k > 0, 1.0 / (2.0 * tl.maximum(k, 1e-300)), 0.0) / (_f64(n) * pixels)
                tl.store(gcol_ptr + b * 3, s * 4.0 * (a * a * a + c * c * c), mask=image)
                tl.store(gcol_ptr + b * 3 + 1, s * -4.0 * (a * a * a + d * d * d), mask=image)
                tl.store(gcol_ptr + b * 3 + 2, s * 4.0 * (d * d * d - c * c * c), mask=image)
        if EXPOSURE:
            tl.store(exp_ptr, (tl.sum(exp, 0) / (_f64(n) * eh * ew)).to(COMPUTE))
        if COLOUR:
            tl.store(col_ptr, (tl.sum(col, 0) / _f64(n)).to(COMPUTE))


@autotune(_SPREAD_CONFIGS, key=["H", "W", "P", "E", "SPA", "EXPOSURE", "COLOUR", "NEED_GI"])
@triton.jit(do_not_specialize=["exp_at", "col_at"])
def _zrl_spread(gs_ptr, ge_ptr, gc_ptr, pooled_ptr, gy_ptr, gi_ptr, H, W, exp_at, col_at,
                P: tl.constexpr, E: tl.constexpr, SPA: tl.constexpr, EXPOSURE: tl.constexpr,
                COLOUR: tl.constexpr, NEED_GI: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_H: tl.constexpr,
                BLOCK_W: tl.constexpr):
    ph, pw, eh, ew = H // P, W // P, H // E, W // E
    gdelta_ptr, gexp_ptr, gcol_ptr = pooled_ptr, pooled_ptr + exp_at, pooled_ptr + col_at
    tiles_h = tl.cdiv(H, BLOCK_H)
    b = tl.program_id(0) // tiles_h
    r = (tl.program_id(0) % tiles_h) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    c = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    inside = (r < H) & (c < W)
    # each pixel reads its patch's gradient (the same few values across a tile: cached); zero in the
    # rows and columns no whole patch covers
    g = tl.zeros([BLOCK_H, BLOCK_W], COMPUTE)
    spa = tl.zeros([BLOCK_H, BLOCK_W], COMPUTE)
    if SPA:
        m = inside & (r < ph * P) & (c < pw * P)
        gd = tl.load(gdelta_ptr + (b * ph + r // P) * pw + c // P, mask=m, other=0.0).to(COMPUTE)
        spa = gd * tl.load(gs_ptr).to(COMPUTE)
        g = spa
    if EXPOSURE:
        m = inside & (r < eh * E) & (c < ew * E)
        ge = tl.load(gexp_ptr + (b * eh + r // E) * ew + c // E, mask=m, other=0.0).to(COMPUTE)
        g = g + ge * tl.load(ge_ptr).to(COMPUTE)
    plane = tl.cast(H, tl.int64) * W
    offs = r * W + c
    gy_img, gi_img = gy_ptr + b * 3 * plane, gi_ptr + b * 3 * plane
    for ch in tl.static_range(3):
        if COLOUR:
            out = g + tl.load(gcol_ptr + b * 3 + ch).to(COMPUTE) * tl.load(gc_ptr).to(COMPUTE)
        else:
            out = g
        tl.store(gy_img + ch * plane + offs, out, mask=inside)
        if NEED_GI:
            tl.store(gi_img + ch * plane + offs, -spa, mask=inside)


@triton.jit
def _sum_finish(scratch_ptr, out_ptr, divisor, COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    """The partials of scratch [count (int32) | partials] summed in a fixed order, / divisor."""
    count = tl.load(_tile_count(scratch_ptr))
    tl.store(out_ptr, (_sum(_partials(scratch_ptr), count, 1, BLOCK) / _f64(divisor)).to(COMPUTE))


def _compute(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _check(name: str, *tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            raise TypeError(f"sgllie.kernels.{name}: float32/float16/bfloat16/float64 tensors, got {t.dtype}")


class _Terms(NamedTuple):
    """Which of the three image losses a call computes, and the sizes that follow (patch 1 when off):
    the same for every call of a shape (``_terms`` caches them: they cost microseconds a call)."""
    P: int
    E: int
    spa: int        # sizes of pooled_grads' three parts
    exposure: int
    colour: int
    rows: int       # the rows the pool reads: the colour sums need every row, the pooled maps whole patches
    spa_parts: int  # _spa_map's programs
    delta_at: int   # the forward's scratch (float64 elements; see _tile_count): delta's start, the pool's
    part_at: int    # partials' start, and the size
    scratch: int

    @property
    def exp_at(self) -> int:
        return self.spa

    @property
    def col_at(self) -> int:
        return self.spa + self.exposure


@functools.lru_cache(maxsize=256)
def _terms(shape: torch.Size, patch: int, exposure_patch: int, spa: bool, exposure: bool, colour: bool) -> _Terms:
    n, _, H, W = shape
    P, E = (patch if spa else 1), (exposure_patch if exposure else 1)
    ph, pw, eh, ew = H // P, W // P, H // E, W // E
    rows = H if colour else max(ph * P if spa else 0, eh * E if exposure else 0)
    bh, bw = _SPA_TILE
    spa_parts = n * cdiv(ph, bh) * cdiv(pw, bw) if spa else 0
    delta_at = _COUNT_SLOTS.value + spa_parts
    part_at = delta_at + (n * ph * pw if spa else 0)
    most = max(math.prod(_pool_tiles(c.kwargs, rows, W, P, E)) for c in _zrl_pool.configs)
    return _Terms(P, E, n * ph * pw if spa else 0, n * eh * ew if exposure else 0, 3 * n if colour else 0,
                  rows, spa_parts, delta_at, part_at, part_at + n * most * 4)


def _pool_tiles(meta: dict, rows: int, W: int, P: int, E: int) -> tuple[int, int]:
    """(bands per image, column tiles) of _zrl_pool under config ``meta``, as the kernel computes them
    (with the constexpr functions' plain Python, .fn: their wrappers cost microseconds on the host)."""
    unit = _lcm.fn(P, E)
    return cdiv(rows, _whole.fn(meta["TILE_H"], unit)), cdiv(W, _whole.fn(meta["TILE_W"], unit))


@functools.lru_cache(maxsize=64)
def _split(level: float) -> tuple[float, float]:
    """A float argument is float32: level goes as two, whose sum keeps ~48 bits for float64."""
    hi = float(np.float32(level))
    return hi, float(level - hi)


def _losses(y: torch.Tensor, i: torch.Tensor | None, patch: int, level: float, exposure_patch: int,
            spa=False, exposure=False, colour=False):
    """(spa, exp, col, pooled_grads) for the terms switched on: the losses 0-d in y's dtype (None
    where off); pooled_grads float64, the parts of the terms that are on."""
    y = y.contiguous()
    n, _, H, W = y.shape
    t = _terms(y.shape, patch, exposure_patch, spa, exposure, colour)
    pooled = torch.empty(t.spa + t.exposure + t.colour, dtype=torch.float64, device=y.device)
    scratch = torch.empty(t.scratch, dtype=torch.float64, device=y.device)
    compute = _compute(y.dtype)

    def grid(meta):
        bands, col_tiles = _pool_tiles(meta, t.rows, W, t.P, t.E)
        return n * bands, col_tiles

    launch(_zrl_pool, grid, y, y if i is None else i.contiguous(), pooled, scratch, n, H, W, t.rows, t.exp_at,
           t.delta_at, t.part_at, *_split(level), P=t.P, E=t.E, SPA=spa, EXPOSURE=exposure, COLOUR=colour,
           COMPUTE=compute)
    if spa:
        bh, bw = _SPA_TILE
        launch(_spa_map, (t.spa_parts,), scratch, pooled, n, H, W, t.delta_at, P=t.P, COMPUTE=compute,
               BLOCK_H=bh, BLOCK_W=bw)
    out = [torch.empty((), dtype=y.dtype, device=y.device) if flag else None for flag in (spa, exposure, colour)]
    some = next(o for o in out if o is not None)  # (a term that is off writes nothing)
    launch(_zrl_finish, (1,), scratch, pooled, *(some if o is None else o for o in out), n, H, W, t.spa_parts,
           t.col_at, t.part_at, P=t.P, E=t.E, SPA=spa, EXPOSURE=exposure, COLOUR=colour, COMPUTE=compute,
           BLOCK=_FINISH_BLOCK, IMAGES=_FINISH_IMAGES, TILES=_FINISH_TILES, num_warps=8)
    return (*out, pooled)


def _spread(like: torch.Tensor, pooled: torch.Tensor, g_spa, g_exp, g_col, patch: int, exposure_patch: int,
            need_gi: bool = False):
    """dL/dy (and dL/di: minus the spa part) from pooled gradients and the upstream gradients of the
    terms that are on (not None)."""
    n, _, H, W = like.shape
    t = _terms(like.shape, patch, exposure_patch, g_spa is not None, g_exp is not None, g_col is not None)
    if pooled.numel() != t.spa + t.exposure + t.colour:
        raise ValueError("sgllie.kernels: pooled_grads does not match y and the patches")
    pooled = pooled.contiguous().to(torch.float64)
    gy = torch.empty(like.shape, dtype=like.dtype, device=like.device)
    gi = torch.empty(like.shape, dtype=like.dtype, device=like.device) if need_gi else gy
    grid = lambda meta: (n * cdiv(H, meta["BLOCK_H"]), cdiv(W, meta["BLOCK_W"]))  # noqa: E731
    launch(_zrl_spread, grid, *(pooled if g is None else g for g in (g_spa, g_exp, g_col)), pooled, gy, gi,
           H, W, t.exp_at, t.col_at, P=t.P, E=t.E, SPA=bool(t.spa), EXPOSURE=bool(t.exposure),
           COLOUR=bool(t.colour), NEED_GI=need_gi, COMPUTE=_compute(like.dtype))
    return gy, (gi if need_gi else None)


def zero_reference_loss_forward(y: torch.Tensor, i: torch.Tensor, patch: int = 4, level: float = 0.6,
                                exposure_patch: int = 16):
    _check("zero_reference_loss", y, i)
    return _losses(y, i, patch, level, exposure_patch, spa=True, exposure=True, colour=True)


def zero_reference_loss_backward(g_spa: torch.Tensor, g_exp: torch.Tensor, g_col: torch.Tensor,
                                 pooled_grads: torch.Tensor, y: torch.Tensor, need_grad_i: bool, patch: int = 4,
                                 exposure_patch: int = 16):
    _check("zero_reference_loss_backward", y)
    return _spread(y, pooled_grads, g_spa, g_exp, g_col, patch, exposure_patch, need_grad_i)


def spatial_consistency_loss(y: torch.Tensor, i: torch.Tensor, patch: int = 4) -> torch.Tensor:
    _check("spatial_consistency_loss", y, i)
    return _losses(y, i, patch, 0.0, 1, spa=True)[0]


def spatial_consistency_loss_backward(grad: torch.Tensor, y: torch.Tensor, i: torch.Tensor, patch: int = 4):
    _check("spatial_consistency_loss_backward", y, i)
    pooled = _losses(y, i, patch, 0.0, 1, spa=True)[3]
    return _spread(y, pooled, grad, None, None, patch, 1, need_gi=True)


def exposure_loss(y: torch.Tensor, level: float = 0.6, patch: int = 16) -> torch.Tensor:
    _check("exposure_loss", y)
    return _losses(y, None, 1, level, patch, exposure=True)[1]


def exposure_loss_backward(grad: torch.Tensor, y: torch.Tensor, level: float = 0.6, patch: int = 16):
    _check("exposure_loss_backward", y)
    pooled = _losses(y, None, 1, level, patch, exposure=True)[3]
    return _spread(y, pooled, None, grad, None, 1, patch)[0]


def color_constancy_loss(y: torch.Tensor) -> torch.Tensor:
    _check("color_constancy_loss", y)
    return _losses(y, None, 1, 0.0, 1, colour=True)[2]


def color_constancy_loss_backward(grad: torch.Tensor, y: torch.Tensor):
    _check("color_constancy_loss_backward", y)
    pooled = _losses(y, None, 1, 0.0, 1, colour=True)[3]
    return _spread(y, pooled, None, None, grad, 1, 1)[0]


# ----------------------------------------------------------------------------- tv_loss
@autotune(_TV_CONFIGS, key=["H", "W"])
@triton.jit
def _tv_fwd(r_ptr, scratch_ptr, H, W, COMPUTE: tl.constexpr, BLOCK_W: tl.constexpr, BAND: tl.constexpr):
    """Per program (a band of rows of one plane x a column tile): its share of the loss before / n,
    into scratch [count | partials] (_sum_finish)."""
    bands = tl.cdiv(H, BAND)
    _record_tiles(_tile_count(scratch_ptr), tl.num_programs(0) * tl.num_programs(1))
    plane, r0 = tl.program_id(0) // bands, (tl.program_id(0) % bands) * BAND
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    inside, has_right = cols < W, cols + 1 < W
    base = r_ptr + plane * (tl.cast(H, tl.int64) * W)
    sum_h = tl.zeros([BLOCK_W], COMPUTE)
    sum_w = tl.zeros([BLOCK_W], COMPUTE)
    cur = tl.load(base + r0 * W + cols, mask=inside, other=0.0).to(COMPUTE)
    for r in range(r0, tl.minimum(r0 + BAND, H)):
        # the row below is loaded once and carried: each row is read once (plus one halo row a band)
        right = tl.load(base + r * W + cols + 1, mask=has_right, other=0.0).to(COMPUTE)
        below = _masked(inside, r + 1 < H)
        nxt = tl.load(base + (r + 1) * W + cols, mask=below, other=0.0).to(COMPUTE)
        sum_w += tl.where(has_right, (right - cur) * (right - cur), 0.0)
        sum_h += tl.where(below, (nxt - cur) * (nxt - cur), 0.0)
        cur = nxt
    share = 2.0 * _f64(tl.sum(sum_h, 0)) / (_f64(H - 1) * W) + 2.0 * _f64(tl.sum(sum_w, 0)) / (_f64(H) * (W - 1))
    tl.store(_partials(scratch_ptr) + tl.program_id(0) * tl.num_programs(1) + tl.program_id(1), share)


@autotune(_TV_CONFIGS, key=["H", "W"])
@triton.jit
def _tv_bwd(g_ptr, r_ptr, out_ptr, n, H, W, COMPUTE: tl.constexpr, BLOCK_W: tl.constexpr, BAND: tl.constexpr):
    bands = tl.cdiv(H, BAND)
    plane, r0 = tl.program_id(0) // bands, (tl.program_id(0) % bands) * BAND
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    inside, has_left, has_right = cols < W, (cols > 0) & (cols < W), cols + 1 < W
    offset = plane * (tl.cast(H, tl.int64) * W)
    base, out = r_ptr + offset, out_ptr + offset
    g = tl.load(g_ptr).to(COMPUTE) * 4.0
    ch = g / (tl.cast(H - 1, COMPUTE) * W * n)
    cw = g / (tl.cast(H, COMPUTE) * (W - 1) * n)
    # a missing neighbour is taken equal to the pixel: its difference term vanishes
    cur = tl.load(base + r0 * W + cols, mask=inside, other=0.0).to(COMPUTE)
    above = tl.where(r0 > 0, tl.load(base + (r0 - 1) * W + cols, mask=_masked(inside, r0 > 0), other=0.0).to(COMPUTE),
                     cur)
    for r in range(r0, tl.minimum(r0 + BAND, H)):
        row = base + r * W + cols
        nxt = tl.load(row + W, mask=_masked(inside, r + 1 < H), other=0.0).to(COMPUTE)
        below = tl.where(r + 1 < H, nxt, cur)
        left = tl.where(has_left, tl.load(row - 1, mask=has_left, other=0.0).to(COMPUTE), cur)
        right = tl.where(has_right, tl.load(row + 1, mask=has_right, other=0.0).to(COMPUTE), cur)
        # the reference's order: vertical pair, then the horizontal terms
        grad = ch * (cur - above) - ch * (below - cur) + cw * (cur - left) - cw * (right - cur)
        tl.store(out + r * W + cols, grad, mask=inside)
        above, cur = cur, nxt


def tv_loss(r: torch.Tensor) -> torch.Tensor:
    _check("tv_loss", r)
    r = r.contiguous()
    n, c, H, W = r.shape
    most = max(n * c * cdiv(H, cfg.kwargs["BAND"]) * cdiv(W, cfg.kwargs["BLOCK_W"])
               for cfg in _tv_fwd.configs)
    scratch = torch.empty(_COUNT_SLOTS.value + most, dtype=torch.float64, device=r.device)
    grid = lambda meta: (n * c * cdiv(H, meta["BAND"]), cdiv(W, meta["BLOCK_W"]))  # noqa: E731
    launch(_tv_fwd, grid, r, scratch, H, W, COMPUTE=_compute(r.dtype))
    out = torch.empty((), dtype=r.dtype, device=r.device)
    launch(_sum_finish, (1,), scratch, out, n, COMPUTE=_compute(r.dtype), BLOCK=_FINISH_BLOCK)
    return out


def tv_loss_backward(grad: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    _check("tv_loss_backward", r)
    r = r.contiguous()
    n, c, H, W = r.shape
    out = torch.empty(r.shape, dtype=r.dtype, device=r.device)
    grid = lambda meta: (n * c * cdiv(H, meta["BAND"]), cdiv(W, meta["BLOCK_W"]))  # noqa: E731
    launch(_tv_bwd, grid, grad, r, out, n, H, W, COMPUTE=_compute(r.dtype))
    return out
