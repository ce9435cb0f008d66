"""Depthwise-separable conv: depthwise 3x3 (zero padding 1) + bias, pointwise 1x1 + bias, then an
activation ("none", "relu" or "tanh"); the input is x, or the channel concatenation [x, x2] read
from the two tensors (never built). float32/float16/bfloat16 I/O computed in float32 (float16 may
run float16 products of weights in two parts, ~22 bits: below), float64 in float64.

Programs own 2-D tiles of pixels of one image (2-D, so that the 3x3 halo re-read stays small),
flattened to BLOCK_H * BLOCK_W lanes. The forward's channels go CHUNK = 8 at a time (the smallest K
of a float32 tl.dot; 16 with Triton 3.6; masked, unless every channel count is whole chunks): a tile
of the depthwise output z, then one tl.dot with CHUNK rows of the pointwise weights; outputs are
masked up to BLOCK_O >= 16. A chunk's nine taps are a loop that the compiler unrolls in some builds
(their loads then in flight together) but not all: Triton 3.9 keeps it rolled in the interior tiles
of the 128-pixel configs for sm_90 in half precision, Triton 3.6 in most builds (TAPS="loop").
Rolled, a tap's multiply-add costs 13-18 SASS instructions (a chunk's loop, all in), unrolled 6-9.
So the 64-pixel config comes twice, the second with the taps unrolled in the source
(TAPS="unrolled") and not pipelined (the pipeliner would stage the unrolled taps through shared
memory). Unrolled, the 128-pixel configs spilled on sm_80 and in float64.
For float16 input the autotune set also has configs that never form z (TAPS="products"; every
float16 launch takes 16 channels a chunk): the depthwise-then-pointwise is the sum over the nine
taps of the tap's shifted input times dw[:, t] pw, on the tensor cores (_add_tap_products). Their
interior loops for sm_90 (Triton 3.9) run 22-32 SASS instructions per pixel and input channel
channels-last (256- to 64-pixel tiles), 35-51 NCHW, where a depthwise in registers runs 63 at best
(Triton 3.6, 64-pixel tiles, taps unrolled) and ~112 rolled in 128-pixel tiles.
The backward kernels have chunks of their own (_DZ_CHUNK, _PARAMS_CHUNK).
float32 products run on the tensor cores as 3xTF32 (_dot: each operand split exactly into its TF32
high part and the remainder, three TF32 products chained: float32 accuracy, where PyTorch's default
TF32 conv keeps 10 bits; the interpreter tests round as the tensor cores do: tests/tensor_cores.py);
float64 ones on FMAs ("ieee").

Forward: one read of x (and x2) with the tile's halo, one write of y.
Backward: three kernels and a small fourth, each small enough to keep in registers (one kernel
doing it all spilled: Triton keeps every tl.dot operand, and every layout a tile is used in, in
registers). gm =
dL/d(pre-activation) is formed where it is loaded, from the incoming gradient and the forward's
output y (relu' = [y > 0], tanh' = 1 - y^2), so the forward is never recomputed for it:
- dz: dL/dz = gm W into a float32 scratch (N, C, H, W);
- params: z recomputed, the four parameter gradients (gm^T z, gm, gz * x shifted, gz) summed over
  a run of tiles, per pixel lane, then over the lanes once into the program's own row;
- input: the transposed depthwise of dL/dz, written to dL/dx and dL/dx2;
- finish: the params rows summed in a fixed order in float64 (no atomics, the same result every
  run), each sum stored in its gradient in the parameters' dtype (one launch, where a sum and the
  copies into four gradients took six).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from sgllie.ops import _backends, reference
from sgllie.ops.reference import require_output

from . import release
from ._runtime import autotune, cdiv, launch, next_power_of_2, smallest_dot_k


def _configs(*shapes, stages=3, maxnreg=None, **constexprs):
    return [triton.Config({"BLOCK_H": bh, "BLOCK_W": bw} | constexprs, num_warps=nw, num_stages=stages,
                          maxnreg=maxnreg) for bh, bw, nw in shapes]


# (BLOCK_H, BLOCK_W, num_warps), each list checked to build with no spills for sm_80 and sm_90 in
# every dtype. An "ieee" tl.dot (float64) holds its operands' whole K in registers: the pixels are the M
# of the forward's products but the K of the params kernel's gm^T z, whose tiles stay small.
# Register caps only where needed: with one ptxas takes nearly all it is allowed (e.g. 158 of 168
# where it otherwise settles at 128: three blocks per SM instead of four).
_FWD_CONFIGS = _configs((16, 16, 8), (8, 16, 4), TAPS="loop", TAP_GROUP=1)  # (TAP_GROUP: the products')
# and 64-pixel tiles for small images (the model's 1/12-scale layers: 57600 pixels at 4K), where
# 128-pixel ones give an SM 14 warps, each with a long chain of loads and products: half the pixels
# a warp, 72 registers, 28 warps (predicted to hide latency better; the GPU's autotuner decides).
# Not for float64, where ptxas spills them. Twice: with the taps' loop as the compiler leaves it, and
# unrolled in the source, 1 stage (Triton 3.6 leaves the loop rolled in half precision: unrolled, half
# the instructions and twice the registers; capped at 192, where ptxas otherwise settles at 64 and
# spills in the masked layers' sm_80 builds).
_FWD_SMALL_IMAGE_CONFIGS = (_configs((4, 16, 4), TAPS="loop", TAP_GROUP=1)
                            + _configs((4, 16, 4), stages=1, maxnreg=192, TAPS="unrolled", TAP_GROUP=1))
# float16 also: the taps as tensor-core products (TAPS="products", see _add_tap_products), 1 stage (3
# stages: +20% instructions for what the products read once); capped at 240 registers, where ptxas
# otherwise settles at 128 and spills in the masked layers' sm_80 builds. float16 launches take
# 16 channels a chunk in every config (the products' K). TAP_GROUP: taps per product channels-last
# (counted, sm_90: the 64-pixel tiles' loop 330 -> 291 instructions with 4, 246 with 8, which spills
# on sm_80; the larger tiles' loops grew with 2 or 4).
def _float16_products(cap: int) -> list[triton.Config]:
    """The tap-product configs, the 8x16 and 16x16 tiles' registers capped at ``cap``."""
    return (_configs((8, 16, 4), stages=1, maxnreg=cap, TAPS="products", TAP_GROUP=1)
            + _configs((4, 16, 4), stages=1, maxnreg=240, TAPS="products", TAP_GROUP=4)
            + _configs((16, 16, 8), stages=1, maxnreg=cap, TAPS="products", TAP_GROUP=1))


