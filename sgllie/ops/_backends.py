"""The one place that knows the backends: what each runs on, whether it loaded, and which one a call uses.

A backend is a module exposing the kernels of every op under the names used in ``reference.py``
(``le_curve``, ``le_curve_backward``, ...). Precedence for a call: the ``backend=`` argument, then the
innermost ``use_backend`` context, then the ``SGLLIE_BACKEND`` environment variable, then ``auto``:
the first available backend in ``PREFERENCE`` for the tensors' device, except that where both GPU
backends (``RACED``) are available, ``auto`` times each once per (op, dtype, shape class) on the
user's device and keeps the faster for the process, as cudnn.benchmark does (``fastest``).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import os
import warnings
from dataclasses import dataclass
from types import ModuleType

import torch


@dataclass(frozen=True)
class Backend:
    name: str
    module: str                  # module holding the kernels
    devices: tuple[str, ...]     # device types it runs on; () means any
    needs: str                   # what a user needs for it, shown when it is missing


BACKENDS = {
    b.name: b for b in (
        Backend("reference", "sgllie.ops.reference", (), "nothing (plain PyTorch)"),
        Backend("cpu", "sgllie.ops._cpu", ("cpu",), "the compiled extension sgllie._C"),
        Backend("triton", "sgllie.kernels", ("cuda",), "triton and a CUDA GPU"),
        Backend("cuda", "sgllie.ops._cuda", ("cuda",), "sgllie._C built with CUDA and a CUDA GPU"),
    )
}
# auto: the fastest first, per device type
PREFERENCE = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}
# auto on CUDA with both available: timed per (op, dtype, shape class), the faster kept
RACED = ("cuda", "triton")

_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("sgllie_backend", default=None)


_triton_dry_run: contextvars.ContextVar[bool] = contextvars.ContextVar("sgllie_triton_dry_run", default=False)


@functools.cache  # Triton reads it once too, when a kernel's module is imported
def triton_interpreting() -> bool:
    """TRITON_INTERPRET=1: Triton runs its kernels in an interpreter on CPU tensors (tests, no GPU)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@contextlib.contextmanager
def triton_dry_run():
    """Inside sgllie.kernels._runtime.dry_run the Triton backend takes CPU tensors: nothing runs."""
    token = _triton_dry_run.set(True)
    try:
        yield
    finally:
        _triton_dry_run.reset(token)


def triton_on_cpu() -> bool:
    return triton_interpreting() or _triton_dry_run.get()


def runs_on(name: str) -> tuple[str, ...]:
    """Device types backend ``name`` takes tensors of (() means any). Under TRITON_INTERPRET=1 (and in
    a dry run) the Triton kernels also take CPU tensors: slow, for testing; ``auto`` never picks them."""
    devices = BACKENDS[name].devices
    if name == "triton" and triton_on_cpu():
        return devices + ("cpu",)
    return devices


class BackendUnavailableError(RuntimeError):
    pass


def load(name: str) -> tuple[ModuleType | None, str]:
    """(kernel module, "") if backend ``name`` can run here, else (None, why not)."""
    if runs_on(name) == ("cuda",) and not torch.cuda.is_available():
        return None, "no CUDA device is available"
    return _import(name)


@functools.cache
def _import(name: str) -> tuple[ModuleType | None, str]:
    backend = BACKENDS[name]
    try:
        module = importlib.import_module(backend.module)
    except ModuleNotFoundError as e:
        if e.name == backend.module:
            return None, "not part of this version of sgllie"
        return None, f"needs {backend.needs}: {e}"
    except Exception as e:  # a broken build must not break the package: report it, fall back
        return None, f"failed to load ({type(e).__name__}: {e})"
    why_not = getattr(module, "unavailable_reason", lambda: "")()
    return (None, why_not) if why_not else (module, "")


def available_backends() -> list[str]:
    """Names of the backends this install can run, in the order ``auto`` prefers them."""
    return [name for name in BACKENDS if load(name)[0] is not None]


