"""Global-memory bytes of each Triton launch, counted under the interpreter (TRITON_INTERPRET=1).

The model of a GPU's DRAM traffic: a program (one block of the grid) fetches each byte it touches
once (its re-reads hit its SM's L1/L2); bytes shared by two programs (a stencil's halo) are
fetched by each. So a launch's count is, summed over its programs, the distinct bytes each program
loads (reads) and stores (writes), masked-off lanes excluded.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass

import numpy as np

from sgllie.ops import _backends, _library


@dataclass
class LaunchCost:
    kernel: str
    programs: int
    read: int      # bytes
    written: int   # bytes


_log: contextvars.ContextVar[list | None] = contextvars.ContextVar("sgllie_triton_costs", default=None)


@contextlib.contextmanager
def counting():
    """Count every launch inside the block (interpreter only); yields the list of LaunchCost."""
    if not _backends.triton_interpreting():
        raise RuntimeError("sgllie.kernels: byte counting needs TRITON_INTERPRET=1")
    costs: list[LaunchCost] = []
    token = _log.set(costs)
    try:
        yield costs
    finally:
        _log.reset(token)


class _ProgramBytes:
    """Distinct addresses per program, flushed into the launch totals when the program changes."""

    def __init__(self, cost: LaunchCost):
        self.cost = cost
        self.reads: list[tuple[np.ndarray, int]] = []   # (addresses, bytes per element)
        self.writes: list[tuple[np.ndarray, int]] = []

    def add(self, kind: str, ptrs, mask, itemsize: int) -> None:
        addresses = np.asarray(ptrs.data).ravel()
        if mask is not None:
            addresses = addresses[np.asarray(mask.data, dtype=bool).ravel()]
        (self.reads if kind == "read" else self.writes).append((addresses, itemsize))

    def flush(self) -> None:
        for chunks, field in ((self.reads, "read"), (self.writes, "written")):
            if chunks:
                total = 0
                by_size: dict[int, list[np.ndarray]] = {}
                for addresses, size in chunks:
                    by_size.setdefault(size, []).append(addresses)
                for size, parts in by_size.items():
                    total += np.unique(np.concatenate(parts)).size * size
                setattr(self.cost, field, getattr(self.cost, field) + total)
            chunks.clear()


@contextlib.contextmanager
def launch_scope(name: str, grid, args, kwargs):
    """Count the bytes of the one launch inside the block, if counting() is active."""
    costs = _log.get()
    if costs is None:
        yield
        return
    from triton.runtime import interpreter  # noqa: PLC0415

    builder = interpreter.interpreter_builder
    cost = LaunchCost(name, 0, 0, 0)
    program = _ProgramBytes(cost)

    def itemsize(ptrs) -> int:
        return np.dtype(interpreter._get_np_dtype(ptrs.get_element_ty())).itemsize

    def masked_load(ptrs, mask, other, cache_policy, is_volatile):
        program.add("read", ptrs, mask, itemsize(ptrs))
        return type(builder).create_masked_load(builder, ptrs, mask, other, cache_policy, is_volatile)

    def masked_store(ptrs, value, mask, cache_policy):
        program.add("write", ptrs, mask, itemsize(ptrs))
        return type(builder).create_masked_store(builder, ptrs, value, mask, cache_policy)

    def set_grid_idx(x, y, z):
        program.flush()
        cost.programs += 1
        return type(builder).set_grid_idx(builder, x, y, z)

    patched = {"create_masked_load": masked_load, "create_masked_store": masked_store,
               "set_grid_idx": set_grid_idx}
    for attr, fn in patched.items():
        setattr(builder, attr, fn)
    from torch.utils._python_dispatch import _disable_current_modes  # noqa: PLC0415
    try:
        with _disable_current_modes():  # the interpreter's own copies of the arguments are no launches
            yield
    finally:
        for attr in patched:
            delattr(builder, attr)
        program.flush()
        costs.append(cost)


# Aten ops that launch no kernel on a GPU: views, allocation, aliasing, autograd bookkeeping.
_NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "alias",
              "lift_fresh", "_local_scalar_dense", "is_nonzero", "set_", "resize_"}


def _launches_kernel(func) -> bool:
    return not (func.is_view or func._schema.name.split("::")[1] in _NO_KERNEL)


def _aten_kernel_mode(names: list):
    """A dispatch mode appending to ``names`` the aten ops that would launch a GPU kernel, also inside
    sgllie's custom ops (whose Python body it runs under itself: a custom op would hide its insides)."""
    from torch.utils._python_dispatch import TorchDispatchMode  # noqa: PLC0415

    class Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func.namespace == "sgllie":
                with self:
                    return _library.BODIES[func._schema.name](*args, **kwargs)
            if _launches_kernel(func):
                names.append(func._schema.name)
            return func(*args, **kwargs)

    return Mode()


@contextlib.contextmanager
def launches():
    """Every kernel launch a GPU would see inside the block, in order: sgllie's Triton launches (by
    kernel name) and the aten ops around and inside them (``aten::op``, one launch each: a lower
    bound for the few that take several). Interpreter only; turn the NaN input checks off
    (SGLLIE_CHECK_FINITE=0): they synchronise, which is not what is being counted."""
    with counting() as events, _aten_kernel_mode(events):  # one list: Triton costs and aten names interleave
        names: list[str] = []
        yield names
    names.extend(e.kernel if isinstance(e, LaunchCost) else e for e in events)
