"""sgllie's own path to the kernels Triton has compiled (kernels/_runtime.py): a launch after the first of
a specialisation launches exactly what Triton's launch path would have, with no GPU: Triton's launch
path runs the whole way under a stub driver (kernels/_stub_driver.py) that records each launch's
build, grid and arguments. Real cubins are compiled for the builds (about a second each, cached).
"""
from __future__ import annotations

import contextlib

import pytest
import torch

pytestmark = pytest.mark.aot  # it builds cubins, as the ahead-of-time tests do
triton = pytest.importorskip("triton")

import sgllie.ops as ops  # noqa: E402
from sgllie.kernels import _runtime  # noqa: E402
from sgllie.kernels._stub_driver import stub_driver  # noqa: E402
from sgllie.ops import _backends  # noqa: E402

if _backends.triton_interpreting() or torch.cuda.is_available():
    pytest.skip("the stub driver is for machines without a GPU, the kernels compiled (no TRITON_INTERPRET)",
                allow_module_level=True)


def _summary(launch) -> tuple:
    """A launch with each tensor as what the kernel sees of it (dtype, shape, storage offset)."""
    args = tuple((a.dtype, tuple(a.shape), a.storage_offset()) if isinstance(a, torch.Tensor) else a
                 for a in launch.args)
    return launch.kernel, launch.build, launch.grid, args, launch.context


def _training_ops(x: torch.Tensor) -> None:
    """Every op forward and backward, the model's layers (NCHW and channels-last) and the losses, on
    ``x`` (N, 3, H, W)."""
    torch.manual_seed(0)
    n, _, h, w = x.shape
    r = (torch.rand(n, 3, h // 2 + 1, w // 2 + 1) * 2 - 1).requires_grad_()
    a = torch.rand(n, 32, h, w, requires_grad=True)
    p = [torch.rand(64, 1, 3, 3), torch.rand(64), torch.rand(32, 64, 1, 1), torch.rand(32)]
    p = [t.requires_grad_() for t in p]
    with ops.use_backend("triton"):
        y = ops.le_curve(x, r)
        z = ops.dsconv2d(a, *p, x2=a, activation="relu")
        loss = sum(ops.zero_reference_loss(y, x)) + ops.tv_loss(r) + z.mean()
        loss.backward()
        with torch.no_grad():  # inference's channels-last layers: builds of their own
            ops.dsconv2d(a.contiguous(memory_format=torch.channels_last), *p, x2=a, activation="relu")


def _launches(x: torch.Tensor, compiled_path: bool) -> list:
    with stub_driver() as launches:
        _training_ops(x)  # the first launch of each specialisation: Triton's path, either way
        del launches[:]
        with contextlib.nullcontext() if compiled_path else _runtime.through_triton():
            _training_ops(x)
    return [_summary(launch) for launch in launches]


@pytest.fixture(autouse=True)
def _no_nan_checks(monkeypatch):
    monkeypatch.setenv("SGLLIE_CHECK_FINITE", "0")  # outputs of the stub's launches are uninitialised


def test_compiled_kernel_path_launches_what_tritons_would():
    """Widths a multiple of 16 and of nothing (other builds, and autotuning keys). All of sgllie's
    launches come first: a Triton-path run leaves its own kernels in the shortcut's cache."""
    images = [torch.rand(2, 3, 24, width) for width in (48, 37)]
    ours = [_launches(x, compiled_path=True) for x in images]
    tritons = [_launches(x, compiled_path=False) for x in images]
    assert min(map(len, tritons)) >= 10
    assert ours == tritons


def test_forced_configs_launch_what_tritons_would():
    """use_config (the GPU tests run every config so) launches the plain kernel with the config's
    arguments: those launches take the shortcut too, per config, and never another config's build."""
    x = torch.rand(2, 3, 24, 40)
    ours, tritons = {}, {}
    for index in (0, 1):  # ours first: a Triton-path run leaves its own kernels in the shortcut's cache
        with _runtime.use_config(index):
            ours[index] = _launches(x, compiled_path=True)
    for index in (0, 1):
        with _runtime.use_config(index):
            tritons[index] = _launches(x, compiled_path=False)
    assert ours == tritons
    assert {launch[:2] for launch in tritons[0]} != {launch[:2] for launch in tritons[1]}


@contextlib.contextmanager
def _launch_enter_hook(hook):
    """``hook`` as Triton's launch enter hook inside the block (a profiler's: proton sets one)."""
    runtime = _runtime._HOOKS
    chain = runtime.launch_enter_hook
    if hasattr(chain, "add"):  # Triton >= 3.6: a chain of hooks
        chain.add(hook)
        try:
            yield
        finally:
            chain.remove(hook)
        return
    runtime.launch_enter_hook = hook
    try:
        yield
    finally:
        runtime.launch_enter_hook = chain


def test_launch_hooks_see_every_launch():
    """A profiler's launch hook is called for the launches that take the shortcut too, with the
    metadata Triton gives it (the kernel's name): those launches go through Triton's launcher."""
    x = torch.rand(2, 3, 24, 40)
    seen = []
    with stub_driver() as launches:
        _training_ops(x)  # compiled, and the shortcut's cache filled
        del launches[:]
        with _launch_enter_hook(lambda metadata: seen.append(metadata.get()["name"])):
            _training_ops(x)
        hooked = len(launches)
        _training_ops(x)  # and none after the hook is gone
    assert hooked >= 10 and len(launches) == 2 * hooked
    assert seen == [launch.kernel for launch in launches[:hooked]]


def test_a_new_specialisation_goes_through_triton():
    """A tensor that is not 16-byte aligned is a build of its own: never the aligned input's."""
    r = torch.rand(1, 3, 9, 11) * 2 - 1
    storage = torch.rand(1 * 3 * 17 * 21 + 1)
    aligned = storage[:-1].view(1, 3, 17, 21)
    shifted = storage[1:].view(1, 3, 17, 21)  # 4 bytes on
    with stub_driver() as launches, ops.use_backend("triton"):
        for x in (aligned, aligned, shifted, shifted, aligned):
            ops.le_curve(x, r)
    builds = [launch.build for launch in launches if launch.kernel == "_le_curve_fwd"][-5:]
    assert builds[0] == builds[1] == builds[4] != builds[2] == builds[3]


def test_host_overhead_rows_launch_through_the_stub_driver():
    """benchmarks/host_overhead.py's launching columns: each Triton row launches, both ways."""
    from benchmarks import host_overhead

    for column in host_overhead.COLUMNS[1:]:
        with host_overhead._launching(column), stub_driver() as launches:  # the same stub, recording
            for row in host_overhead._rows():
                if row.triton:
                    with host_overhead._nan_checks(row.nan_checks):
                        del launches[:]
                        row.call()
                        assert launches, (column, row.op, row.layer)
