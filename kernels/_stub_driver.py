"""A stand-in for Triton's GPU driver, so that Triton's own launch path runs where there is no GPU.

Inside ``stub_driver()`` the Triton backend takes CPU tensors and a launch goes the whole way a GPU's
does: Triton's argument binding and specialisation, its compile cache (real cubins, built for the
stub's target), the autotuner (every config compiled; each timed faster than the one before, so
the last is chosen: not the default) and sgllie's own path to the compiled kernels
(kernels/_runtime.py). Only the driver's work is skipped: no binary is loaded, and the launcher
runs nothing: it records the launch's build, grid and arguments, or with ``record=False`` not even
that. For the tests of that path and for the host-time benchmark (benchmarks/host_overhead.py);
outputs stay uninitialised (set SGLLIE_CHECK_FINITE=0 when chaining ops).
"""
from __future__ import annotations

import contextlib
import inspect
import itertools
from dataclasses import dataclass

import torch
from triton.backends.compiler import GPUTarget
from triton.compiler import CompiledKernel
from triton.runtime import driver

from sgllie.ops import _backends


@dataclass(frozen=True)
class Launch:
    kernel: str
    build: str  # the compiled kernel's hash
    grid: tuple[int, int, int]
    args: tuple  # every parameter of the kernel, constexprs included, as Triton's launchers take them
    context: tuple  # the stream, the loaded function and the packed metadata the launcher was given


STREAM = 0x5EED  # the stub's current stream (not 0: a launcher given no stream would show)

# where launches are recorded: the current stub_driver block's list, or None (the launchers of compiled
# kernels outlive the block, in Triton's caches and sgllie's)
_launches: list[Launch] | None = None


class _Utils:
    def load_binary(self, name, kernel, shared, device):
        # handles (not None: Triton would load them again), registers, spills, and from Triton 3.4 on the
        # most threads a block
        loaded = "module", "function", 0, 0, 1024
        return loaded if "n_max_threads" in inspect.getsource(CompiledKernel._init_handles) else loaded[:4]

    def get_device_properties(self, device):
        return {"max_shared_mem": 232448, "multiprocessor_count": 132, "max_num_regs": 65536, "warpSize": 32,
                "sm_clock_rate": 1755000, "mem_clock_rate": 2619000, "mem_bus_width": 5120}


class _StubDriver:
    """The parts of Triton's CUDA driver that its launch path calls (Triton 3.3 to 3.9)."""

    def __init__(self, target: GPUTarget):
        self.utils = _Utils()
        self._target = target
        self._timed = itertools.count(1)

    def is_active(self):
        return True

    def get_current_device(self):
        return 0

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return STREAM

    def get_current_target(self):
        return self._target

    def get_active_torch_device(self):
        return torch.device("cpu")

    def launcher_cls(self, src, metadata):
        name, build = src.fn.__name__, metadata.hash

        def launcher(grid_0, grid_1, grid_2, stream, function, packed_metadata, launch_metadata, enter_hook,
                     exit_hook, *args):
            if enter_hook is not None:  # as Triton's launchers call the hooks: around the launch
                enter_hook(launch_metadata)
            if _launches is not None:
                _launches.append(Launch(name, build, (grid_0, grid_1, grid_2), args,
                                        (stream, function, packed_metadata)))
            if exit_hook is not None:
                exit_hook(launch_metadata)
        return launcher

    def get_benchmarker(self):
        def bench(kernel_call, quantiles=None, **_):  # each config timed faster than the one before
            kernel_call()
            return [1.0 / next(self._timed)] * len(quantiles or (0,))
        return bench

    def get_empty_cache_for_benchmark(self):
        return torch.empty(0)

    def clear_cache(self, cache):
        pass


@contextlib.contextmanager
def stub_driver(arch: int = 90, record: bool = True):
    """Inside the block Triton launches through a stub driver for an sm_``arch`` GPU: yields the list
    each launch's Launch is appended to (with ``record=False`` it stays empty: a record keeps the
    launch's tensors alive)."""
    if _backends.triton_interpreting():
        raise RuntimeError("sgllie.kernels.stub_driver: needs compiled kernels; unset TRITON_INTERPRET")
    if torch.cuda.is_available():  # Triton's caches would keep the stub's kernels for the real GPU
        raise RuntimeError("sgllie.kernels.stub_driver: for machines without a GPU")
    global _launches
    launches: list[Launch] = []
    outer, _launches = _launches, (launches if record else None)
    saved = dict(vars(driver))  # not reset_active(): from Triton 3.6 on it creates the real driver
    driver.set_active(_StubDriver(GPUTarget("cuda", arch, 32)))
    try:
        with _backends.triton_dry_run():
            yield launches
    finally:
        vars(driver).update(saved)
        _launches = outer
