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

import sgllie
import sgllie.ops as ops
from sgllie.ops import reference as R
from conftest import TOLERANCES, triton_device

pytestmark = pytest.mark.triton
HALF = [torch.float16, torch.bfloat16]


def _rand(device, dtype, *shape, lo=0.0):
    return torch.empty(*shape, dtype=torch.float32, device=device).uniform_(lo, 1.0).to(dtype)


def _cases(device, dtype, small=False):
    """op name -> (fused call, reference call, inputs): odd sizes, not multiples of any tile or patch;
    ``small``: smaller than one tile or patch."""
    rnd = lambda *s, lo=0.0: _rand(device, dtype, *s, lo=lo)  # noqa: E731
    h, w = (2, 3) if small else (19, 37)
    lh, lw = (5, 6) if small else (21, 35)     # losses need one spa patch (<= 5) per side
    ep = 5 if small else 16                    # exposure patch
    x1, x2 = rnd(2, 5, h, w), rnd(2, 3, h, w)
    params = [rnd(8, 1, 3, 3, lo=-1), rnd(8, lo=-1), rnd(7, 8, 1, 1, lo=-1), rnd(7, lo=-1)]
    first = [rnd(3, 1, 3, 3, lo=-1), rnd(3, lo=-1), rnd(4, 3, 1, 1, lo=-1), rnd(4, lo=-1)]
    y, i = rnd(2, 3, lh, lw), rnd(2, 3, lh, lw)
    ey = rnd(1, 3, 17, 33)                     # exposure: at least one 16 x 16 patch
    return {
        "dsconv2d": (lambda a, b, *p: ops.dsconv2d(a, *p, x2=b, activation="relu", backend="triton"),
                     lambda a, b, *p: R.dsconv2d(a, *p, x2=b, activation="relu"), [x1, x2, *params]),
        "dsconv2d-3ch-tanh": (lambda a, *p: ops.dsconv2d(a, *p, activation="tanh", backend="triton"),
                              lambda a, *p: R.dsconv2d(a, *p, activation="tanh"), [x1[:, :3], *first]),
        "le_curve": (lambda a, b: ops.le_curve(a, b, backend="triton"), R.le_curve,
                     [rnd(2, 3, h, w), rnd(2, 3, max(h // 3, 1), max(w // 3, 1), lo=-1)]),
        "le_curve-same-size": (lambda a, b: ops.le_curve(a, b, backend="triton"), R.le_curve,
                               [rnd(1, 3, h, w), rnd(1, 3, h, w, lo=-1)]),
        "zero_reference_loss": (lambda a, b: ops.zero_reference_loss(a, b, patch=5, exposure_patch=ep,
                                                                     backend="triton"),
                                lambda a, b: R.zero_reference_loss(a, b, 5, 0.6, ep), [y, i]),
        "spatial_consistency_loss": (lambda a, b: ops.spatial_consistency_loss(a, b, 3, backend="triton"),
                                     lambda a, b: R.spatial_consistency_loss(a, b, 3), [y, i]),
        "exposure_loss": (lambda a: ops.exposure_loss(a, 0.55, backend="triton"),
                          lambda a: R.exposure_loss(a, 0.55), [ey]),
        "color_constancy_loss": (lambda a: ops.color_constancy_loss(a, backend="triton"),
                                 R.color_constancy_loss, [y]),
        "tv_loss": (lambda a: ops.tv_loss(a, backend="triton"), R.tv_loss, [rnd(2, 3, max(h, 2), w)]),
    }


OPS = list(_cases("cpu", torch.float32))


def _outputs_and_grads(fn, inputs, seed=0):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    g = torch.Generator().manual_seed(seed)
    cot = [torch.rand(o.shape, generator=g).to(o) for o in outs]
    return [o.detach() for o in outs] + list(torch.autograd.grad(outs, leaves, cot))


def _truth(ref, inputs):
    """The reference in float64 on the same inputs, in their dtype: the colour loss is ill-conditioned
    enough that the float32 reference itself strays beyond float32 tolerance of the truth."""
    return [t.to(inputs[0].dtype) for t in _outputs_and_grads(ref, [t.double() for t in inputs])]


def _assert_close(got, want, dtype, what):
    """Each tensor within dtype's tolerance, atol relative to its largest value (loss gradients
    are ~1/numel: an absolute half-precision atol would accept anything), but never below one
    step of the dtype's subnormals (float16 holds a 1e-6 gradient to 6e-8 only)."""
    rtol, atol = TOLERANCES[dtype]
    finfo = torch.finfo(dtype)
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.dtype == dtype, f"{what}[{k}]: dtype {a.dtype}, expected {dtype}"
        atol_k = max(atol * max(float(b.abs().max()), 1e-30), finfo.tiny * finfo.eps)
        torch.testing.assert_close(a.float(), b.float(), rtol=rtol, atol=atol_k,
                                   msg=lambda m: f"{what}[{k}]: {m}")


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("op", OPS)
def test_half_precision_io(op, dtype):
    """float16/bfloat16 in and out, computed in float32: against the reference in float32 on the
    same (rounded) inputs, within one rounding of the output dtype."""
    fused, ref, inputs = _cases(triton_device(), dtype)[op]
    _assert_close(_outputs_and_grads(fused, inputs), _truth(ref, inputs), dtype, op)


@pytest.mark.parametrize("op", OPS)
def test_every_autotune_config(op):
    """Under the interpreter one config runs unless forced: force each (a GPU's autotuner may pick any)."""
    device = triton_device()
    if device.type == "cuda":
        pytest.skip("on CUDA the autotuner runs and checks every config itself")
    from sgllie.kernels._runtime import AUTOTUNED, use_config
    fused, ref, inputs = _cases(device, torch.float32)[op]
    want = _truth(ref, inputs)
    for k in range(max(len(kernel.configs) for kernel in AUTOTUNED)):
        with use_config(k):
            _assert_close(_outputs_and_grads(fused, inputs), want, torch.float32, f"{op} config {k}")


@pytest.mark.parametrize("op", OPS)
def test_smaller_than_a_tile(op):
    fused, ref, inputs = _cases(triton_device(), torch.float32, small=True)[op]
    _assert_close(_outputs_and_grads(fused, inputs), _truth(ref, inputs), torch.float32, op)


@pytest.mark.parametrize("op", OPS)
def test_deterministic(op):
    """Two runs, bit for bit: reductions are two-stage in a fixed order, no float atomics."""
    fused, _, inputs = _cases(triton_device(), torch.float32)[op]
    first, second = _outputs_and_grads(fused, inputs), _outputs_and_grads(fused, inputs)
    for a, b in zip(first, second):
        assert torch.equal(a, b), op


# ----------------------------------------------------------------------------- counted costs
def _interpreter_only():
    if not ops._backends.triton_interpreting():
        pytest.skip("bytes and launches are counted under TRITON_INTERPRET=1")


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