def backend_status() -> dict[str, str]:
    """Each backend's name mapped to "available" or the reason it is not."""
    return {name: load(name)[1] or "available" for name in BACKENDS}


@contextlib.contextmanager
def use_backend(name: str):
    """Run the ops in this block on backend ``name`` ("auto" restores automatic choice)."""
    _check_name(name, "use_backend")
    token = _override.set(name)
    try:
        yield
    finally:
        _override.reset(token)


def _check_name(name: str, where: str) -> None:
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"{where}: unknown backend {name!r}; choose from 'auto', "
                         + ", ".join(repr(n) for n in BACKENDS))


@torch.compiler.assume_constant_result
def resolve(op: str, requested: str | None, device: torch.device) -> str:
    """The backend that runs ``op`` on tensors of ``device``, or a clear error why none can.

    Under torch.compile the answer is baked into the graph when it is compiled: change the backend
    before compiling, not inside a compiled region.
    """
    where = "argument backend="
    name = requested
    if name is None:
        name, where = _override.get(), "use_backend()"
    if name is None:
        name, where = os.environ.get("SGLLIE_BACKEND") or "auto", "SGLLIE_BACKEND"
    _check_name(name, f"sgllie.ops.{op} ({where})")
    if name == "auto":
        for candidate in PREFERENCE.get(device.type, ("reference",)):
            if load(candidate)[0] is not None:
                return candidate
            _warn_fallback(candidate)
        return "reference"
    module, why_not = load(name)
    if module is None:
        raise BackendUnavailableError(f"sgllie.ops.{op}: backend {name!r} (from {where}) is not available: "
                                      f"{why_not}. Available: {', '.join(available_backends())}")
    devices = runs_on(name)
    if devices and device.type not in devices:
        raise BackendUnavailableError(f"sgllie.ops.{op}: backend {name!r} (from {where}) runs on "
                                      f"{'/'.join(devices)} tensors, got a {device.type} tensor")
    return name


@functools.cache
def _warn_fallback(name: str) -> None:
    """One line, once per process, when ``auto`` passes over a backend that is meant to be here."""
    why_not = load(name)[1]
    if why_not != "not part of this version of sgllie":
        warnings.warn(f"sgllie: backend {name!r} unavailable ({why_not}); using a slower one", stacklevel=4)


def auto_requested(requested: str | None) -> bool:
    """Whether a call with ``backend=requested`` leaves the choice to ``auto``."""
    name = requested or _override.get() or os.environ.get("SGLLIE_BACKEND") or "auto"
    return name == "auto"


_fastest: dict[tuple, str] = {}


def shape_class(t: torch.Tensor) -> tuple:
    """What a timing is valid for: dtype, batch, channels, H*W rounded up to a power of two, and the
    layout (the Triton kernels read channels-last activations in place, the CUDA ones copy them)."""
    last = t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
    return (str(t.dtype), t.shape[0], t.shape[1], 1 << max(t.shape[-2] * t.shape[-1] - 1, 0).bit_length(),
            "channels_last" if last else "contiguous")


def fastest(op: str, key: tuple, run) -> str:
    """The faster of the ``RACED`` backends for ``op`` on inputs of class ``key``, timing ``run(name)``
    (which runs the op on the caller's inputs with backend ``name``) the first time a key is seen.
    Only called when both are available and the choice is ``auto``."""
    if (op, key) not in _fastest:
        times = {name: _time_on_device(lambda name=name: run(name)) for name in RACED}
        _fastest[op, key] = min(RACED, key=times.__getitem__)  # ties: the first, our own CUDA kernels
    return _fastest[op, key]


def _time_on_device(fn, repeats: int = 3) -> float:
    """Median milliseconds of ``fn`` on the current CUDA stream, after one warm-up call (which also
    runs any Triton autotuning and compilation)."""
    with torch.no_grad():
        fn()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def kernels(name: str) -> ModuleType:
    module, why_not = load(name)
    if module is None:
        raise BackendUnavailableError(f"backend {name!r} is not available: {why_not}")
    return module
