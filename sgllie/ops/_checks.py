"""Argument checks shared by the public ops: bad input fails here, in one clear line, not deep inside."""
from __future__ import annotations

import contextlib
import contextvars
import os

import torch
from torch import Tensor


class OpInputError(ValueError):
    pass


def fail(op: str, msg: str):
    """Raise OpInputError naming the op."""
    raise OpInputError(f"sgllie.ops.{op}: {msg}")


def tensor4d(op: str, name: str, t, channels: int | None = None, min_size: int = 1) -> None:
    """t is a floating NCHW tensor with ``channels`` channels and H, W >= ``min_size``."""
    if not isinstance(t, Tensor):
        fail(op, f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        fail(op, f"{name} must be 4-D (N, C, H, W), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        fail(op, f"{name} must be a floating-point tensor, got {t.dtype}")
    if channels is not None and t.shape[1] != channels:
        fail(op, f"{name} must have {channels} channels, got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or min(t.shape[-2:]) < min_size:
        fail(op, f"{name} of shape {tuple(t.shape)} is too small: needs a batch and H, W >= {min_size}")


def same_device_dtype(op: str, **tensors: Tensor) -> None:
    items = [(k, t) for k, t in tensors.items() if t is not None]
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device or t.dtype != first.dtype:
            fail(op, f"{name} is {t.dtype} on {t.device} but {first_name} is {first.dtype} on {first.device}")


def shape(op: str, name: str, t, expected: tuple[int, ...]) -> None:
    if not isinstance(t, Tensor):
        fail(op, f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(expected):
        fail(op, f"{name} must have shape {tuple(expected)}, got {tuple(t.shape)}")


def positive_int(op: str, name: str, value, allowed: tuple[int, ...] | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        fail(op, f"{name} must be a positive int, got {value!r}")
    if allowed is not None and value not in allowed:
        fail(op, f"{name} must be one of {allowed}, got {value}")


_skipped: contextvars.ContextVar[bool] = contextvars.ContextVar("sgllie_finite_checks_skipped", default=False)


@contextlib.contextmanager
def _skipping():
    token = _skipped.set(True)
    try:
        yield
    finally:
        _skipped.reset(token)


def no_finite_checks():
    """Inside this context the ops skip their NaN/Inf input check: for callers that checked the inputs
    the ops' inputs derive from (EnhanceNet checks its image once, not each layer's activations).
    Each check is a reduction and a host sync, so a check per layer stalls a GPU's queue."""
    if torch.compiler.is_compiling():  # nothing is checked there; and a ContextVar would break the graph
        return contextlib.nullcontext()
    return _skipping()


def _finite_checks_enabled() -> bool:
    # a data-dependent check would break graph capture and compilation: skip it there
    if torch.compiler.is_compiling():
        return False
    if _skipped.get() or os.environ.get("SGLLIE_CHECK_FINITE", "1") == "0":
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def finite(op: str, **tensors: Tensor) -> None:
    """NaN or Inf in an input is reported by name. Set SGLLIE_CHECK_FINITE=0 to skip it.

    The fast test is one sum per tensor (NaN and Inf propagate into it); only a non-finite sum,
    which an overflow could also cause, pays for the exact element-wise test.
    """
    if not _finite_checks_enabled():
        return
    for name, t in tensors.items():
        if t is not None and not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
            fail(op, f"{name} contains NaN or Inf")
