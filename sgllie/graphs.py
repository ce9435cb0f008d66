"""Fixed-shape inference with little Python per frame: ``EnhanceNet.enhance`` captured as a CUDA graph.

    enhance = sgllie.graphs.GraphedEnhance(model)
    for frame in frames:            # (N, 3, H, W) CUDA tensors, the same shape and dtype each time
        out = enhance(frame)        # one graph replay: the 9 kernels of the forward, no Python between

One graph per input shape and dtype (the few most recent are kept). Where capture is impossible
(CPU tensors, a capture error), it calls ``model.enhance`` instead and says why once.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict

import torch
from torch import Tensor

from . import ops
from .model import EnhanceNet


class _Graph:
    def __init__(self, model: EnhanceNet, example: Tensor, warmup: int):
        self.input = example.clone()
        # Warm up on a side stream first: autotuning and kernel compilation must not be captured.
        stream = torch.cuda.Stream(example.device)
        stream.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                model.enhance(self.input)
        torch.cuda.current_stream(example.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = model.enhance(self.input)

    def __call__(self, x: Tensor) -> Tensor:
        if x.data_ptr() != self.input.data_ptr():
            self.input.copy_(x)
        self.graph.replay()
        return self.output


class GraphedEnhance:
    """``model.enhance`` replayed as a CUDA graph per input shape and dtype.

    The returned tensor is the graph's own output buffer: the next call with the same shape
    overwrites it, so copy it (``.clone()``, ``.cpu()``) if you keep it. ``backend`` is fixed at
    capture, as under torch.compile. The model must not change after the first call.
    """

    def __init__(self, model: EnhanceNet, backend: str | None = None, max_graphs: int = 4, warmup: int = 2):
        self.model = model
        self.backend = backend
        self.max_graphs = max_graphs
        self.warmup = warmup
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self._uncapturable: set[tuple] = set()

    @torch.inference_mode()
    def __call__(self, x: Tensor) -> Tensor:
        with ops.use_backend(self.backend or "auto"):
            if x.device.type != "cuda":
                return self.model.enhance(x)
            key = (tuple(x.shape), x.dtype, x.device)
            graph = self._graphs.get(key)
            if graph is None:
                if key in self._uncapturable:
                    return self.model.enhance(x)
                graph = self._capture(key, x)
                if graph is None:
                    return self.model.enhance(x)
            self._graphs.move_to_end(key)
            return graph(x)

    def _capture(self, key: tuple, x: Tensor) -> _Graph | None:
        try:
            graph = _Graph(self.model, x, self.warmup)
        except Exception as e:  # e.g. an op that cannot be captured: run without a graph
            self._uncapturable.add(key)
            warnings.warn(f"sgllie.graphs: cannot capture the model for input {tuple(x.shape)} "
                          f"{x.dtype} as a CUDA graph ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                          "running it without one", stacklevel=3)
            return None
        self._graphs[key] = graph
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        return graph
