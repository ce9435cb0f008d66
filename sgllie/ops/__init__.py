"""sgllie.ops: the fused ops of SGZ, one function per op, each a ``torch.library`` custom op.

Every function checks its arguments, picks a backend (``backend=`` argument, ``use_backend`` context,
``SGLLIE_BACKEND`` environment variable, or automatically by device) and calls ``torch.ops.sgllie.*``.
``sgllie.ops.reference`` holds the plain PyTorch oracle of each op.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _checks as check
from . import _library, reference
from . import _backends
from ._backends import BackendUnavailableError, available_backends, backend_status, resolve, use_backend
from ._checks import OpInputError, no_finite_checks

__all__ = [
    "dsconv2d", "le_curve", "spatial_consistency_loss", "exposure_loss", "color_constancy_loss",
    "tv_loss", "zero_reference_loss", "available_backends", "backend_status", "use_backend",
    "no_finite_checks", "reference", "OpInputError", "BackendUnavailableError",
]

def _choose(op: str, backend: str | None, t: Tensor, run) -> str:
    """The backend for this call (see _backends); ``run(name)`` runs the op with backend ``name``,
    for ``auto``'s one-time timing of the two GPU backends on this shape class."""
    name = resolve(op, backend, t.device)
    if (name in _backends.RACED and _backends.auto_requested(backend) and not torch.compiler.is_compiling()
            and all(_backends.load(n)[0] is not None for n in _backends.RACED)):
        name = _backends.fastest(op, _backends.shape_class(t), run)
    return name


def reads_channels_last(t: Tensor) -> bool:
    """Whether dsconv2d's backend for tensors like ``t`` reads channels-last activations in place
    (the Triton kernels) rather than copying them to NCHW."""
    return resolve("dsconv2d", None, t.device) == "triton"


SPA_PATCHES = (3, 4, 5)  # the reference's allowed spatial-consistency patch sizes


def dsconv2d(x: Tensor, dw_weight: Tensor, dw_bias: Tensor, pw_weight: Tensor, pw_bias: Tensor, *,
             x2: Tensor | None = None, activation: str | None = None,
             memory_format: torch.memory_format = torch.preserve_format, backend: str | None = None) -> Tensor:
    """Depthwise 3x3 conv (padding 1) then pointwise 1x1 conv, both with bias, then ``activation``:
    None, "relu" or "tanh".

    With ``x2`` the input is the channel concatenation ``[x, x2]``, read from the two tensors.
    Shapes: x (N, C1, H, W), x2 (N, C2, H, W), dw_weight (C, 1, 3, 3), dw_bias (C,),
    pw_weight (O, C, 1, 1), pw_bias (O,) with C = C1 + C2.
    The result is laid out as ``memory_format`` says: torch.contiguous_format (NCHW),
    torch.channels_last, or torch.preserve_format (as x). The Triton kernels read and write
    channels-last activations in place, with fewer instructions than NCHW (see README).
    """
    op = "dsconv2d"
    check.tensor4d(op, "x", x)
    c = x.shape[1]
    if x2 is not None:
        check.tensor4d(op, "x2", x2)
        if x2.shape[0] != x.shape[0] or x2.shape[2:] != x.shape[2:]:
            check.fail(op, f"x2 of shape {tuple(x2.shape)} does not match x of shape {tuple(x.shape)} "
                            "outside the channel dimension")
        c += x2.shape[1]
    check.shape(op, "dw_weight", dw_weight, (c, 1, 3, 3))
    check.shape(op, "dw_bias", dw_bias, (c,))
    if not isinstance(pw_weight, Tensor) or pw_weight.dim() != 4:
        check.fail(op, "pw_weight must be a 4-D tensor (O, C, 1, 1)")
    check.shape(op, "pw_weight", pw_weight, (pw_weight.shape[0], c, 1, 1))
    check.shape(op, "pw_bias", pw_bias, (pw_weight.shape[0],))
    check.same_device_dtype(op, x=x, x2=x2, dw_weight=dw_weight, dw_bias=dw_bias, pw_weight=pw_weight,
                            pw_bias=pw_bias)
    activation = "none" if activation is None else activation
    if activation not in reference.ACTIVATIONS:
        check.fail(op, f"activation must be None, 'relu' or 'tanh', got {activation!r}")
    if memory_format not in (torch.preserve_format, torch.contiguous_format, torch.channels_last):
        check.fail(op, "memory_format must be torch.preserve_format, torch.contiguous_format or "
                       f"torch.channels_last, got {memory_format!r}")
    last = reference.output_format(x, memory_format) == torch.channels_last
    check.finite(op, x=x, x2=x2)
    run = lambda b: _library.dsconv2d(x, x2, dw_weight, dw_bias, pw_weight, pw_bias, activation, last, b)  # noqa: E731
    return run(_choose(op, backend, x, run))


