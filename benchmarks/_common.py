"""Helpers shared by the benchmark files: device, variants, compiling, and the plain-PyTorch SGZ model.

Variants timed in every group (a row each):
  eager                    the oracle function of sgllie.ops.reference (plain PyTorch)
  compile                  torch.compile of that same function
  compile-reduce-overhead  the same with mode="reduce-overhead" (CUDA graphs; CUDA only)
  sgllie-<backend>         sgllie.ops.<op>(..., backend=<backend>), one row per fused backend that
                           is available for the device (so a new backend adds its rows by itself)
"""
from __future__ import annotations

import os

import torch
from torch import Tensor

import sgllie.ops
from sgllie.losses import LossWeights
from sgllie.model import DSC, ITERATIONS, EnhanceNet
from sgllie.ops import reference as R
from sgllie.ops._backends import BACKENDS

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FUSED_PREFIX = "sgllie-"

# Set by conftest.pytest_configure from --bench-quick / SGLLIE_BENCH_QUICK and --bench-compile-backend.
SETTINGS = {"quick": os.environ.get("SGLLIE_BENCH_QUICK", "0") not in ("", "0"), "compile_backend": None}


def quick() -> bool:
    return SETTINGS["quick"]


def pick(full, small, cuda=None):
    """``full`` normally, ``cuda`` (if given) on a GPU, ``small`` under --bench-quick."""
    if quick():
        return small
    return cuda if cuda is not None and DEVICE.type == "cuda" else full


def fused_backends(device: torch.device = DEVICE) -> list[str]:
    """Available non-reference backends that run on ``device``'s type, in sgllie's preference order."""
    names = []
    for name in sgllie.ops.available_backends():
        devices = BACKENDS[name].devices
        if name != "reference" and (not devices or device.type in devices):
            names.append(name)
    return names


def variants(device: torch.device = DEVICE, extra: tuple[str, ...] = ()) -> list[str]:
    """Row names for a group: eager, [extra], sgllie-<backend>..., compile, [compile-reduce-overhead]
    (the compile rows last: their first call compiles, the slowest step of a run)."""
    names = ["eager", *extra, *(FUSED_PREFIX + b for b in fused_backends(device)), "compile"]
    if device.type == "cuda":
        names.append("compile-reduce-overhead")
    return names


def backend_of(variant: str) -> str | None:
    return variant[len(FUSED_PREFIX):] if variant.startswith(FUSED_PREFIX) else None


def compile_backend() -> str:
    """inductor normally; aot_eager under --bench-quick (graph capture and AOTAutograd without
    inductor's C++/Triton code generation, which alone takes ~10 s per graph on a small CPU)."""
    return SETTINGS["compile_backend"] or ("aot_eager" if quick() else "inductor")


# Inductor options of every compile row. With the defaults (realize_opcount_threshold 30 on GPU, 50 on
# CPU) inductor keeps inlining the 8-step le_curve recurrence x <- x + r (x^2 - x) into its consumers:
# each step reads the previous one three times, so the expression it builds grows as 3^k and compiling
# le_curve's forward+backward (and so the train step) takes 1 s at 3 steps, 56 s at 5, hours at 8
# (CPU, torch 2.13). Realizing any reused pointwise node of more than 8 ops bounds it (< 5 s) and
# made no measurable difference to the compiled kernels' speed here.
COMPILE_OPTIONS = {"realize_opcount_threshold": 8}


def compile_fn(fn, variant: str):
    """torch.compile(fn) for a compile* variant, starting from an empty dynamo cache.

    The reset matters: dynamo caches per code object, so without it the second shape of the same
    function would be recompiled with dynamic shapes (automatic_dynamic_shapes), not specialised.
    """
    torch._dynamo.reset()
    backend = compile_backend()
    if backend != "inductor":  # modes and options are inductor's
        return torch.compile(fn, backend=backend, dynamic=False)
    options = dict(COMPILE_OPTIONS)
    if variant == "compile-reduce-overhead":  # what mode="reduce-overhead" sets (mode and options exclude each other)
        options.update(torch._inductor.list_mode_options("reduce-overhead"))
    return torch.compile(fn, dynamic=False, options=options)


