"""The Triton kernels beyond tests/test_ops.py: half precision, every autotune config, inputs smaller
than a tile, run-to-run determinism, and (interpreter only) global-memory bytes against each op's
floor and kernel launches per inference and training step.

Runs on CUDA, or on CPU tensors under the interpreter, as its own invocation:
    TRITON_INTERPRET=1 python -m pytest -m triton
"""
from __future__ import annotations

import os

import pytest
import torch
import triton
import triton.language as tl

import sgllie
import sgllie.ops as ops
from sgllie.ops import reference
from conftest import triton_device
from op_cases import HALF, OPS, Truth, assert_close, outputs_and_grads, rand, truth
from op_cases import cases as _all_cases
from sgllie.kernels.dsconv2d import _dot

pytestmark = pytest.mark.triton


def _cases(device, dtype, small=False):
    return _all_cases("triton", device, dtype, small)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("op", OPS)
def test_half_precision_io(op, dtype):
    """float16/bfloat16 in and out, computed in float32: against the reference in float32 on the
    same (rounded) inputs, within one rounding of the output dtype."""
    fused, ref, inputs = _cases(triton_device(), dtype)[op]
    assert_close(outputs_and_grads(fused, inputs), truth(ref, inputs), dtype, op)


def _config_indices(dtype: torch.dtype = torch.float32) -> range:
    """Indices for use_config that reach every config of every autotuned kernel that launches in
    ``dtype`` may run (modulo its count): dsconv2d's forward has a config set per dtype."""
    from sgllie.kernels._runtime import AUTOTUNED
    from sgllie.kernels.dsconv2d import _FWD_KERNELS, forward_kernel
    forward = forward_kernel(dtype)
    others = [kernel for kernel in _FWD_KERNELS.values() if kernel is not forward]
    return range(max(len(kernel.configs) for kernel in AUTOTUNED if all(kernel is not o for o in others)))


@pytest.mark.parametrize("op", OPS)
def test_every_autotune_config(op):
    """Force each config in turn: a GPU's autotuner may pick any, and only times the others."""
    from sgllie.kernels._runtime import use_config
    fused, ref, inputs = _cases(triton_device(), torch.float32)[op]
    want = truth(ref, inputs)
    for k in _config_indices():
        with use_config(k):
            assert_close(outputs_and_grads(fused, inputs), want, torch.float32, f"{op} config {k}")


@pytest.mark.parametrize("op", OPS)
def test_smaller_than_a_tile(op):
    fused, ref, inputs = _cases(triton_device(), torch.float32, small=True)[op]
    assert_close(outputs_and_grads(fused, inputs), truth(ref, inputs), torch.float32, op)


@pytest.mark.parametrize("op", OPS)
def test_deterministic(op):
    """Two runs, bit for bit: reductions are two-stage in a fixed order, no float atomics."""
    fused, _, inputs = _cases(triton_device(), torch.float32)[op]
    first, second = outputs_and_grads(fused, inputs), outputs_and_grads(fused, inputs)
    for a, b in zip(first, second):
        assert torch.equal(a, b), op


def test_zero_reference_loss_partials_in_blocks(monkeypatch):
    """The forward's finish sums the pool's partials in [images, tiles] blocks: blocks smaller than
    the batch and the tiles per image (one of each partly filled), so that every loop runs more
    than once: 3 images of 3 x 3 pool tiles (64 x 16 pixel tiles, config 0), blocks of 2 x 2."""
    from sgllie.kernels import losses
    from sgllie.kernels._runtime import use_config
    monkeypatch.setattr(losses, "_FINISH_IMAGES", 2)
    monkeypatch.setattr(losses, "_FINISH_TILES", 2)
    device = triton_device()
    inputs = [rand(device, torch.float32, 3, 3, 40, 150), rand(device, torch.float32, 3, 3, 40, 150) * 0.3]
    with use_config(0):
        got = outputs_and_grads(lambda a, b: ops.zero_reference_loss(a, b, backend="triton"), inputs)
    assert_close(got, truth(reference.zero_reference_loss, inputs), torch.float32, "zero_reference_loss")