# float16 channels-last in and out with every channel count whole chunks (the model's inner 32- and
# 64-channel layers at inference) has a kernel of its own, whose 8x16 and 16x16 tap products are
# capped at 128 registers where ptxas takes 132-136: no spills and the same loops for sm_90 and
# sm_80 (NCHW or masked builds spill at 128). An SM then holds four programs of 4 warps where it held
# three, two of 8 where it held one, and a 4K frame's layer at 1/12 scale (180 x 320: 460 8x16
# tiles, 240 16x16) runs in one wave of programs, not two (counted, not timed).
_FLOAT16_LAST_WHOLE = "float16, channels-last, whole chunks"
# dz: its loop prefetches only pointwise weights: 2 stages.
_DZ_CONFIGS = _configs((4, 16, 8), (8, 16, 4), (16, 16, 8), stages=2)
# params: 1 stage: pipelined, its masked gathers went through shared memory (+15% instructions)
_PARAMS_CONFIGS = _configs((4, 4, 4), (2, 8, 4), stages=1)
# ... and with channel masks (the 3-channel layers), where half-precision I/O otherwise settles at
# 128 registers and spills
_PARAMS_MASKED_CONFIGS = _configs((4, 4, 4), (2, 8, 4), stages=1, maxnreg=168)
_PLANE_CONFIGS = _configs((16, 64, 4), (8, 64, 2), (32, 64, 8))
# the tile kernels are re-tuned per image width and channel counts (the height only adds tiles)
_TUNE_KEY = ["W", "C1", "C2", "O"]
# channels per tl.dot: the forward's (Triton 3.6 compiles no float32 tl.dot with K < 16); and its
# float16 products' (no Triton compiles a float16 tl.dot with K < 16 for NVIDIA GPUs)
_CHUNK = smallest_dot_k()
_PRODUCTS_CHUNK = 16
# dz's: a tile's gm is the first operand of every chunk's product, reloaded from shared memory for
# each: 44% fewer instructions with all 32 channels in one than with 8
_DZ_CHUNK = 32
# params': a tile's gm is loaded, split into TF32 parts and converted for the dot once per chunk; 16
# channels need 23% fewer instructions per pixel than 8 at four blocks per SM (32: 30% fewer, two)
_PARAMS_CHUNK = 16
# Triton < 3.5 compiles no float64 tl.dot: float64 layers run the reference (plain PyTorch) there, so
# that double-precision checks such as gradcheck still run
_FLOAT64_DOT = release(triton.__version__) >= (3, 5)
# params programs over all images: enough to fill the GPU, few enough that their rows of partial
# sums stay small at any image size; and runs of _MIN_RUN tiles at least, neighbours sharing halos
_PARTIAL_PROGRAMS = 1024
_MIN_RUN = 4


@triton.jit
def _tf32_high(x):
    """float32 x with the 13 low mantissa bits that TF32 drops cleared: x - _tf32_high(x) is exact."""
    return (x.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)


@triton.jit
def _dot(a, b, acc, COMPUTE: tl.constexpr):
    """acc + a b; float32 to float32 accuracy on the tensor cores (3xTF32): a = a_hi + a_lo exactly
    (likewise b), and a_lo b_hi, a_hi b_lo, a_hi b_hi chained onto acc as TF32 products (a_lo b_lo,
    ~2^-20 relative, left out). Triton's own "tf32x3" rounds the high parts to nearest (5
    instructions an element, not 1) and sums the small products apart, zeroing NaN there, before
    adding them (3 more per accumulator element and product): with it the forward's loop took 655
    SASS instructions on sm_90, with this 535 (dz 407 -> 330, params 369 -> 304). What that bought,
    an Inf operand's product staying Inf rather than becoming NaN, needs an input or a depthwise
    sum that overflowed float32. float64: plain FMAs ("ieee")."""
    if COMPUTE == tl.float64:
        acc = tl.dot(a, b, acc, input_precision="ieee", out_dtype=COMPUTE)
    else:
        a_hi = _tf32_high(a)
        b_hi = _tf32_high(b)
        acc = tl.dot(a - a_hi, b_hi, acc, input_precision="tf32", out_dtype=COMPUTE)
        acc = tl.dot(a_hi, b - b_hi, acc, input_precision="tf32", out_dtype=COMPUTE)
        acc = tl.dot(a_hi, b_hi, acc, input_precision="tf32", out_dtype=COMPUTE)
    return acc


_INTERPRETED = tl.constexpr(_backends.triton_interpreting())  # read at import, as Triton reads it


@triton.jit
def _pinned(x, COMPUTE: tl.constexpr):
    """x, kept in the layout it is computed in: a copy that Triton may not duplicate. Where an
    elementwise chain of loads feeds a small (mma v2) tl.dot, Triton otherwise recomputes the whole
    chain, loads included, in the dot operand's layout (replicated across warps: 4x the work)."""
    if not _INTERPRETED:  # (no inline assembly there)
        if COMPUTE == tl.float64:
            x = tl.inline_asm_elementwise("mov.b64 $0, $1;", "=l,l", [x], dtype=tl.float64, is_pure=False, pack=1)
        else:
            x = tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=False, pack=1)
    return x


