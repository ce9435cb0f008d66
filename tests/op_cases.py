"""Each op's fused call, reference call and inputs for the backend tests beyond tests/test_ops.py
(test_triton.py, test_cuda_emu.py): odd sizes, half precision checked against the float64 truth."""
from __future__ import annotations

from typing import NamedTuple

import torch

import sgllie.ops as ops
from sgllie.ops import reference as R
from conftest import TOLERANCES

HALF = [torch.float16, torch.bfloat16]


def rand(device, dtype, *shape, lo=0.0):
    return torch.empty(*shape, dtype=torch.float32, device=device).uniform_(lo, 1.0).to(dtype)


def cases(backend, device, dtype, small=False):
    """op name -> (fused call, reference call, inputs): odd sizes, not multiples of any tile or patch;
    ``small``: smaller than one tile or patch."""
    rnd = lambda *s, lo=0.0: rand(device, dtype, *s, lo=lo)  # noqa: E731
    h, w = (2, 3) if small else (19, 37)
    lh, lw = (5, 6) if small else (21, 35)     # losses need one spa patch (<= 5) per side
    ep = 5 if small else 16                    # exposure patch
    x1, x2 = rnd(2, 5, h, w), rnd(2, 3, h, w)
    params = [rnd(8, 1, 3, 3, lo=-1), rnd(8, lo=-1), rnd(7, 8, 1, 1, lo=-1), rnd(7, lo=-1)]
    wide = [rnd(64, 1, 3, 3, lo=-1), rnd(64, lo=-1), rnd(32, 64, 1, 1, lo=-1), rnd(32, lo=-1)]  # the model's skips
    first = [rnd(3, 1, 3, 3, lo=-1), rnd(3, lo=-1), rnd(4, 3, 1, 1, lo=-1), rnd(4, lo=-1)]
    y, i = rnd(2, 3, lh, lw), rnd(2, 3, lh, lw)
    ey = rnd(1, 3, 17, 33)                     # exposure: at least one 16 x 16 patch
    return {
        "dsconv2d": (lambda a, b, *p: ops.dsconv2d(a, *p, x2=b, activation="relu", backend=backend),
                     lambda a, b, *p: R.dsconv2d(a, *p, x2=b, activation="relu"), [x1, x2, *params]),
        "dsconv2d-model-skip": (lambda a, b, *p: ops.dsconv2d(a, *p, x2=b, activation="relu", backend=backend),
                                lambda a, b, *p: R.dsconv2d(a, *p, x2=b, activation="relu"),
                                [rnd(1, 32, 5, 34), rnd(1, 32, 5, 34), *[t / 4 for t in wide]]),
        "dsconv2d-3ch-tanh": (lambda a, *p: ops.dsconv2d(a, *p, activation="tanh", backend=backend),
                              lambda a, *p: R.dsconv2d(a, *p, activation="tanh"), [x1[:, :3], *first]),
        "le_curve": (lambda a, b: ops.le_curve(a, b, backend=backend), R.le_curve,
                     [rnd(2, 3, h, w), rnd(2, 3, max(h // 3, 1), max(w // 3, 1), lo=-1)]),
        "le_curve-same-size": (lambda a, b: ops.le_curve(a, b, backend=backend), R.le_curve,
                               [rnd(1, 3, h, w), rnd(1, 3, h, w, lo=-1)]),
        "zero_reference_loss": (lambda a, b: ops.zero_reference_loss(a, b, patch=5, exposure_patch=ep,
                                                                     backend=backend),
                                lambda a, b: R.zero_reference_loss(a, b, 5, 0.6, ep), [y, i]),
        "spatial_consistency_loss": (lambda a, b: ops.spatial_consistency_loss(a, b, 3, backend=backend),
                                     lambda a, b: R.spatial_consistency_loss(a, b, 3), [y, i]),
        "exposure_loss": (lambda a: ops.exposure_loss(a, 0.55, backend=backend),
                          lambda a: R.exposure_loss(a, 0.55), [ey]),
        "color_constancy_loss": (lambda a: ops.color_constancy_loss(a, backend=backend),
                                 R.color_constancy_loss, [y]),
        "tv_loss": (lambda a: ops.tv_loss(a, backend=backend), R.tv_loss, [rnd(2, 3, max(h, 2), w)]),
    }


OPS = list(cases("reference", "cpu", torch.float32))


def outputs_and_grads(fn, inputs, seed=0):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    g = torch.Generator().manual_seed(seed)
    cot = [torch.rand(o.shape, generator=g).to(o) for o in outs]
    return [o.detach() for o in outs] + list(torch.autograd.grad(outs, leaves, cot))


class Truth(NamedTuple):
    value: torch.Tensor
    slack: float  # the float32 reference's own largest error here: what the op's conditioning costs


def truth(ref, inputs) -> list[Truth]:
    """The reference in float64 on the same inputs, in their dtype; for float32 inputs, with the
    largest error of the reference itself run in float32 (on the CPU: no TF32). Some cases are
    ill-conditioned enough that float32 cannot meet float32 tolerance of the truth: the colour loss,
    and le_curve's factor gradient, where the steps' derivatives multiply (the float32 reference
    misses the tolerance on one random input in eight)."""
    dtype = inputs[0].dtype
    exact = outputs_and_grads(ref, [t.double() for t in inputs])
    own = outputs_and_grads(ref, [t.cpu() for t in inputs]) if dtype == torch.float32 else None
    return [Truth(e.to(dtype), 0.0 if own is None else float((o.double() - e.cpu()).abs().max()))
            for e, o in zip(exact, own or exact, strict=True)]


def assert_close(got, want: list[Truth], dtype, what):
    """Each tensor within dtype's tolerance, atol relative to its largest value (loss gradients
    are ~1/numel: an absolute half-precision atol would accept anything), but never below one
    step of the dtype's subnormals (float16 holds a 1e-6 gradient to 6e-8 only), nor below twice
    the float32 reference's own error: no worse than plain PyTorch in float32."""
    rtol, atol = TOLERANCES[dtype]
    finfo = torch.finfo(dtype)
    for k, (a, (b, slack)) in enumerate(zip(got, want, strict=True)):
        assert a.dtype == dtype, f"{what}[{k}]: dtype {a.dtype}, expected {dtype}"
        atol_k = max(atol * max(float(b.abs().max()), 1e-30), finfo.tiny * finfo.eps, 2 * slack)
        torch.testing.assert_close(a.float(), b.float(), rtol=rtol, atol=atol_k,
                                   msg=lambda m: f"{what}[{k}]: {m}")
