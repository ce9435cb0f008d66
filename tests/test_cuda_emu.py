"""The CUDA kernels (csrc/cuda) beyond tests/test_ops.py, run on the CPU: their own source compiled
by g++ against a host emulation of the CUDA execution model (tests/cuda_emu). Half precision,
inputs smaller than a tile, model-sized channels, bit-identical reruns, and the emulator itself.

    python -m pytest -m cuda_emu
"""
from __future__ import annotations

import pytest
import torch

from sgllie.ops import _backends
from op_cases import HALF, OPS, assert_close, cases, outputs_and_grads, truth

pytestmark = pytest.mark.cuda_emu
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def emu_ops():
    if "cuda_emu" not in _backends.BACKENDS:
        pytest.skip("SGLLIE_TEST_CUDA_EMU=0")
    module, why_not = _backends.load("cuda_emu")
    if module is None:
        if "CUDA headers" in why_not:
            pytest.skip(why_not)
        pytest.fail(f"the host-emulation build of csrc/cuda failed: {why_not}")
    return torch.ops.sgllie_cuda_emu


def test_emulation_builds(emu_ops):
    """Where g++ and the CUDA headers are, the emulated backend must load (else every cuda_emu
    row of tests/test_ops.py would silently be missing)."""
    assert "cuda_emu" in _backends.available_backends()


def test_emulator_runs_a_block_reduction(emu_ops):
    x = torch.rand(1000)
    torch.testing.assert_close(emu_ops.selftest(x, 0), x.sum(), rtol=1e-5, atol=1e-4)


def test_emulator_reports_a_divergent_syncthreads(emu_ops):
    with pytest.raises(RuntimeError, match="__syncthreads not reached by every thread"):
        emu_ops.selftest(torch.zeros(1), 1)


def test_emulator_reports_a_half_warp_shuffle(emu_ops):
    with pytest.raises(RuntimeError, match="deadlock at a warp shuffle"):
        emu_ops.selftest(torch.zeros(1), 2)


@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_emulator_exposes_a_missing_barrier(emu_ops, monkeypatch, order):
    """Each thread reads its neighbour's shared slot with no __syncthreads: run in either thread
    order, some thread reads before its neighbour writes, so the result is wrong, not lucky."""
    monkeypatch.setenv("SGLLIE_EMU_THREAD_ORDER", order)
    synchronised = torch.tensor([b * 100 + (t + 1) % 64 for b in range(2) for t in range(64)], dtype=torch.int32)
    assert not torch.equal(emu_ops.selftest(torch.zeros(1), 3), synchronised)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("op", OPS)
def test_half_precision_io(emu_ops, op, dtype):
    """float16/bfloat16 in and out, computed in float32: against the float64 reference on the same
    (rounded) inputs, within the dtype's tolerance."""
    fused, ref, inputs = cases("cuda_emu", CPU, dtype)[op]
    assert_close(outputs_and_grads(fused, inputs), truth(ref, inputs), dtype, op)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("op", OPS)
def test_full_precision(emu_ops, op, dtype):
    fused, ref, inputs = cases("cuda_emu", CPU, dtype)[op]
    assert_close(outputs_and_grads(fused, inputs), truth(ref, inputs), dtype, op)


@pytest.mark.parametrize("op", OPS)
def test_smaller_than_a_tile(emu_ops, op):
    fused, ref, inputs = cases("cuda_emu", CPU, torch.float32, small=True)[op]
    assert_close(outputs_and_grads(fused, inputs), truth(ref, inputs), torch.float32, op)


@pytest.mark.parametrize("op", OPS)
def test_deterministic_in_any_block_order(emu_ops, op, monkeypatch):
    """Bit for bit the same with the blocks, and each block's threads, run in reverse: a GPU runs
    them in any order, so every reduction must be in a fixed order (no float atomics) and every
    shared-memory hand-over behind a barrier."""
    fused, _, inputs = cases("cuda_emu", CPU, torch.float32)[op]
    first = outputs_and_grads(fused, inputs)
    monkeypatch.setenv("SGLLIE_EMU_BLOCK_ORDER", "reverse")
    monkeypatch.setenv("SGLLIE_EMU_THREAD_ORDER", "reverse")
    second = outputs_and_grads(fused, inputs)
    for a, b in zip(first, second):
        assert torch.equal(a, b), op
