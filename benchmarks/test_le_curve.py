"""le_curve: the recurrent enhancement, 8 iterations of x + r (x^2 - x)."""
from __future__ import annotations

import pytest
import torch

import sgllie.ops
from sgllie.ops import reference as R

from ._common import (assert_as_accurate_as_eager, assert_close, backend_of, compile_fn, pick, shape_str,
                      step_marker, variants)

ITERATIONS = 8


def _op(variant: str):
    """The function a row times: (x, r) -> enhanced, for the variant."""
    if variant == "copy":  # the floor: one read of x, one write of y, as a device copy
        return lambda x, r: torch.empty_like(x).copy_(x)
    if variant == "eager":
        return lambda x, r: R.le_curve(x, r, ITERATIONS)
    if variant.startswith("compile"):
        return compile_fn(lambda x, r: R.le_curve(x, r, ITERATIONS), variant)
    backend = backend_of(variant)
    return lambda x, r: sgllie.ops.le_curve(x, r, ITERATIONS, backend=backend)


@pytest.mark.parametrize("variant", variants(extra=("copy",)))
def test_le_curve_4k_inference(variant, device, timer):
    """The inference path: a 4K frame with the factor map at 1/12 size, upsampled inside the op."""
    x = torch.rand(pick((1, 3, 2160, 3840), (1, 3, 144, 192)), device=device)
    r = torch.rand(pick((1, 3, 180, 320), (1, 3, 12, 16)), device=device) * 2 - 1
    op, mark = _op(variant), step_marker(variant)

    def fn():
        mark()
        with torch.inference_mode():
            return op(x, r)

    with torch.inference_mode():
        if variant != "copy":
            assert_as_accurate_as_eager(fn(), lambda *t: R.le_curve(*t, ITERATIONS), (x, r), variant)
    timer(fn, group=f"le_curve fwd x {shape_str(x)} r {shape_str(r)}", variant=variant)


@pytest.mark.parametrize("variant", variants())
def test_le_curve_train(variant, device, timer):
    """Training shape: same-size r, forward + backward (gradient w.r.t. r; x is the input image)."""
    x = torch.rand(pick((4, 3, 512, 512), (2, 3, 64, 64), cuda=(8, 3, 512, 512)), device=device)
    r = (torch.rand_like(x) * 2 - 1).requires_grad_()
    g = torch.rand_like(x)
    op, mark = _op(variant), step_marker(variant)

    def fn():
        mark()
        y = op(x, r)
        return y, torch.autograd.grad(y, r, g)[0]

    expected_y = R.le_curve(x, r, ITERATIONS)
    assert_close(fn(), (expected_y, torch.autograd.grad(expected_y, r, g)[0]), variant)
    timer(fn, group=f"le_curve fwd+bwd {shape_str(x)}", variant=variant)
