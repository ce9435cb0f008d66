"""The tensor cores' float32 dot products, modelled for Triton's interpreter.

The interpreter computes every ``tl.dot`` in exact float32 whatever its ``input_precision``, so a
kernel that asks for TF32 would pass its tests here and lose precision on a GPU. Under
``tensor_core_dots()`` it rounds as the GPU does: a "tf32" dot reads only the top 19 bits of each
float32 operand (the tensor cores ignore the low 13) and accumulates in float32; "tf32x3" is
Triton's decomposition (its F32DotTC pass): big = operand rounded to TF32 (cvt.rna), small =
operand - big, then dot(a_small, b_big) + dot(a_big, b_small) + dot(a_big, b_big), each a "tf32" dot,
accumulated in that order onto the accumulator.
"""
from __future__ import annotations

import contextlib

import numpy as np
from triton._C.libtriton import ir
from triton.runtime import interpreter

_LOW_BITS = np.uint32(0x1FFF)  # the 13 mantissa bits TF32 drops


def _truncate(a: np.ndarray) -> np.ndarray:
    return (a.view(np.uint32) & ~_LOW_BITS).view(np.float32)


def _round(a: np.ndarray) -> np.ndarray:
    """cvt.rna.tf32.f32: to nearest, ties away from zero (the sign bit is outside the mantissa)."""
    bits = a.view(np.uint32)
    finite = (bits & np.uint32(0x7F800000)) != np.uint32(0x7F800000)
    rounded = np.where(finite, bits + np.uint32(0x1000), bits) & ~_LOW_BITS
    return rounded.astype(np.uint32).view(np.float32)


def _tf32_dot(a: np.ndarray, b: np.ndarray, acc: np.ndarray) -> np.ndarray:
    return np.matmul(_truncate(a), _truncate(b), dtype=np.float32) + acc


def _dot(a: np.ndarray, b: np.ndarray, acc: np.ndarray, precision) -> np.ndarray:
    if precision == ir.INPUT_PRECISION.TF32:
        return _tf32_dot(a, b, acc)
    a_big, b_big = _round(a), _round(b)
    with np.errstate(invalid="ignore", over="ignore"):
        partial = _tf32_dot(a_big, b - b_big, _tf32_dot(a - a_big, b_big, acc))
    return _tf32_dot(a_big, b_big, partial)


@contextlib.contextmanager
def tensor_core_dots():
    """Inside the block, the interpreter's float32 tl.dot in "tf32"/"tf32x3" rounds as on a GPU."""
    builder = type(interpreter.interpreter_builder)
    exact = builder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        tf32 = input_precision in (ir.INPUT_PRECISION.TF32, ir.INPUT_PRECISION.TF32x3)
        if not (tf32 and a.data.dtype == b.data.dtype == d.data.dtype == np.float32):
            return exact(self, a, b, d, input_precision, max_num_imprecise_acc)
        return interpreter.TensorHandle(_dot(a.data, b.data, d.data, input_precision), d.dtype.scalar)

    builder.create_dot = create_dot
    try:
        yield
    finally:
        builder.create_dot = exact
