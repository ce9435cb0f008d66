"""Fixed-shape inference with little Python per frame: ``EnhanceNet.enhance`` replayed as CUDA graphs.

Two ways, for two kinds of caller:

    enhance = sgllie.graphs.GraphedEnhance(model)
    for frame in frames:            # (N, 3, H, W) CUDA tensors, any shapes
        out = enhance(frame)        # downscale, one graph replay (the 7 blocks), the curve

GraphedEnhance takes any frame and returns a new tensor; only the network, on the image downscaled to
its working resolution, is in the graph (one per working shape and dtype, the few most recent
kept), so the full-size frame is read where it lies and never copied into a graph's buffer (at 4K
in float16 that copy moves 100 MB, ~35 us on an H100). It takes ``adjust_factor_map`` (temporal
smoothing) as ``enhance`` does. But the downscale and the curve are launched from Python each frame:
host work that a fast GPU can take longer to be given than to run (benchmarks/host_overhead.py).

    run = sgllie.graphs.StaticEnhance(model, (1, 3, 2160, 3840), torch.float16)
    for frame in frames:
        run.input.copy_(frame)      # or decode / upload straight into run.input
        out = run()                 # one replay: the whole forward, no Python between its kernels

StaticEnhance is the whole of ``enhance`` for one frame shape as one graph, reading and writing
fixed buffers, as CUDA graphs are used in PyTorch (``torch.cuda.graphs``): the least host work
a frame.

Where capture is impossible (CPU tensors, a capture error), both compute the same result plainly;
a capture error is reported once.
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


def _captured(fn: Callable[[], Tensor], device: torch.device, warmup: int) -> tuple[torch.cuda.CUDAGraph, Tensor]:
    """``fn()`` recorded as a CUDA graph: the graph, and the output buffer each replay overwrites.
    ``fn`` runs ``warmup`` times on a side stream first: autotuning and kernel compilation must not
    be captured."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = fn()
    return graph, output


def _capture_failed(what: str, e: Exception, stacklevel: int) -> None:
    warnings.warn(f"sgllie.graphs: cannot capture {what} as a CUDA graph ({type(e).__name__}: "
                  f"{str(e).splitlines()[0] if str(e) else ''}); running it without one", stacklevel=stacklevel + 1)


def _enhanced(model: EnhanceNet, x: Tensor, factor_network: Callable[[Tensor], Tensor],
              adjust_factor_map: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """``model.enhance(x)`` with its network's call given, unchecked (the callers check once)."""
    h, w = x.shape[-2:]
    padded = model.pad(x)
    r = factor_network(model.downscale(padded))
    if adjust_factor_map is not None:
        r = adjust_factor_map(r)
    return ops.le_curve(padded, r, ITERATIONS)[..., :h, :w]


class _Graph:
    """``model.factor_network`` captured for one input shape: a static input and output."""

    def __init__(self, model: EnhanceNet, example: Tensor, warmup: int):
        self.input = example.clone()
        self.graph, self.output = _captured(lambda: model.factor_network(self.input), example.device, warmup)

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
        adjust = None if adjust_factor_map is None else (
            lambda r: adjust_factor_map(r.clone()))  # a graph's output buffer: the next call overwrites it
        with ops.use_backend(self.backend or "auto"), ops.no_finite_checks():
            return _enhanced(self.model, x, self._factor_network, adjust)

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
            # (the caller's frame: above _factor_network, _enhanced, __call__ and inference_mode's wrapper)
            _capture_failed(f"the model's network for input {tuple(key[0])} {key[1]}", e, stacklevel=6)
            return None
        self._graphs[key] = graph
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        return graph


class StaticEnhance:
    """``model.enhance`` of one frame shape as one CUDA graph, between fixed buffers.

    Write each frame into ``input`` (shape fixed here; dtype and device the model's unless given),
    call, and read ``output``: the same tensor every call, overwritten by the next (clone it to keep
    it). The replay is the whole forward (downscale, the seven blocks, the curve) with no Python
    between its kernels. ``backend`` is fixed at capture; the model must not change after it. Frames are not checked for
    NaN/Inf. Where capture is impossible (CPU tensors, a capture error, reported once) each call
    computes the same result plainly into ``output``.
    """

    def __init__(self, model: EnhanceNet, shape: tuple[int, int, int, int], dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None, backend: str | None = None, warmup: int = 2):
        if (not isinstance(shape, (tuple, list)) or len(shape) != 4 or shape[1] != 3
                or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape)):
            raise ValueError(f"sgllie.graphs.StaticEnhance: shape must be (N, 3, H, W), positive ints, got {shape!r}")
        weight = next(model.parameters())
        dtype, device = dtype or weight.dtype, device or weight.device
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"sgllie.graphs.StaticEnhance: dtype must be a floating-point torch.dtype, got {dtype!r}")
        self.model = model
        self.backend = backend
        with torch.inference_mode(False):  # a buffer the caller may write outside inference mode
            self.input = torch.zeros(shape, dtype=dtype, device=device)  # zeros: a frame for warm-up and capture
        self._graph = None
        if _capturable(self.input):
            try:
                self._graph, self.output = _captured(self._enhance, self.input.device, warmup)
            except Exception as e:
                _capture_failed(f"the model for frames {tuple(shape)} {dtype}", e, stacklevel=2)
        if self._graph is None:
            self.output = self._enhance()

    @torch.inference_mode()
    def _enhance(self) -> Tensor:
        with ops.use_backend(self.backend or "auto"), ops.no_finite_checks():
            return _enhanced(self.model, self.input, self.model.factor_network)

    def __call__(self) -> Tensor:
        """The enhanced ``input``, in ``output``."""
        if self._graph is not None:
            self._graph.replay()
        else:
            with torch.inference_mode():  # (output is an inference tensor)
                self.output.copy_(self._enhance())
        return self.output