def le_curve(x: Tensor, r: Tensor, iterations: int = 8, *, backend: str | None = None) -> Tensor:
    """``iterations`` steps of ``x = x + r * (x^2 - x)`` (SGZ's recurrent enhancement).

    ``r`` has x's batch and channels; if its H, W are smaller it is upsampled to x's size
    (bilinear, align_corners=True, as the reference's UpsamplingBilinear2d) inside the op.
    """
    op = "le_curve"
    check.tensor4d(op, "x", x)
    check.tensor4d(op, "r", r)
    if r.shape[:2] != x.shape[:2] or r.shape[2] > x.shape[2] or r.shape[3] > x.shape[3]:
        check.fail(op, f"r of shape {tuple(r.shape)} must have x's batch and channels and at most its "
                        f"height and width; x has shape {tuple(x.shape)}")
    check.positive_int(op, "iterations", iterations)
    check.same_device_dtype(op, x=x, r=r)
    check.finite(op, x=x, r=r)
    run = lambda b: _library.le_curve(x, r, iterations, b)  # noqa: E731
    return run(_choose(op, backend, x, run))


def _check_loss_pair(op: str, y: Tensor, i: Tensor, patch: int) -> None:
    check.positive_int(op, "patch", patch, SPA_PATCHES)
    check.tensor4d(op, "y", y, channels=3, min_size=patch)
    check.tensor4d(op, "i", i, channels=3, min_size=patch)
    if y.shape != i.shape:
        check.fail(op, f"y of shape {tuple(y.shape)} and i of shape {tuple(i.shape)} must match")
    check.same_device_dtype(op, y=y, i=i)
    check.finite(op, y=y, i=i)


def _check_exposure(op: str, y: Tensor, level: float, patch: int) -> None:
    check.positive_int(op, "exposure patch", patch)
    if not isinstance(level, (int, float)) or isinstance(level, bool) or not 0.0 <= level <= 1.0:
        check.fail(op, f"level must be a number in [0, 1], got {level!r}")
    check.tensor4d(op, "y", y, channels=3, min_size=patch)


def spatial_consistency_loss(y: Tensor, i: Tensor, patch: int = 4, *, backend: str | None = None) -> Tensor:
    """SGZ's spa8 loss between the enhanced image ``y`` and the input ``i`` (both (N, 3, H, W))."""
    op = "spatial_consistency_loss"
    _check_loss_pair(op, y, i, patch)
    run = lambda b: _library.spatial_consistency_loss(y, i, patch, b)  # noqa: E731
    return run(_choose(op, backend, y, run))


def exposure_loss(y: Tensor, level: float = 0.6, patch: int = 16, *, backend: str | None = None) -> Tensor:
    """Mean of (patch-mean grey level - ``level``)^2 over ``patch`` x ``patch`` patches of ``y``."""
    op = "exposure_loss"
    _check_exposure(op, y, level, patch)
    check.finite(op, y=y)
    run = lambda b: _library.exposure_loss(y, float(level), patch, b)  # noqa: E731
    return run(_choose(op, backend, y, run))


def color_constancy_loss(y: Tensor, *, backend: str | None = None) -> Tensor:
    """Batch mean of sqrt((mR-mG)^4 + (mR-mB)^4 + (mB-mG)^4) over the channel means of ``y``."""
    op = "color_constancy_loss"
    check.tensor4d(op, "y", y, channels=3)
    check.finite(op, y=y)
    run = lambda b: _library.color_constancy_loss(y, b)  # noqa: E731
    return run(_choose(op, backend, y, run))


def tv_loss(r: Tensor, *, backend: str | None = None) -> Tensor:
    """Total-variation (illumination smoothness) loss of the factor map ``r`` (H, W >= 2)."""
    op = "tv_loss"
    check.tensor4d(op, "r", r, min_size=2)
    check.finite(op, r=r)
    run = lambda b: _library.tv_loss(r, b)  # noqa: E731
    return run(_choose(op, backend, r, run))


def zero_reference_loss(y: Tensor, i: Tensor, *, patch: int = 4, level: float = 0.6,
                        exposure_patch: int = 16, backend: str | None = None
                        ) -> tuple[Tensor, Tensor, Tensor]:
    """(spa, exp, col): spatial consistency, exposure and colour losses of ``y`` in one call."""
    op = "zero_reference_loss"
    _check_loss_pair(op, y, i, patch)
    _check_exposure(op, y, level, exposure_patch)
    run = lambda b: _library.zero_reference_loss(y, i, patch, float(level), exposure_patch, b)  # noqa: E731
    spa, exp, col, _ = run(_choose(op, backend, y, run))
    return spa, exp, col