def step_marker(variant: str):
    """Called at the start of each timed call: reduce-overhead (CUDA graph trees) needs to be told
    that a new iteration begins, or it may refuse to overwrite outputs of the previous one."""
    if variant == "compile-reduce-overhead" and compile_backend() == "inductor":
        return torch.compiler.cudagraph_mark_step_begin
    return lambda: None


def shape_str(*tensors: Tensor) -> str:
    return " ".join("x".join(map(str, t.shape)) for t in tensors)


def assert_close(actual, expected, what: str, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Every variant must compute the same thing as eager before it is timed."""
    if isinstance(expected, (tuple, list)):
        for k, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_close(a, e, f"{what}[{k}]", rtol, atol)
        return
    # atol relative to the largest |expected|: gradients of mean losses are ~1/numel in size
    atol = atol * max(float(expected.detach().abs().max()), 1e-30) if expected.numel() else atol
    try:
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)
    except AssertionError as e:
        raise AssertionError(f"{what}: result differs from eager: {e}") from None


def assert_as_accurate_as_eager(actual, ref, inputs, what: str) -> None:
    """flash-attention's rule, for ops where float32 results in another (equally valid) order of
    operations differ by more than a fixed tolerance: the 8-step curve amplifies a last-bit
    difference up to 2^8 times where r and x are near 1. Against the float64 result, ``actual`` may
    err at most twice as much as eager float32."""
    truth = ref(*(t.double() for t in inputs))
    error = lambda t: float((t.double() - truth).abs().max())  # noqa: E731
    ours, eager = error(actual), error(ref(*inputs))
    if ours > 2 * eager + 1e-7:
        raise AssertionError(f"{what}: max error {ours:.3g} vs float64, more than twice eager's {eager:.3g}")


# ----------------------------------------------------------------------------- plain-PyTorch SGZ
# The sgllie:: custom ops are opaque to torch.compile (even on the "reference" backend, whose kernel
# is the reference function): inductor sees one extern call per op and can fuse nothing across or
# inside them. The honest torch.compile baseline is the same network written with the functions of
# sgllie.ops.reference directly, using the model's own parameters. The benchmarks assert that it
# equals the model's output before timing it.

def _block(block, x: Tensor, x2: Tensor | None = None, activation: str = "none") -> Tensor:
    if isinstance(block, DSC):
        return R.dsconv2d(x, block.depth_conv.weight, block.depth_conv.bias, block.point_conv.weight,
                          block.point_conv.bias, x2, activation)
    return block(x, x2, activation)  # the 'tc' blocks are plain PyTorch already


def plain_factor_map(model: EnhanceNet, x: Tensor) -> Tensor:
    x1 = _block(model.e_conv1, model.downscale(x), activation="relu")
    x2 = _block(model.e_conv2, x1, activation="relu")
    x3 = _block(model.e_conv3, x2, activation="relu")
    x4 = _block(model.e_conv4, x3, activation="relu")
    x5 = _block(model.e_conv5, x3, x4, activation="relu")
    x6 = _block(model.e_conv6, x2, x5, activation="relu")
    return _block(model.e_conv7, x1, x6, "tanh")


def plain_forward(model: EnhanceNet, x: Tensor) -> tuple[Tensor, Tensor]:
    """EnhanceNet.forward in plain PyTorch: (enhanced, full-size r)."""
    h, w = x.shape[-2:]
    padded = model.pad(x)
    r = plain_factor_map(model, padded)
    enhanced = R.le_curve(padded, r, ITERATIONS)
    if r.shape[-2:] != padded.shape[-2:]:
        r = R.upsample_factor_map(r, tuple(padded.shape[-2:]))
    return enhanced[..., :h, :w], r[..., :h, :w]


def plain_enhance(model: EnhanceNet, x: Tensor) -> Tensor:
    """EnhanceNet.enhance in plain PyTorch."""
    h, w = x.shape[-2:]
    padded = model.pad(x)
    return R.le_curve(padded, plain_factor_map(model, padded), ITERATIONS)[..., :h, :w]


def plain_sgz_loss(enhanced: Tensor, r: Tensor, low: Tensor, weights: LossWeights,
                   patch: int = 4, level: float = 0.6) -> Tensor:
    """SGZLoss total without the semantic term, in plain PyTorch."""
    spa, exp, col = R.zero_reference_loss(enhanced, low, patch, level)
    w = weights
    return w.tv * R.tv_loss(r) + w.spa * spa + w.col * col + w.exp * exp
