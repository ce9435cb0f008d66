"""The tensor cores' float32 dot products, modelled for Triton's interpreter.

The interpreter computes every ``tl.dot`` in exact float32 whatever its ``input_precision``, so a
kernel that asks for TF32 would pass its tests here and lose precision on a GPU. Under
``tensor_core_dots()`` a "tf32" dot rounds as the GPU does: it reads only the top 19 bits of each
float32 operand (the tensor cores ignore the low 13) and accumulates in float32. The kernels build
their 3xTF32 products from such dots (kernels/dsconv2d.py's _dot); Triton's own "tf32x3" is not
modelled, and refused here, so that no kernel's tests pass on exact products it would not get.
"""
from __future__ import annotations

import contextlib

import numpy as np
from triton._C.libtriton import ir
from triton.runtime import interpreter

_LOW_BITS = np.uint32(0x1FFF)  # the 13 mantissa bits TF32 drops


def _truncate(a: np.ndarray) -> np.ndarray:
    return (a.view(np.uint32) & ~_LOW_BITS).view(np.float32)


def _tf32_dot(a: np.ndarray, b: np.ndarray, acc: np.ndarray) -> np.ndarray:
    return np.matmul(_truncate(a), _truncate(b), dtype=np.float32) + acc


@contextlib.contextmanager
def tensor_core_dots():
    """Inside the block, the interpreter's float32 tl.dot in "tf32" rounds as on a GPU."""
    builder = type(interpreter.interpreter_builder)
    exact = builder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if input_precision == ir.INPUT_PRECISION.TF32x3:
            raise NotImplementedError('tl.dot input_precision="tf32x3" is not modelled: build 3xTF32 '
                                      'from "tf32" dots (kernels/dsconv2d.py _dot)')
        tf32 = input_precision == ir.INPUT_PRECISION.TF32
        if not (tf32 and a.data.dtype == b.data.dtype == d.data.dtype == np.float32):
            return exact(self, a, b, d, input_precision, max_num_imprecise_acc)
        return interpreter.TensorHandle(_tf32_dot(a.data, b.data, d.data), d.dtype.scalar)

    builder.create_dot = create_dot
    try:
        yield
    finally:
        builder.create_dot = exact
