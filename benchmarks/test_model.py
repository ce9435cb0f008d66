"""Inference of the whole network: EnhanceNet(scale_factor=12).enhance(x), randomly initialised."""
from __future__ import annotations

import pytest
import torch

import sgllie.ops
from sgllie.graphs import GraphedEnhance, StaticEnhance
from sgllie.model import EnhanceNet

from ._common import (DEVICE, assert_close, backend_of, compile_fn, pick, plain_enhance, shape_str, step_marker,
                      variants)

# eager        the model on sgllie's "reference" backend (custom ops whose kernels are the reference)
# eager-plain  the same network written with sgllie.ops.reference functions (no custom ops)
# compile*     torch.compile of eager-plain: inductor cannot see inside the custom ops, so compiling
#              the model itself would time the reference kernels plus compiled glue
# sgllie-<backend>-graph  (CUDA) the same, its network replayed as a CUDA graph by sgllie.graphs.GraphedEnhance
# sgllie-<backend>-static (CUDA) the whole forward as one graph, sgllie.graphs.StaticEnhance, the frame in
#                         its input buffer (as a decoder or an upload writing there leaves it)
VARIANTS = variants(extra=("eager-plain",))
VARIANTS += [v + suffix for v in VARIANTS if backend_of(v) and DEVICE.type == "cuda" for suffix in ("-graph", "-static")]
SIZES = {"1200x900": pick((1, 3, 900, 1200), (1, 3, 96, 120)),
         "4k": pick((1, 3, 2160, 3840), (1, 3, 100, 130))}  # quick: not a multiple of 12 (padding path)
if DEVICE.type == "cuda":
    SIZES["4k-fp16"] = SIZES["4k"]  # float16 images and weights


def _enhance(model: EnhanceNet, variant: str):
    if variant == "eager":
        backend = "reference"
    elif variant == "eager-plain":
        return lambda x: plain_enhance(model, x)
    elif variant.startswith("compile"):
        return compile_fn(lambda x: plain_enhance(model, x), variant)
    elif variant.endswith("-graph"):
        return GraphedEnhance(model, backend=backend_of(variant.removesuffix("-graph")))
    elif variant.endswith("-static"):
        return _InInputBuffer(model, backend_of(variant.removesuffix("-static")))
    else:
        backend = backend_of(variant)

    def run(x):
        with sgllie.ops.use_backend(backend):
            return model.enhance(x)
    return run


class _InInputBuffer:
    """StaticEnhance with the timed frame written into its input buffer once, where a video decoder or
    an upload would have put it: a call is the replay alone. The output is the graph's buffer."""

    def __init__(self, model: EnhanceNet, backend: str):
        self.model, self.backend, self.run, self.frame = model, backend, None, None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x is not self.frame:
            if self.run is None or self.run.input.shape != x.shape:
                self.run = StaticEnhance(self.model, tuple(x.shape), backend=self.backend)
            self.run.input.copy_(x)
            self.frame = x
        return self.run()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_enhance(variant, size, device, timer):
    dtype = torch.float16 if size.endswith("fp16") else torch.float32
    model = EnhanceNet(scale_factor=12).to(device, dtype).eval()
    x = torch.rand(SIZES[size], device=device, dtype=dtype)
    enhance, mark = _enhance(model, variant), step_marker(variant)

    def fn():
        mark()
        with torch.inference_mode():
            return enhance(x)

    with torch.inference_mode(), sgllie.ops.use_backend("reference"):
        expected = model.enhance(x)
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.float16 else {}  # one float16 rounding per layer
    with torch.inference_mode(), sgllie.ops.use_backend("reference"):
        assert_close(plain_enhance(model, x), expected, "eager-plain", **(tol or dict(rtol=1e-5, atol=1e-6)))
    assert_close(fn(), expected, variant, **tol)
    timer(fn, group=f"EnhanceNet(s=12).enhance {size} {shape_str(x)}", variant=variant, heavy=size == "4k")