def _dsconv2d_skip_case(device, dtype, n, h, w, c1=16, c2=16, o=32):
    """x and x2 of c1 and c2 channels (by default 16 each: whole chunks), and c1 + c2 -> o parameters."""
    x, x2 = (rand(device, dtype, n, c, h, w) for c in (c1, c2))
    params = [(rand(device, torch.float32, *s, lo=-1) / 4).to(dtype)
              for s in ((c1 + c2, 1, 3, 3), (c1 + c2,), (o, c1 + c2, 1, 1), (o,))]
    return x, x2, params


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_dsconv2d_interior_and_edge_tiles(dtype):
    """Tiles whose 3x3 halo lies inside the image load without masks, the others with: an image on
    which every config of the dsconv2d kernels has both (the 64-wide tiles of the input gradient
    kernel need 129 columns) but the input gradient's 32-row tiles, with a skip input and whole
    chunks of channels. float16: the forward's tap products (configs of their own)."""
    device = triton_device()
    x, x2, params = _dsconv2d_skip_case(device, dtype, 1, 35, 131)
    fused = lambda a, b, *p: ops.dsconv2d(a, *p, x2=b, activation="relu", backend="triton")  # noqa: E731
    ref = lambda a, b, *p: reference.dsconv2d(a, *p, x2=b, activation="relu")  # noqa: E731
    want = truth(ref, [x, x2, *params])
    from sgllie.kernels._runtime import use_config
    for k in _config_indices(dtype):
        with use_config(k):
            assert_close(outputs_and_grads(fused, [x, x2, *params]), want, dtype, f"dsconv2d config {k}")


_LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


@pytest.mark.parametrize("dtype", [torch.float32, *HALF], ids=str)
@pytest.mark.parametrize("out_format", [torch.preserve_format, *_LAYOUTS.values()], ids=str)
@pytest.mark.parametrize("layout", _LAYOUTS)
def test_dsconv2d_layouts(layout, out_format, dtype):
    """x and x2 read in either layout and y written in either (the kernel's own indexing: no
    copies), forward and backward (the backward kernels read NCHW; the gradients come back laid out
    as the inputs), against the reference; interior and edge tiles of the first config."""
    device = triton_device()
    x, x2, params = _dsconv2d_skip_case(device, dtype, 2, 21, 37)
    x, x2 = (t.contiguous(memory_format=_LAYOUTS[layout]) for t in (x, x2))
    fused = lambda a, b, *p: ops.dsconv2d(a, *p, x2=b, activation="relu", memory_format=out_format,  # noqa: E731
                                          backend="triton")
    ref = lambda a, b, *p: reference.dsconv2d(a, *p, x2=b, activation="relu")  # noqa: E731
    got = outputs_and_grads(fused, [x, x2, *params])
    assert_close(got, truth(ref, [x, x2, *params]), dtype, f"dsconv2d {layout} -> {out_format}")
    y = fused(x, x2, *params)
    want_last = out_format == torch.channels_last or (out_format == torch.preserve_format and layout != "nchw")
    assert reference.is_channels_last(y) == want_last and (want_last or y.is_contiguous())
    assert got[1].stride() == x.stride() and got[2].stride() == x2.stride()  # gradients as the inputs


