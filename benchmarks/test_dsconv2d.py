"""dsconv2d: depthwise 3x3 + pointwise 1x1 (+ ReLU), the block of SGZ's network."""
from __future__ import annotations

import pytest
import torch

import sgllie.ops
from sgllie.ops import reference as R

from ._common import assert_close, backend_of, compile_fn, pick, shape_str, step_marker, variants


def _op(variant: str):
    """(x, x2, dw_w, dw_b, pw_w, pw_b) -> y with ReLU, for the variant."""
    def ref(x, x2, dw_w, dw_b, pw_w, pw_b):
        return R.dsconv2d(x, dw_w, dw_b, pw_w, pw_b, x2, "relu")

    if variant == "eager":
        return ref
    if variant.startswith("compile"):
        return compile_fn(ref, variant)
    backend = backend_of(variant)
    return lambda x, x2, *p: sgllie.ops.dsconv2d(x, *p, x2=x2, activation="relu", backend=backend)


def _params(cin: int, cout: int, device, requires_grad: bool):
    """Weights as nn.Conv2d initialises them (uniform in +-1/sqrt(fan_in))."""
    def u(*shape, fan_in):
        t = (torch.rand(shape, device=device) * 2 - 1) / fan_in ** 0.5
        return t.requires_grad_(requires_grad)
    return [u(cin, 1, 3, 3, fan_in=9), u(cin, fan_in=9), u(cout, cin, 1, 1, fan_in=cin), u(cout, fan_in=cin)]


@pytest.mark.parametrize("variant", variants())
def test_dsconv2d_train(variant, device, timer):
    """32 -> 32 channels, forward + backward (gradients of the input and all four parameters)."""
    x = torch.rand(pick((4, 32, 256, 256), (2, 32, 32, 32), cuda=(8, 32, 512, 512)), device=device).requires_grad_()
    params = _params(32, 32, device, True)
    g = torch.rand(x.shape, device=device)
    op, mark = _op(variant), step_marker(variant)
    inputs = (x, *params)

    def fn():
        mark()
        y = op(x, None, *params)
        return y, *torch.autograd.grad(y, inputs, g)

    got = fn()
    # The output against the reference's; the gradients against the reference's through the ReLU
    # branches the variant took: where a pre-activation is within rounding of 0 the two can branch
    # apart, and one such pixel changes dL/dx at its 9 neighbours in every channel (a tolerance in
    # elements would have to allow for that)
    pre = R.dsconv2d(x, *params, None, "none")
    taken = pre * (got[0] > 0)
    assert_close(got, (pre.relu(), *torch.autograd.grad(taken, inputs, g)), variant)
    timer(fn, group=f"dsconv2d fwd+bwd 32->32 {shape_str(x)}", variant=variant)


@pytest.mark.parametrize("variant", variants())
def test_dsconv2d_two_input(variant, device, timer):
    """The 64 -> 32 skip-connection form: input cat([x, x2]) read from two tensors, forward only."""
    x = torch.rand(pick((4, 32, 256, 256), (2, 32, 32, 32), cuda=(8, 32, 512, 512)), device=device)
    x2 = torch.rand_like(x)
    params = _params(64, 32, device, False)
    op, mark = _op(variant), step_marker(variant)

    def fn():
        mark()
        with torch.inference_mode():
            return op(x, x2, *params)

    with torch.inference_mode():
        assert_close(fn(), R.dsconv2d(x, *params, x2, "relu"), variant)
    timer(fn, group=f"dsconv2d fwd 64->32 (x2) {shape_str(x)}", variant=variant)
