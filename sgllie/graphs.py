"""Fixed-shape inference with little Python per frame: ``EnhanceNet.enhance`` with its factor network
replayed as a CUDA graph.

    enhance = sgllie.graphs.GraphedEnhance(model)
    for frame in frames:            # (N, 3, H, W) CUDA tensors, the same shape and dtype each time
        out = enhance(frame)        # downscale, one graph replay (the 7 blocks), the curve

Only the network, on the image downscaled to its working resolution, is in the graph: the full-size
frame is read where it lies, by the downscale and by the curve, and never copied into a graph's
input buffer (at 4K in float16 that copy moved 100 MB a frame, ~35 us on an H100). One graph per
working-resolution shape and dtype (the few most recent are kept). Where capture is impossible
(CPU tensors, a capture error), the network runs plainly, with the same result; a capture error
is reported once.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Callable

import torch
from torch import Tensor

from . import ops
from .model import ITERATIONS, EnhanceNet


def _capturable(x: Tensor) -> bool:
    return x.device.type == "cuda"


class _Graph:
    """``model.factor_network`` captured for one input shape: a static input and output."""

    def __init__(self, model: EnhanceNet, example: Tensor, warmup: int):
        self.input = example.clone()
        # Warm up on a side stream first: autotuning and kernel compilation must not be captured.
        stream = torch.cuda.Stream(example.device)
        stream.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                model.factor_network(self.input)
        torch.cuda.current_stream(example.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = model.factor_network(self.input)

    def __call__(self, x_down: Tensor) -> Tensor:
        self.input.copy_(x_down)
        self.graph.replay()
        return self.output


class GraphedEnhance:
    """``model.enhance`` with the factor network replayed as a CUDA graph per working shape and dtype.

    Each call returns a new tensor. ``backend`` is fixed at capture, as under torch.compile; the
    model must not change after the first call. Frames are not checked for NaN/Inf (the check is a
    host sync per frame; ``model.enhance`` makes it). Calls on one CUDA stream at a time: a graph's
    buffers are reused by the next call.
    """

    def __init__(self, model: EnhanceNet, backend: str | None = None, max_graphs: int = 4, warmup: int = 2):
        self.model = model
        self.backend = backend
        self.max_graphs = max_graphs
        self.warmup = warmup
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self._uncapturable: set[tuple] = set()

    @torch.inference_mode()
    def __call__(self, x: Tensor, adjust_factor_map: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """As ``model.enhance(x, adjust_factor_map)``."""
        ops.check.tensor4d("GraphedEnhance", "x", x, channels=3)
        h, w = x.shape[-2:]
        with ops.use_backend(self.backend or "auto"), ops.no_finite_checks():
            padded = self.model.pad(x)
            r = self._factor_network(self.model.downscale(padded))
            if adjust_factor_map is not None:
                r = adjust_factor_map(r.clone())  # a graph's output buffer: the next call overwrites it
            return ops.le_curve(padded, r, ITERATIONS)[..., :h, :w]

    def _factor_network(self, x_down: Tensor) -> Tensor:
        key = (tuple(x_down.shape), x_down.dtype, x_down.device)
        if not _capturable(x_down) or key in self._uncapturable:
            return self.model.factor_network(x_down)
        graph = self._graphs.get(key) or self._capture(key, x_down)
        if graph is None:
            return self.model.factor_network(x_down)
        self._graphs.move_to_end(key)
        return graph(x_down)

    def _capture(self, key: tuple, x_down: Tensor) -> _Graph | None:
        try:
            graph = _Graph(self.model, x_down, self.warmup)
        except Exception as e:  # e.g. an op that cannot be captured: run without a graph
            self._uncapturable.add(key)
            warnings.warn(f"sgllie.graphs: cannot capture the model's network for input {tuple(key[0])} "
                          f"{key[1]} as a CUDA graph ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                          "running it without one", stacklevel=4)
            return None
        self._graphs[key] = graph
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        return graph