@pytest.mark.parametrize("channels", [(16, 16, 32), (3, 5, 6)], ids=["whole_chunks", "masked_channels"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_dsconv2d_channels_last_every_config(dtype, channels):
    """Channels-last in and out, every forward config of ``dtype`` (float16: the tap products too,
    some in groups of taps), on an image where each has interior tiles (no masks) and edge ones; x
    and x2 of whole chunks of channels, and of channels masked in a chunk."""
    from sgllie.kernels._runtime import use_config
    from sgllie.kernels.dsconv2d import _chunks, forward_chunk, forward_kernel
    device = triton_device()
    x, x2, params = _dsconv2d_skip_case(device, dtype, 2, 35, 35, *channels)
    x, x2 = (t.contiguous(memory_format=torch.channels_last) for t in (x, x2))
    want = reference.dsconv2d(x.double(), *(p.double() for p in params), x2=x2.double(), activation="relu")
    whole = _chunks(*channels, forward_chunk(dtype))["WHOLE"]  # (float16's own kernel when whole)
    for k in range(len(forward_kernel(dtype, last_whole=whole).configs)):
        with use_config(k):
            y = ops.dsconv2d(x, *params, x2=x2, activation="relu", backend="triton")
        assert reference.is_channels_last(y)
        assert_close([y], [Truth(want.to(dtype), 0.0)], dtype, f"dsconv2d channels-last config {k}")


@triton.jit
def _products_kernel(a_ptr, b_ptr, three_ptr, one_ptr):
    k = tl.arange(0, 16)
    offs = k[:, None] * 16 + k[None, :]
    a, b = tl.load(a_ptr + offs), tl.load(b_ptr + offs)
    zero = tl.zeros([16, 16], tl.float32)
    tl.store(three_ptr + offs, _dot(a, b, zero, tl.float32))
    tl.store(one_ptr + offs, tl.dot(a, b, zero, input_precision="tf32"))


def _products(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a @ b by dsconv2d's 3xTF32 _dot and by one plain TF32 tl.dot, in one 16x16x16 program."""
    three, one = torch.empty_like(a), torch.empty_like(a)
    _products_kernel[(1,)](a, b, three, one)
    return three, one


def test_3xtf32_products_keep_float32_accuracy():
    """dsconv2d's float32 products (3xTF32 built from TF32 dots) off the exact product by what
    3xTF32 leaves out (a_lo b_lo, <= 2^-20 relative), where one TF32 dot is off by ~2^-11: on a
    GPU's tensor cores, or under the interpreter with its dots rounding as theirs
    (tests/tensor_cores.py), so this also shows that model is in force."""
    device = triton_device()
    a, b = (torch.randn(16, 16, device=device) for _ in range(2))
    exact = a.double() @ b.double()
    scale = (a.double().abs() @ b.double().abs()).max().item()
    three, one = (torch.max(abs(p.double() - exact)).item() / scale for p in _products(a, b))
    assert three < 2.0 ** -18, three
    assert one > 2.0 ** -13, one


def test_le_curve_reading_its_taps_from_memory(monkeypatch):
    """The upsampling le_curve's path for Triton 3.3 (whose compiler fails on its register gathers):
    each pixel's four taps read from memory, the same numbers. Run by the interpreter, which reads
    the switch when the kernel runs (a GPU's JIT compiles it once; CI's 3.3 step builds that path)."""
    if not ops._backends.triton_interpreting():
        pytest.skip("switches a compiled-in constant: under TRITON_INTERPRET=1")
    import importlib

    module = importlib.import_module("sgllie.kernels.le_curve")  # (the package's le_curve is the function)
    monkeypatch.setattr(module, "_GATHER", tl.constexpr(False))
    fused, ref, inputs = _cases(triton_device(), torch.float32)["le_curve"]
    assert inputs[1].shape[-1] < inputs[0].shape[-1], "the case must upsample r"
    assert_close(outputs_and_grads(fused, inputs), truth(ref, inputs), torch.float32, "le_curve")


# ----------------------------------------------------------------------------- counted costs
def _interpreter_only():
    if not ops._backends.triton_interpreting():
        pytest.skip("bytes and launches are counted under TRITON_INTERPRET=1")
    triton_device()


@pytest.fixture
def no_finite_checks(monkeypatch):
    monkeypatch.setenv("SGLLIE_CHECK_FINITE", "0")


@pytest.mark.parametrize("name", ["le_curve", "dsconv2d", "dsconv2d-skip", "zero_reference_loss", "tv_loss"])
def test_forward_bytes_near_the_floor(name, no_finite_checks):
    """Counted DRAM bytes of each forward against its floor (every input read once, every output
    written once): within 1.15x for the curve and the losses, 1.5x for dsconv2d (3x3 halo re-reads)."""
    _interpreter_only()
    from benchmarks import triton_cost
    row = triton_cost.count(triton_cost.FORWARD_CASES[name], scale=0.1)
    limit = 1.5 if name.startswith("dsconv2d") else 1.15
    assert row.ratio <= limit, f"{name}: {row.bytes} bytes counted, floor {row.floor}: {row.ratio:.3f}x > {limit}x"


def test_inference_launches(no_finite_checks):
    """The whole model at scale_factor 12 on the Triton backend: at most 9 kernel launches
    (downscale, 7 fused blocks, the curve with its upsample)."""
    _interpreter_only()
    from sgllie.kernels._counting import launches
    model, x = sgllie.EnhanceNet(scale_factor=12).eval(), torch.rand(1, 3, 48, 72)
    with torch.inference_mode(), ops.use_backend("triton"), launches() as names:
        model.enhance(x)
    assert len(names) <= 9, names
    assert not any(n.startswith("aten::") for n in names[1:]), f"unfused aten ops after the downscale: {names}"
