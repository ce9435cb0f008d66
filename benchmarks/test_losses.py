"""The zero-reference losses: spatial consistency + exposure + colour (one op), and TV."""
from __future__ import annotations

import pytest
import torch

import sgllie.ops
from sgllie.ops import reference as R

from ._common import assert_close, backend_of, compile_fn, pick, shape_str, step_marker, variants


def _op(name: str, variant: str):
    ref = getattr(R, name)
    if variant == "eager":
        return ref
    if variant.startswith("compile"):
        return compile_fn(lambda *a: ref(*a), variant)
    backend = backend_of(variant)
    public = getattr(sgllie.ops, name)
    return lambda *a: public(*a, backend=backend)


def _fwd_bwd(op, args, wrt, mark):
    def fn():
        mark()
        out = op(*args)
        total = sum(out) if isinstance(out, tuple) else out
        return total, torch.autograd.grad(total, wrt)[0]
    return fn


@pytest.mark.parametrize("variant", variants())
def test_zero_reference_loss(variant, device, timer):
    """(spa, exp, col) of the enhanced image y against the low-light input, forward + backward (y)."""
    y = torch.rand(pick((4, 3, 512, 512), (2, 3, 64, 64), cuda=(8, 3, 512, 512)), device=device).requires_grad_()
    low = torch.rand(y.shape, device=device) * 0.3
    fn = _fwd_bwd(_op("zero_reference_loss", variant), (y, low), y, step_marker(variant))
    assert_close(fn(), _fwd_bwd(R.zero_reference_loss, (y, low), y, lambda: None)(), variant)
    timer(fn, group=f"zero_reference_loss fwd+bwd {shape_str(y)}", variant=variant)


@pytest.mark.parametrize("variant", variants())
def test_tv_loss(variant, device, timer):
    """TV (illumination smoothness) of a full-size factor map, forward + backward."""
    r = (torch.rand(pick((4, 3, 512, 512), (2, 3, 64, 64), cuda=(8, 3, 512, 512)), device=device) * 2 - 1).requires_grad_()
    fn = _fwd_bwd(_op("tv_loss", variant), (r,), r, step_marker(variant))
    assert_close(fn(), _fwd_bwd(R.tv_loss, (r,), r, lambda: None)(), variant)
    timer(fn, group=f"tv_loss fwd+bwd {shape_str(r)}", variant=variant)
