"""One training step without the semantic term: forward, SGZLoss(sem=0), backward, Adam step."""
from __future__ import annotations

import pytest
import torch

import sgllie.ops
from sgllie.losses import LossWeights, SGZLoss
from sgllie.model import EnhanceNet

from ._common import (assert_close, backend_of, compile_fn, pick, plain_forward, plain_sgz_loss, shape_str,
                      step_marker, variants)

WEIGHTS = LossWeights(sem=0)
# eager        model and SGZLoss on sgllie's "reference" backend (custom ops, hand-written backward)
# eager-plain  forward and loss written with sgllie.ops.reference functions, autograd backward
# compile*     torch.compile of eager-plain's forward + loss (backward compiled by AOTAutograd);
#              the Adam step is the same eager optimizer in every row
VARIANTS = variants(extra=("eager-plain",))


def _loss_fn(model: EnhanceNet, variant: str):
    """x -> total loss, for the variant."""
    def plain(x):
        enhanced, r = plain_forward(model, x)
        return plain_sgz_loss(enhanced, r, x, WEIGHTS)

    if variant == "eager-plain":
        return plain
    if variant.startswith("compile"):
        return compile_fn(plain, variant)
    backend = "reference" if variant == "eager" else backend_of(variant)
    criterion = SGZLoss(WEIGHTS)

    def sgz(x):
        with sgllie.ops.use_backend(backend):
            enhanced, r = model(x)
            return criterion(enhanced, r, x)[0]
    return sgz


def _loss_and_grads(loss_fn, model, x):
    loss = loss_fn(x)
    return loss.detach(), *torch.autograd.grad(loss, list(model.parameters()))


@pytest.mark.parametrize("variant", VARIANTS)
def test_train_step(variant, device, timer):
    model = EnhanceNet(scale_factor=1).to(device).train()
    x = torch.rand(pick((4, 3, 256, 256), (2, 3, 64, 64), cuda=(8, 3, 512, 512)), device=device) * 0.5
    loss_fn, mark = _loss_fn(model, variant), step_marker(variant)

    if variant != "eager":  # same loss and gradients as eager (this first call also compiles)
        expected = _loss_and_grads(_loss_fn(model, "eager"), model, x)
        mark()
        # Compiled and fused variants reorder float32 sums through 7 layers and the losses, so they
        # differ from eager by about eager's own rounding error: measured against float64, eager's
        # gradients err by up to 4.5e-4 of their largest value, the fused cpu backend's by 1e-4
        # (tests/test_model.py checks fused <= 2x eager). atol is relative to the largest value.
        tol = ({} if variant == "eager-plain" else dict(rtol=1e-3, atol=1e-4) if variant.startswith("compile")
               else dict(rtol=1e-3, atol=1e-3))
        assert_close(_loss_and_grads(loss_fn, model, x), expected, variant, **tol)

    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)

    def step():
        mark()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(x)
        loss.backward()
        opt.step()

    timer(step, group=f"train step (sem=0) {shape_str(x)}", variant=variant, heavy=True)