@triton.jit
def _interior(r0, c0, H, W, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Whether the tile at (r0, c0) and its 3x3 halo lie inside the image: no tap needs a mask."""
    return (r0 > 0) & (r0 + BLOCK_H < H) & (c0 > 0) & (c0 + BLOCK_W < W)


@triton.jit
def _tile(tile, H, W, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Rows and columns (1-D, BLOCK_H * BLOCK_W) of the pixels of tile number ``tile``, and whether
    it is _interior."""
    tiles_w = tl.cdiv(W, BLOCK_W)
    r0, c0 = (tile // tiles_w) * BLOCK_H, (tile % tiles_w) * BLOCK_W
    p = tl.arange(0, BLOCK_H * BLOCK_W)
    return r0 + p // BLOCK_W, c0 + p % BLOCK_W, _interior(r0, c0, H, W, BLOCK_H, BLOCK_W)


@triton.jit
def _channels(c0, C, CHUNK: tl.constexpr, WHOLE: tl.constexpr):
    """Channel numbers [c0, c0 + CHUNK) and their mask (1-D). WHOLE: C is a multiple of CHUNK, and the
    mask a constant true that the compiler folds away, with a compare per element of every tile."""
    ch = c0 + tl.arange(0, CHUNK)
    if WHOLE:
        return ch, tl.full([CHUNK], 1, tl.int1)
    return ch, ch < C


@triton.jit
def _image_start(ptr, n, C, H, W):
    """Image n's first element in a channels-last (N, C, H, W) tensor."""
    return ptr + n.to(tl.int64) * H * W * C


@triton.jit
def _chunk(ptr, n, C, c0, H, W, CHUNK: tl.constexpr, WHOLE: tl.constexpr, LAST: tl.constexpr = False):
    """Channels [c0, c0 + CHUNK) of image n of an (N, C, H, W) tensor, laid out NCHW or (LAST)
    channels-last: pointers to each channel's first pixel, channel numbers, their mask (1-D), and the
    step from one pixel to the next (1, or C channels-last)."""
    ch, cmask = _channels(c0, C, CHUNK, WHOLE)
    if LAST:
        return _image_start(ptr, n, C, H, W) + ch, ch, cmask, C
    return ptr + (n * C + ch).to(tl.int64) * H * W, ch, cmask, 1


@triton.jit
def _outputs(n, O, oo, omask, rows, cols, H, W, LAST: tl.constexpr = False):
    """Offsets and mask of a tile's outputs in an (N, O, H, W) tensor, NCHW or (LAST) channels-last:
    [pixels, outputs]."""
    mask = ((rows < H) & (cols < W))[:, None] & omask[None, :]
    if LAST:
        return (n.to(tl.int64) * H * W * O + (rows * W + cols) * O)[:, None] + oo[None, :], mask
    return ((n * O + oo).to(tl.int64) * H * W)[None, :] + (rows * W + cols)[:, None], mask


# The helpers below take channel-indexed tensors (planes, ch, cmask) along one axis and pixel-indexed
# ones (rows, cols) along the other: [pixels, channels] or [channels, pixels], whichever the caller's
# tl.dot wants, so that no tile is ever transposed in registers.
@triton.jit
def _shifted(at, cmask, rows, cols, dy, dx, H, W, EDGE: tl.constexpr, COMPUTE: tl.constexpr, step=1):
    """x[c, rows + dy, cols + dx] for pointers ``at`` to x[c, rows, cols], zero outside the image (the
    padding), which only EDGE tiles reach: elsewhere no mask but the channels' (None: no channels;
    none either for whole chunks). The pointers move by a row (a scalar) and a column (an offset in
    the load instruction); ``step``: elements from one pixel to the next."""
    if EDGE:
        r, c = rows + dy, cols + dx
        cmask = (r >= 0 if cmask is None else cmask & (r >= 0)) & (r < H) & (c >= 0) & (c < W)
    if cmask is None:
        x = tl.load(at + dy * W * step + dx * step)
    else:
        x = tl.load(at + dy * W * step + dx * step, mask=cmask, other=0.0)
    return x.to(COMPUTE)


@triton.jit
def _add_tap(z, t, at, step, taps, cmask, rows, cols, H, W, EDGE: tl.constexpr, COMPUTE: tl.constexpr):
    """z + tap t (0..8, row-major) of the 3x3 depthwise; ``taps``: pointers to the channels' weights."""
    w = tl.load(taps + t, mask=cmask, other=0.0).to(COMPUTE)
    return z + w * _shifted(at, cmask, rows, cols, t // 3 - 1, t % 3 - 1, H, W, EDGE, COMPUTE, step)


@triton.jit
def _depthwise(planes, step, taps, biases, cmask, rows, cols, H, W, EDGE: tl.constexpr, COMPUTE: tl.constexpr,
               TAPS: tl.constexpr):
    """z = bias + 3x3 depthwise (zero in masked channels); ``taps`` and ``biases``: pointers to the
    channels' weights."""
    z = tl.load(biases, mask=cmask, other=0.0).to(COMPUTE) + tl.zeros_like(rows + cols).to(COMPUTE)
    at = planes + (rows * W + cols) * step
    if TAPS == "unrolled":
        for t in tl.static_range(9):
            z = _add_tap(z, t, at, step, taps, cmask, rows, cols, H, W, EDGE, COMPUTE)
    else:
        for t in range(9):  # unrolled by the compiler in some builds (see the module's docstring)
            z = _add_tap(z, t, at, step, taps, cmask, rows, cols, H, W, EDGE, COMPUTE)
    return z


@triton.jit
def _weights(pww_ptr, C, cw, cmask, oo, omask, COMPUTE: tl.constexpr):
    """pw_weight[o, cw], cw the channels' numbers in [x, x2]: [outputs, channels] or transposed, as
    the index tensors are laid out."""
    return tl.load(pww_ptr + oo * C + cw, mask=omask & cmask, other=0.0).to(COMPUTE)


@triton.jit
def _chunk_weights(dww_ptr, c0, offsets):
    """Pointers to the depthwise weights of the chunk starting at channel c0, ``offsets`` (channel in
    the chunk * 9 + tap) from its start: the start a scalar, the offsets the same for every chunk, so
    they stay in registers (an address: 2 SASS instructions, where (c0 + c) * 9 + t took 5)."""
    return dww_ptr + c0 * 9 + offsets


@triton.jit
def _add_split_product(acc, x, d, w, COMPUTE: tl.constexpr):
    """acc + x (d w), the weights d w [k, outputs] (float16 d and w: their exact product) as two float16
    parts, high and the remainder (~22 bits in all), accumulated in float32."""
    if (d.dtype == x.dtype) & (w.dtype == x.dtype):
        high = d * w  # rounded once, as the float32 product (exact) rounds: paired float16 instructions
        low = tl.fma(d, w, -high)  # the exact remainder, rounded once
    else:
        tap = d.to(COMPUTE) * w.to(COMPUTE)
        high = tap.to(x.dtype)
        low = (tap - high.to(COMPUTE)).to(x.dtype)
    acc = tl.dot(x, low, acc)
    return tl.dot(x, high, acc)


@triton.jit
def _add_tap_group(acc, chunk_ptr, step, pixels, rows, cols, H, W, t0, c0, Ci, first, C, dww_ptr, pww_ptr, oo,
                   omask, EDGE: tl.constexpr, COMPUTE: tl.constexpr, CHUNK: tl.constexpr, WHOLE: tl.constexpr,
                   GROUP: tl.constexpr):
    """acc + taps t0.. t0 + GROUP - 1 of a chunk of a channels-last input as one product over their
    (tap, channel) pairs k: the input shifted by each pair's tap [pixels, k] times dw[c, t] pw[:, c]
    [k, outputs]. chunk_ptr: the chunk's first channel of the image's first pixel."""
    k = tl.arange(0, GROUP * CHUNK)
    kc, kt = k % CHUNK, t0 + k // CHUNK
    dy, dx = kt // 3 - 1, kt % 3 - 1
    at = chunk_ptr + pixels[:, None] + (kc + (dy * W + dx) * step)[None, :]
    if WHOLE:
        cmask = tl.full(kc.shape, 1, tl.int1)  # a constant the compiler folds away
    else:
        cmask = c0 + kc < Ci
    if EDGE:
        r, c = rows[:, None] + dy[None, :], cols[:, None] + dx[None, :]
        x = tl.load(at, mask=cmask[None, :] & (r >= 0) & (r < H) & (c >= 0) & (c < W), other=0.0)
    elif WHOLE:
        x = tl.load(at)
    else:
        x = tl.load(at, mask=cmask[None, :], other=0.0)
    d = tl.load(_chunk_weights(dww_ptr, c0, kc * 9 + kt), mask=cmask, other=0.0)
    w = tl.load(pww_ptr + oo[None, :] * C + (first + c0 + kc)[:, None], mask=cmask[:, None] & omask[None, :],
                other=0.0)
    return _add_split_product(acc, x, d[:, None], w, COMPUTE)


@triton.jit
def _add_tap_products(acc, bias, ptr, n, Ci, c0, first, C, rows, cols, H, W, dww_ptr, dwb_ptr, pww_ptr, oo, omask,
                      EDGE: tl.constexpr, COMPUTE: tl.constexpr, CHUNK: tl.constexpr, WHOLE: tl.constexpr,
                      TAP_GROUP: tl.constexpr, LAST: tl.constexpr):
    """acc + the pointwise conv of the depthwise conv of channels [c0, c0 + CHUNK) of one input, as
    tensor-core products of the shifted input, as read (float16: exact operands), and the taps'
    weights dw[:, t] pw (_add_split_product). z is never formed. One float16 part of a weight alone
    kept 11 bits, as PyTorch's float16 conv keeps of z: enough for the output, not for its ReLU
    mask, which then disagreed with the exact one on ~1% of pixels.
    Channels-last, where TAP_GROUP > 1, taps 0-7 go TAP_GROUP at a time (_add_tap_group; a tl.dot's
    K is a power of 2): a product per tap costs a barrier and a wait for the tensor cores per tap and
    part. The others go one at a time (NCHW all nine: there a group's per-channel gathers spilled).
    Returns acc, and ``bias`` [channels, outputs] plus the chunk's depthwise bias through the pointwise
    (dwb pw), for the caller to sum over the channels and add to acc once (not a sum across threads
    per chunk)."""
    planes, ch, cmask, step = _chunk(ptr, n, Ci, c0, H, W, CHUNK, WHOLE, LAST)
    w = _weights(pww_ptr, C, first + ch[:, None], cmask[:, None], oo[None, :], omask[None, :],
                 pww_ptr.dtype.element_ty)
    pixels = (rows * W + cols) * step
    GROUPED: tl.constexpr = 8 * LAST * (TAP_GROUP > 1)  # taps 0..GROUPED - 1 in groups
    for t0 in tl.static_range(0, GROUPED, TAP_GROUP):
        acc = _add_tap_group(acc, _image_start(ptr, n, Ci, H, W) + c0, step, pixels, rows, cols, H, W, t0, c0, Ci,
                             first, C, dww_ptr, pww_ptr, oo, omask, EDGE, COMPUTE, CHUNK, WHOLE, TAP_GROUP)
    at = planes[None, :] + pixels[:, None]
    for t in tl.static_range(GROUPED, 9):
        x = _shifted(at, cmask[None, :], rows[:, None], cols[:, None], t // 3 - 1, t % 3 - 1, H, W, EDGE,
                     planes.dtype.element_ty, step)
        d = tl.load(_chunk_weights(dww_ptr, c0, tl.arange(0, CHUNK) * 9 + t), mask=cmask, other=0.0)
        acc = _add_split_product(acc, x, d[:, None], w, COMPUTE)
    dwb = tl.load(dwb_ptr + ch, mask=cmask, other=0.0).to(COMPUTE)
    return acc, bias + dwb[:, None] * w.to(COMPUTE)


@triton.jit
def _add_pointwise(acc, bias, ptr, n, Ci, first, C, rows, cols, H, W, dww_ptr, dwb_ptr, pww_ptr, oo, omask,
                   EDGE: tl.constexpr, COMPUTE: tl.constexpr, CHUNK: tl.constexpr, WHOLE: tl.constexpr,
                   TAPS: tl.constexpr, TAP_GROUP: tl.constexpr, LAST: tl.constexpr):
    """acc + the pointwise conv of one input's z, [pixels, outputs], its Ci channels channels first..
    of [x, x2]; and bias [channels, outputs], to which the tap products add their depthwise bias (for
    the caller to sum and add to acc once)."""
    for c0 in range(0, Ci, CHUNK):
        if TAPS == "products":
            acc, bias = _add_tap_products(acc, bias, ptr, n, Ci, c0, first, C, rows, cols, H, W, dww_ptr + first * 9,
                                          dwb_ptr + first, pww_ptr, oo, omask, EDGE, COMPUTE, CHUNK, WHOLE,
                                          TAP_GROUP, LAST)
        else:
            planes, ch, cmask, step = _chunk(ptr, n, Ci, c0, H, W, CHUNK, WHOLE, LAST)
            k = tl.arange(0, CHUNK)[None, :]
            taps, biases = _chunk_weights(dww_ptr, first + c0, k * 9), dwb_ptr + (first + c0) + k
            z = _depthwise(planes[None, :], step, taps, biases, cmask[None, :], rows[:, None], cols[:, None], H, W,
                           EDGE, COMPUTE, TAPS)
            w = _weights(pww_ptr, C, first + ch[:, None], cmask[:, None], oo[None, :], omask[None, :], COMPUTE)
            acc = _dot(z, w, acc, COMPUTE)
    return acc, bias


@triton.jit
def _pre_activation(x_ptr, x2_ptr, n, C1, C2, rows, cols, H, W, dww_ptr, dwb_ptr, pww_ptr, pwb_ptr, oo, omask,
                    EDGE: tl.constexpr, COMPUTE: tl.constexpr, CHUNK: tl.constexpr, WHOLE: tl.constexpr,
                    BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, TAPS: tl.constexpr, TAP_GROUP: tl.constexpr,
                    LAST: tl.constexpr):
    """The conv's output before its activation, [pixels, outputs]."""
    pre = tl.load(pwb_ptr + oo, mask=omask, other=0.0).to(COMPUTE)[None, :] + tl.zeros([BLOCK_P, BLOCK_O], COMPUTE)
    bias = tl.zeros([CHUNK, BLOCK_O], COMPUTE)
    pre, bias = _add_pointwise(pre, bias, x_ptr, n, C1, 0, C1 + C2, rows, cols, H, W, dww_ptr, dwb_ptr, pww_ptr,
                               oo, omask, EDGE, COMPUTE, CHUNK, WHOLE, TAPS, TAP_GROUP, LAST)
    pre, bias = _add_pointwise(pre, bias, x2_ptr, n, C2, C1, C1 + C2, rows, cols, H, W, dww_ptr, dwb_ptr, pww_ptr,
                               oo, omask, EDGE, COMPUTE, CHUNK, WHOLE, TAPS, TAP_GROUP, LAST)
    if TAPS == "products":
        pre += tl.sum(bias, axis=0)[None, :]
    return pre


@triton.jit
def _tanh(a):
    """tanh to a few ulps (libdevice's has no interpreter version): an odd Taylor polynomial near 0,
    where (1 - t) / (1 + t), t = exp(-2|a|), would cancel; that quotient elsewhere."""
    s = a * a
    near = a + a * s * (-1 / 3 + s * (2 / 15 + s * (-17 / 315 + s * (62 / 2835 + s * (-1382 / 155925 + s * (
        21844 / 6081075))))))  # next term below 4e-16 relative at |a| = 1/8
    t = tl.exp(-2 * tl.abs(a))
    far = (1 - t) / (1 + t)
    return tl.where(tl.abs(a) < 0.125, near, tl.where(a < 0, -far, far))


@triton.jit
def _dsconv_fwd(x_ptr, x2_ptr, dww_ptr, dwb_ptr, pww_ptr, pwb_ptr, y_ptr, H, W, C1, C2, O,
                ACTIVATION: tl.constexpr, COMPUTE: tl.constexpr, CHUNK: tl.constexpr, WHOLE: tl.constexpr,
                BLOCK_O: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, TAPS: tl.constexpr,
                TAP_GROUP: tl.constexpr, X_LAST: tl.constexpr, Y_LAST: tl.constexpr):
    """y = activation(pointwise(depthwise([x, x2]))); x and x2 NCHW or (X_LAST) channels-last, y
    likewise (Y_LAST)."""
    n = tl.program_id(1)
    rows, cols, interior = _tile(tl.program_id(0), H, W, BLOCK_H, BLOCK_W)
    oo, omask = _channels(0, O, BLOCK_O, WHOLE)
    if interior:
        y = _pre_activation(x_ptr, x2_ptr, n, C1, C2, rows, cols, H, W, dww_ptr, dwb_ptr, pww_ptr, pwb_ptr, oo,
                            omask, False, COMPUTE, CHUNK, WHOLE, BLOCK_H * BLOCK_W, BLOCK_O, TAPS, TAP_GROUP, X_LAST)
    else:
        y = _pre_activation(x_ptr, x2_ptr, n, C1, C2, rows, cols, H, W, dww_ptr, dwb_ptr, pww_ptr, pwb_ptr, oo,
                            omask, True, COMPUTE, CHUNK, WHOLE, BLOCK_H * BLOCK_W, BLOCK_O, TAPS, TAP_GROUP, X_LAST)
    if ACTIVATION == "relu":
        y = tl.where(y < 0, 0.0, y)  # NaN stays NaN, as F.relu
    elif ACTIVATION == "tanh":
        y = _tanh(y)
    offs, mask = _outputs(n, O, oo, omask, rows, cols, H, W, Y_LAST)
    tl.store(y_ptr + offs, y, mask=mask)


# per input dtype (others: None), and float16's channels-last whole-chunk launches
_FWD_KERNELS = {key: autotune(configs, key=_TUNE_KEY)(_dsconv_fwd) for key, configs in (
    (None, _FWD_CONFIGS + _FWD_SMALL_IMAGE_CONFIGS), (torch.float64, _FWD_CONFIGS),
    (torch.float16, _FWD_CONFIGS + _FWD_SMALL_IMAGE_CONFIGS + _float16_products(240)),
    (_FLOAT16_LAST_WHOLE, _FWD_CONFIGS + _FWD_SMALL_IMAGE_CONFIGS + _float16_products(128)))}


@triton.jit
def _grad_pre(g_ptr, y_ptr, offs, mask, ACTIVATION: tl.constexpr, COMPUTE: tl.constexpr):
    """gm = dL/d(pre-activation) at ``offs``: the incoming gradient through the activation, whose
    derivative comes from the forward's output y."""
    if ACTIVATION == "relu":  # the gradient read only where the output is positive
        return tl.load(g_ptr + offs, mask=mask & (tl.load(y_ptr + offs, mask=mask, other=0.0) > 0),
                       other=0.0).to(COMPUTE)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    if ACTIVATION == "tanh":
        y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
        g = g * (1 - y * y)
    return g


@triton.jit
def _run(BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, H, W):
    """This program's run of consecutive tiles of its image, [first, last): neighbours share their
    halo. The host launches no more programs than tiles, so each run holds one at least."""
    tiles = tl.cdiv(H, BLOCK_H) * tl.cdiv(W, BLOCK_W)
    programs, p = tl.num_programs(0), tl.program_id(0)
    per, extra = tiles // programs, tiles % programs  # the first `extra` runs hold one tile more
    first = p * per + tl.minimum(p, extra)
    return first, first + per + (p < extra).to(tl.int32)


@triton.jit
def _dz_input(gm, n, Ci, first, C, oo, omask, rows, cols, H, W, pww_ptr, gz_ptr, COMPUTE: tl.constexpr,
              CHUNK: tl.constexpr, WHOLE: tl.constexpr):
    """One input's share of a dz tile, from the tile's gm: its Ci channels are channels first.. of [x, x2]."""
    for c0 in range(0, Ci, CHUNK):
        ch, cmask = _channels(c0, Ci, CHUNK, WHOLE)
        cw = first + ch
        w = _weights(pww_ptr, C, cw[None, :], cmask[None, :], oo[:, None], omask[:, None], COMPUTE)
        gz = _dot(gm, w, tl.zeros([gm.shape[0], w.shape[1]], COMPUTE), COMPUTE)
        offs, mask = _outputs(n, C, cw, cmask, rows, cols, H, W)
        tl.store(gz_ptr + offs, gz, mask=mask)


@autotune(_DZ_CONFIGS, key=_TUNE_KEY)
@triton.jit
def _dsconv_bwd_dz(g_ptr, y_ptr, pww_ptr, gz_ptr, H, W, C1, C2, O, ACTIVATION: tl.constexpr,
                   COMPUTE: tl.constexpr, CHUNK: tl.constexpr, WHOLE: tl.constexpr, BLOCK_O: tl.constexpr,
                   BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """dL/dz = gm W: the forward's pointwise conv transposed; gm read once per tile, [pixels, outputs]."""
    n = tl.program_id(1)
    rows, cols, _ = _tile(tl.program_id(0), H, W, BLOCK_H, BLOCK_W)
    oo, omask = _channels(0, O, BLOCK_O, WHOLE)
    offs, mask = _outputs(n, O, oo, omask, rows, cols, H, W)
    gm = _grad_pre(g_ptr, y_ptr, offs, mask, ACTIVATION, COMPUTE)
    _dz_input(gm, n, C1, 0, C1 + C2, oo, omask, rows, cols, H, W, pww_ptr, gz_ptr, COMPUTE, CHUNK, WHOLE)
    _dz_input(gm, n, C2, C1, C1 + C2, oo, omask, rows, cols, H, W, pww_ptr, gz_ptr, COMPUTE, CHUNK, WHOLE)


@triton.jit
def _taps_and_sums(at, gz, sums, cw, cmask, rows, cols, H, W, dww_ptr, dwb_ptr, EDGE: tl.constexpr,
                   COMPUTE: tl.constexpr):
    """z of a params tile ([channels, pixels], ``at`` pointing at its x), and ``sums`` plus gz times
    each tap's x, then plus gz."""
    # the weights reloaded per tile (L1 hits): held across the run they cost 30 registers
    z = tl.load(dwb_ptr + cw, mask=cmask, other=0.0).to(COMPUTE)[:, None] + tl.zeros_like(gz)
    for t in tl.static_range(9):
        x = _shifted(at, cmask[:, None], rows[None, :], cols[None, :], t // 3 - 1, t % 3 - 1, H, W, EDGE, COMPUTE)
        z += tl.load(dww_ptr + cw * 9 + t, mask=cmask, other=0.0).to(COMPUTE)[:, None] * x
        sums = sums[:t] + (sums[t] + gz * x,) + sums[t + 1:]
    return z, sums[:9] + (sums[9] + gz,)


@triton.jit
def _params_input(ptr, g_ptr, y_ptr, n, Ci, first, C, O, H, W, dww_ptr, dwb_ptr, gz_ptr, part, tile0, tile1, oo,
                  omask, ACTIVATION: tl.constexpr, COMPUTE: tl.constexpr, CHUNK: tl.constexpr, WHOLE: tl.constexpr,
                  BLOCK_O: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """One input's share of the program's row of partial sums, its channels CHUNK at a time over the
    whole run of tiles: every product is summed per pixel lane and reduced over the lanes once, at
    the run's end (a reduction per tile would cost more than the products). dL/d(pointwise weights)
    as gm^T z: [outputs, channels], as the row stores it."""
    for c0 in range(0, Ci, CHUNK):
        planes, ch, cmask, _ = _chunk(ptr, n, Ci, c0, H, W, CHUNK, WHOLE)
        cw = first + ch
        gz_planes = gz_ptr + (n * C + cw).to(tl.int64) * H * W
        # per lane: gz * x shifted by each tap (the depthwise weights'), then gz (the bias's)
        sums = ()
        for t in tl.static_range(10):
            sums = sums + (tl.zeros([CHUNK, BLOCK_H * BLOCK_W], COMPUTE),)
        pw = tl.zeros([BLOCK_O, CHUNK], COMPUTE)
        gm_sum = tl.zeros([BLOCK_O, BLOCK_H * BLOCK_W], COMPUTE)
        for tile in range(tile0, tile1):
            rows, cols, interior = _tile(tile, H, W, BLOCK_H, BLOCK_W)
            pixels = (rows * W + cols)[None, :]
            inside = ((rows < H) & (cols < W))[None, :]
            gz = tl.load(gz_planes[:, None] + pixels, mask=cmask[:, None] & inside, other=0.0)
            at = planes[:, None] + pixels
            if interior:
                z, sums = _taps_and_sums(at, gz, sums, cw, cmask, rows, cols, H, W, dww_ptr, dwb_ptr, False, COMPUTE)
            else:
                z, sums = _taps_and_sums(at, gz, sums, cw, cmask, rows, cols, H, W, dww_ptr, dwb_ptr, True, COMPUTE)
            z = _pinned(z, COMPUTE)
            offs, mask = _outputs(n, O, oo, omask, rows, cols, H, W)
            gmt = _grad_pre(g_ptr, y_ptr, tl.trans(offs), tl.trans(mask), ACTIVATION, COMPUTE)
            pw = _dot(gmt, tl.trans(z), pw, COMPUTE)
            gm_sum += gmt
        tl.store(part + oo[:, None] * C + cw[None, :], pw, mask=omask[:, None] & cmask[None, :])
        for t in tl.static_range(10):
            tl.store(part + O * C + O + t * C + cw, tl.sum(sums[t], 1), mask=cmask)
        if first + c0 == 0:  # the pointwise bias's: gm is the same for every chunk
            tl.store(part + O * C + oo, tl.sum(gm_sum, 1), mask=omask)


@triton.jit
def _dsconv_bwd_params(g_ptr, y_ptr, x_ptr, x2_ptr, dww_ptr, dwb_ptr, gz_ptr, part_ptr, H, W, C1, C2, O,
                       ACTIVATION: tl.constexpr, COMPUTE: tl.constexpr, CHUNK: tl.constexpr, WHOLE: tl.constexpr,
                       BLOCK_O: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """The four parameter gradients summed over a run of tiles, into this program's row."""
    n = tl.program_id(1)
    C = C1 + C2
    part = part_ptr + (n * tl.num_programs(0) + tl.program_id(0)).to(tl.int64) * (O * C + O + 10 * C)
    oo, omask = _channels(0, O, BLOCK_O, WHOLE)
    tile0, tile1 = _run(BLOCK_H, BLOCK_W, H, W)
    _params_input(x_ptr, g_ptr, y_ptr, n, C1, 0, C, O, H, W, dww_ptr, dwb_ptr, gz_ptr, part, tile0, tile1, oo,
                  omask, ACTIVATION, COMPUTE, CHUNK, WHOLE, BLOCK_O, BLOCK_H, BLOCK_W)
    _params_input(x2_ptr, g_ptr, y_ptr, n, C2, C1, C, O, H, W, dww_ptr, dwb_ptr, gz_ptr, part, tile0, tile1, oo,
                  omask, ACTIVATION, COMPUTE, CHUNK, WHOLE, BLOCK_O, BLOCK_H, BLOCK_W)


_PARAMS_KERNELS = {whole: autotune(configs, key=_TUNE_KEY)(_dsconv_bwd_params)
                   for whole, configs in ((True, _PARAMS_CONFIGS), (False, _PARAMS_MASKED_CONFIGS))}
_FINISH_ROWS, _FINISH_COLUMNS = 32, 64  # a _dsconv_bwd_finish program's tile of the partials


@triton.jit
def _dsconv_bwd_finish(part_ptr, rows, gpww_ptr, gpwb_ptr, gdww_ptr, gdwb_ptr, C, O, COMPUTE: tl.constexpr,
                       ROWS: tl.constexpr, COLUMNS: tl.constexpr):
    """The params programs' rows summed in a fixed order (float64), each column stored in its
    gradient, cast to the parameters' dtype (through COMPUTE: no float64 to bfloat16 conversion): a
    row is [pw weight (O x C), pw bias (O), dw taps (9 x C), dw bias (C)]."""
    width = O * C + O + 10 * C
    cols = tl.program_id(0) * COLUMNS + tl.arange(0, COLUMNS)
    inside = cols < width
    acc = tl.zeros([COLUMNS], tl.float64)
    for r0 in range(0, rows, ROWS):
        rr = r0 + tl.arange(0, ROWS)
        tile = tl.load(part_ptr + rr[:, None].to(tl.int64) * width + cols[None, :],
                       mask=(rr[:, None] < rows) & inside[None, :], other=0.0)
        acc += tl.sum(tile.to(tl.float64), axis=0)
    acc = acc.to(COMPUTE)
    tl.store(gpww_ptr + cols, acc, mask=cols < O * C)
    tl.store(gpwb_ptr + cols - O * C, acc, mask=(cols >= O * C) & (cols < O * C + O))
    tap, ch = (cols - O * C - O) // C, (cols - O * C - O) % C
    depthwise = cols >= O * C + O
    tl.store(gdww_ptr + ch * 9 + tap, acc, mask=depthwise & (tap < 9) & inside)
    tl.store(gdwb_ptr + ch, acc, mask=depthwise & (tap == 9) & inside)


@triton.jit
def _transposed_taps(at, rows, cols, H, W, dww_ptr, EDGE: tl.constexpr, COMPUTE: tl.constexpr):
    """sum over taps t of w[t] * dz[row - dy_t, col - dx_t] (the depthwise transposed: taps flipped),
    zero outside the image; ``at`` points at dz[rows, cols]."""
    acc = tl.zeros_like(rows + cols).to(COMPUTE)
    for t in tl.static_range(9):
        x = _shifted(at, None, rows, cols, 1 - t // 3, 1 - t % 3, H, W, EDGE, COMPUTE)
        acc += tl.load(dww_ptr + t).to(COMPUTE) * x
    return acc


@autotune(_PLANE_CONFIGS, key=["W"])
@triton.jit
def _dsconv_bwd_input(gz_ptr, dww_ptr, gx_ptr, gx2_ptr, H, W, C1, C2, COMPUTE: tl.constexpr,
                      BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """dL/dx of one channel plane: the depthwise 3x3 transposed over dL/dz."""
    c, n = tl.program_id(1), tl.program_id(2)
    tiles_w = tl.cdiv(W, BLOCK_W)
    r0, c0 = (tl.program_id(0) // tiles_w) * BLOCK_H, (tl.program_id(0) % tiles_w) * BLOCK_W
    rows, cols = r0 + tl.arange(0, BLOCK_H)[:, None], c0 + tl.arange(0, BLOCK_W)[None, :]
    offs = rows * W + cols
    at = gz_ptr + (n * (C1 + C2) + c).to(tl.int64) * H * W + offs
    if _interior(r0, c0, H, W, BLOCK_H, BLOCK_W):
        acc = _transposed_taps(at, rows, cols, H, W, dww_ptr + c * 9, False, COMPUTE)
    else:
        acc = _transposed_taps(at, rows, cols, H, W, dww_ptr + c * 9, True, COMPUTE)
    mask = (rows < H) & (cols < W)
    if c < C1:
        tl.store(gx_ptr + (n * C1 + c).to(tl.int64) * H * W + offs, acc, mask=mask)
    else:
        tl.store(gx2_ptr + (n * C2 + c - C1).to(tl.int64) * H * W + offs, acc, mask=mask)


def _block(c: int) -> int:
    return max(16, next_power_of_2(c))


def _prepare(x, x2, dw_weight, dw_bias, pw_weight, pw_bias, activation, layout=torch.contiguous_format):
    """Contiguous tensors (x and x2 in ``layout``), x2 (x standing in when absent: never read), C2, O,
    the activation and the compute type (constexpr)."""
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"sgllie.kernels.dsconv2d: float32/float16/bfloat16/float64 tensors, got {x.dtype}")
    activation = activation or "none"
    if activation not in ("none", "relu", "tanh"):
        raise ValueError(f"sgllie.kernels.dsconv2d: activation 'none', 'relu' or 'tanh', got {activation!r}")
    dw_weight, dw_bias, pw_weight, pw_bias = (t.contiguous() for t in (dw_weight, dw_bias, pw_weight, pw_bias))
    x = x.contiguous(memory_format=layout)
    c2 = 0 if x2 is None else x2.shape[1]
    x2 = x if x2 is None else x2.contiguous(memory_format=layout)
    o = pw_weight.shape[0]
    compute = tl.float64 if x.dtype == torch.float64 else tl.float32
    return x, x2, dw_weight, dw_bias, pw_weight, pw_bias, c2, o, activation, compute


def _chunks(c1: int, c2: int, o: int, chunk: int) -> dict:
    """CHUNK, and WHOLE: every channel count whole chunks and the outputs one whole block, so no channel
    masks (the model's 32- and 64-channel layers)."""
    return dict(CHUNK=chunk, WHOLE=c1 % chunk == 0 and c2 % chunk == 0 and o == _block(o))


def forward_kernel(dtype: torch.dtype, last_whole: bool = False) -> triton.runtime.Autotuner:
    """The autotuned forward kernel that inputs of ``dtype`` launch; ``last_whole``: channels-last in
    and out, every channel count whole chunks (float16 has a kernel for those)."""
    if dtype == torch.float16 and last_whole:
        return _FWD_KERNELS[_FLOAT16_LAST_WHOLE]
    return _FWD_KERNELS.get(dtype, _FWD_KERNELS[None])


def forward_chunk(dtype: torch.dtype) -> int:
    """The forward's channels per chunk for inputs of ``dtype``."""
    return _PRODUCTS_CHUNK if dtype == torch.float16 else _CHUNK


def _indexes_channels_last(x, x2, o) -> bool:
    """Whether the forward may lay these tensors out channels-last: not in float64 (a channels-last
    build of its 128-pixel tiles spills on sm_90), and where int32 offsets reach a whole image."""
    n, c1, H, W = x.shape
    return x.dtype != torch.float64 and H * W * max(c1, 0 if x2 is None else x2.shape[1], o) < 2**31


def dsconv2d(x: torch.Tensor, dw_weight: torch.Tensor, dw_bias: torch.Tensor, pw_weight: torch.Tensor,
             pw_bias: torch.Tensor, x2: torch.Tensor | None = None, activation: str = "none",
             memory_format: torch.memory_format = torch.preserve_format) -> torch.Tensor:
    """y laid out as ``memory_format`` says (preserve_format: as x). Channels-last x and x2 are read
    in place: the 3x3 taps of a pixel's channels are then contiguous loads."""
    if x.dtype == torch.float64 and not _FLOAT64_DOT:
        return reference.dsconv2d(x, dw_weight, dw_bias, pw_weight, pw_bias, x2, activation, memory_format)
    x_last = reference.is_channels_last(x)
    memory_format = reference.output_format(x, memory_format)
    y_last = memory_format == torch.channels_last
    if (x_last or y_last) and not _indexes_channels_last(x, x2, pw_weight.shape[0]):
        x_last = y_last = False  # NCHW, and y copied at the end
    x, x2, dw_weight, dw_bias, pw_weight, pw_bias, c2, o, activation, compute = _prepare(
        x, x2, dw_weight, dw_bias, pw_weight, pw_bias, activation,
        torch.channels_last if x_last else torch.contiguous_format)
    n, c1, H, W = x.shape
    y = torch.empty((n, o, H, W), dtype=x.dtype, device=x.device,
                    memory_format=torch.channels_last if y_last else torch.contiguous_format)
    chunks = _chunks(c1, c2, o, forward_chunk(x.dtype))
    kernel = forward_kernel(x.dtype, x_last and y_last and chunks["WHOLE"])
    grid = lambda meta: (cdiv(H, meta["BLOCK_H"]) * cdiv(W, meta["BLOCK_W"]), n)  # noqa: E731
    launch(kernel, grid, x, x2, dw_weight, dw_bias, pw_weight, pw_bias, y, H, W, c1, c2, o, ACTIVATION=activation,
           COMPUTE=compute, BLOCK_O=_block(o), X_LAST=x_last, Y_LAST=y_last, **chunks)
    if y_last != (memory_format == torch.channels_last):  # float64, or too large an image
        y = y.contiguous(memory_format=memory_format)
    return y


def dsconv2d_backward(grad: torch.Tensor, x: torch.Tensor, dw_weight: torch.Tensor, dw_bias: torch.Tensor,
                      pw_weight: torch.Tensor, pw_bias: torch.Tensor, x2: torch.Tensor | None = None,
                      activation: str = "none", out: torch.Tensor | None = None):
    """Returns (grad_x, grad_x2 or None, grad_dw_weight, grad_dw_bias, grad_pw_weight, grad_pw_bias).
    ``out``: the forward's output, needed with an activation."""
    if x.dtype == torch.float64 and not _FLOAT64_DOT:
        return reference.dsconv2d_backward(grad, x, dw_weight, dw_bias, pw_weight, pw_bias, x2, activation, out)
    has_x2 = x2 is not None
    x, x2, dw_weight, dw_bias, pw_weight, pw_bias, c2, o, activation, compute = _prepare(
        x, x2, dw_weight, dw_bias, pw_weight, pw_bias, activation)
    grad = grad.contiguous().to(x.dtype)
    # grad standing in for out without an activation: never read
    out = grad if activation == "none" else require_output(out, activation).contiguous().to(x.dtype)
    n, c1, H, W = x.shape
    c = c1 + c2
    scratch = torch.float64 if x.dtype == torch.float64 else torch.float32
    tiles = lambda meta: cdiv(H, meta["BLOCK_H"]) * cdiv(W, meta["BLOCK_W"])  # noqa: E731
    gz = torch.empty((n, c, H, W), device=x.device, dtype=scratch)
    launch(_dsconv_bwd_dz, lambda meta: (tiles(meta), n), grad, out, pw_weight, gz, H, W, c1, c2, o,
           ACTIVATION=activation, COMPUTE=compute, BLOCK_O=_block(o), **_chunks(c1, c2, o, _DZ_CHUNK))
    chunks = _chunks(c1, c2, o, _PARAMS_CHUNK)
    params = _PARAMS_KERNELS[chunks["WHOLE"]]
    # programs per image: no more runs than the coarsest config has tiles, so that none is empty
    programs = min(cdiv(min(tiles(k.kwargs) for k in params.configs), _MIN_RUN),
                   cdiv(_PARTIAL_PROGRAMS, n))
    part = torch.empty((n * programs, o * c + o + 10 * c), device=x.device, dtype=scratch)
    launch(params, (programs, n), grad, out, x, x2, dw_weight, dw_bias, gz, part, H, W, c1, c2, o,
           ACTIVATION=activation, COMPUTE=compute, BLOCK_O=_block(o), **chunks)
    gx = torch.empty_like(x)
    gx2 = torch.empty_like(x2) if has_x2 else gx  # gx standing in: never written
    launch(_dsconv_bwd_input, lambda meta: (tiles(meta), c, n), gz, dw_weight, gx, gx2, H, W, c1, c2,
           COMPUTE=compute)
    g_dw_weight, g_dw_bias, g_pw_weight, g_pw_bias = (torch.empty_like(t) for t in (dw_weight, dw_bias, pw_weight,
                                                                                   pw_bias))
    launch(_dsconv_bwd_finish, (cdiv(part.shape[1], _FINISH_COLUMNS),), part, part.shape[0], g_pw_weight,
           g_pw_bias, g_dw_weight, g_dw_bias, c, o, COMPUTE=compute, ROWS=_FINISH_ROWS, COLUMNS=_FINISH_COLUMNS,
           num_warps=8)  # 4 warps: ptxas settles at 40 registers and spills in float64 (sm_90)
    return gx, gx2 if has_x2 else None, g_dw_weight, g_dw_bias, g_pw_weight, g_pw_bias
