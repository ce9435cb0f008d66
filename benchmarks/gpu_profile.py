"""Where each fused op's time goes on a GPU: the Triton kernels alone (replayed as a CUDA graph, so
no launch overhead), the kernels launched from Python, and the public op call, against the op's
memory floor; the host's share of a call timed as the benchmarks time it; every dsconv2d forward
config on the 4K model's layers. Needs CUDA. ``python -m benchmarks.gpu_profile`` prints Markdown
tables.
"""
from __future__ import annotations

import functools
import time

import torch
from triton.testing import do_bench, do_bench_cudagraph

import sgllie
import sgllie.ops as ops
from sgllie import kernels as K
from sgllie.graphs import GraphedEnhance, StaticEnhance
from sgllie.kernels._runtime import AUTOTUNED, through_triton, use_config
from sgllie.kernels.dsconv2d import forward_kernel

BYTES_PER_S = 3.0e12  # H100 device-to-device copy, counting reads and writes


def _rand(*shape, lo=0.0, dtype=torch.float32):
    return torch.empty(*shape, device="cuda").uniform_(lo, 1.0).to(dtype)


def _cases():
    n, h, w = 8, 512, 512
    f = 4
    for dtype in (torch.float32, torch.float16):
        x, r = _rand(1, 3, 2160, 3840, dtype=dtype), _rand(1, 3, 180, 320, lo=-1, dtype=dtype)
        yield (f"le_curve fwd 4K {str(dtype)[6:]}", lambda x=x, r=r: K.le_curve(x, r, 8),
               lambda x=x, r=r: ops.le_curve(x, r), 2 * x.numel() * x.element_size())
    x, r, g = _rand(n, 3, h, w), _rand(n, 3, h, w, lo=-1), _rand(n, 3, h, w)
    yield ("le_curve bwd 8x3x512x512", lambda x=x, r=r, g=g: K.le_curve_backward(g, x, r, 8), None,
           5 * x.numel() * f)
    for c1, c2 in ((32, 0), (32, 32)):
        a, b = _rand(n, c1, h, w), (_rand(n, c2, h, w) if c2 else None)
        c = c1 + c2
        p = [_rand(c, 1, 3, 3, lo=-1), _rand(c, lo=-1), _rand(32, c, 1, 1, lo=-1) / c ** 0.5, _rand(32, lo=-1)]
        yield (f"dsconv2d fwd {c1}+{c2}->32", lambda a=a, b=b, p=p: K.dsconv2d(a, *p, x2=b, activation="relu"),
               lambda a=a, b=b, p=p: ops.dsconv2d(a, *p, x2=b, activation="relu"), (c + 32) * n * h * w * f)
        gy, y = _rand(n, 32, h, w, lo=-1), _rand(n, 32, h, w, lo=-1).clamp_min(0)  # y: a relu's output
        yield (f"dsconv2d bwd {c1}+{c2}->32", lambda a=a, b=b, p=p, gy=gy, y=y:
               K.dsconv2d_backward(gy, a, *p, x2=b, activation="relu", out=y), None, (64 + 2 * c) * n * h * w * f)
    y, i = _rand(n, 3, h, w), _rand(n, 3, h, w)
    yield ("zero_reference_loss fwd", lambda: K.zero_reference_loss_forward(y, i, 4, 0.6, 16),
           lambda: ops.zero_reference_loss(y, i), 2 * y.numel() * f)
    pooled = K.zero_reference_loss_forward(y, i, 4, 0.6, 16)[3]
    one = torch.ones((), device="cuda")
    yield ("zero_reference_loss bwd", lambda: K.zero_reference_loss_backward(one, one, one, pooled, y, False, 4, 16),
           None, y.numel() * f)
    yield "tv_loss fwd", lambda: K.tv_loss(r), lambda: ops.tv_loss(r), r.numel() * f
    yield "tv_loss bwd", lambda: K.tv_loss_backward(one, r), None, 2 * r.numel() * f
    for dtype in (torch.float32, torch.float16):
        model = sgllie.EnhanceNet(scale_factor=12).cuda().to(dtype).eval()
        x = _rand(1, 3, 2160, 3840, dtype=dtype)
        whole = StaticEnhance(model, tuple(x.shape), backend="triton")  # the whole forward, one graph
        whole.input.copy_(x)

        def plain(model=model, x=x):
            with torch.inference_mode(), ops.use_backend("triton"):
                return model.enhance(x)
        yield (f"model.enhance 4K {str(dtype)[6:]} (kernels = StaticEnhance's replay)", whole, plain,
               2 * x.numel() * x.element_size())


def _profiled(kernel, calls: int, activity: str):
    """torch.profiler's per-event averages over ``calls`` calls of ``kernel`` ("CPU" or "CUDA" events)."""
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    with profile(activities=[getattr(ProfilerActivity, activity)]) as prof:
        for _ in range(calls):
            kernel()
        torch.cuda.synchronize()
    return prof.key_averages()


def kernel_breakdown(name: str, kernel, calls: int = 5) -> None:
    """Each GPU kernel one call of ``kernel`` launches, with its mean time: which of an op's
    kernels takes the time."""
    for event in sorted(_profiled(kernel, calls, "CUDA"), key=lambda e: e.device_time_total, reverse=True):
        if event.device_time_total > 0:
            print(f"| {name} | {event.key[:60]} | {event.count / calls:.0f} | {event.device_time_total / calls:.1f} |")


def host_breakdown(name: str, kernel, calls: int = 20) -> None:
    """Where the host's time goes in a call (for an op whose launches from Python take far longer
    than its kernels replayed as a graph)."""
    events = sorted(_profiled(kernel, calls, "CPU"), key=lambda e: e.self_cpu_time_total, reverse=True)
    for event in events[:12]:
        print(f"| {name} | {event.key[:60]} | {event.count / calls:.1f} | {event.self_cpu_time_total / calls:.1f} |")


# The 4K model's seven dsconv2d layers at scale_factor 12 (180 x 320): (C1, C2, O, activation, count).
_MODEL_LAYERS_4K = ((3, 0, 32, "relu", 1), (32, 0, 32, "relu", 3), (32, 32, 32, "relu", 2), (32, 32, 3, "tanh", 1))


def forward_configs_4k(dtype=torch.float16, bench=do_bench_cudagraph, size=(180, 320)) -> None:
    """Each forward config of dsconv2d forced in turn on the 4K model's layers: what every config
    costs there, not only the autotuner's pick (its timings of the others are not kept). Each layer
    twice: NCHW, and channels-last as the model's inference runs it (the image and r NCHW). The
    channels-last rows of the whole-chunk layers run forward_kernel(dtype, last_whole=True)'s
    config of the same index: the same tiles, its own register caps (the table says which)."""
    tuned = forward_kernel(dtype)
    capped = {k: c.maxnreg for k, (c, d) in enumerate(zip(forward_kernel(dtype, last_whole=True).configs,
                                                            tuned.configs)) if c.maxnreg != d.maxnreg}
    print("\nchannels-last whole-chunk layers, register caps of their own: "
          + (", ".join(f"config {k} at {cap}" for k, cap in capped.items()) or "none"))
    print(f"\n| 4K layer, {str(dtype)[6:]}, us (x count) | " + " | ".join(
        f"config {k}: {c.kwargs['BLOCK_H']}x{c.kwargs['BLOCK_W']}, {c.num_warps} warps, taps {c.kwargs['TAPS']}"
        for k, c in enumerate(tuned.configs))
        + " |\n|---|" + "---:|" * len(tuned.configs))
    totals = {layout: [0.0] * len(tuned.configs) for layout in ("NCHW", "channels-last")}
    for c1, c2, o, activation, count in _MODEL_LAYERS_4K:
        c = c1 + c2
        x, x2 = _rand(1, c1, *size, dtype=dtype), (_rand(1, c2, *size, dtype=dtype) if c2 else None)
        params = [_rand(*shape, lo=-1, dtype=dtype) for shape in ((c, 1, 3, 3), (c,), (o, c, 1, 1), (o,))]
        for layout in totals:
            out_format = torch.contiguous_format
            if layout == "channels-last":
                last = lambda t: t if t is None or c1 == 3 else t.contiguous(memory_format=torch.channels_last)  # noqa: E731
                x, x2 = last(x), last(x2)
                out_format = torch.contiguous_format if o == 3 else torch.channels_last
            row = []
            for k in range(len(tuned.configs)):
                with use_config(k):
                    call = functools.partial(K.dsconv2d, x, *params, x2=x2, activation=activation,
                                             memory_format=out_format)
                    call()
                    row.append(bench(call, rep=50, return_mode="median") * 1e3)
                totals[layout][k] += count * row[-1]
            print(f"| {c1}+{c2}->{o} (x{count}) {layout} | " + " | ".join(f"{t:.1f}" for t in row) + " |",
                  flush=True)
    for layout, row in totals.items():
        print(f"| all seven, {layout} | " + " | ".join(f"{t:.0f}" for t in row) + " |")


def _latency_us(call, rounds: int = 30) -> tuple[float, float]:
    """(host us to return from the call, us from a synchronised start to the end of its GPU work):
    the benchmarks' timing, which also counts the host's time until each kernel is enqueued."""
    host, latency = [], []
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(rounds + 3):
        torch.cuda.synchronize()
        start.record()
        t0 = time.perf_counter()
        call()
        host.append((time.perf_counter() - t0) * 1e6)
        end.record()
        end.synchronize()
        latency.append(start.elapsed_time(end) * 1e3)
    host, latency = sorted(host[3:]), sorted(latency[3:])
    return host[len(host) // 2], latency[len(latency) // 2]


def host_latency() -> None:
    """Each layer of an op call, timed as the benchmarks time it: a synchronised start, so the
    host's time before the first kernel counts. Where latency ~ host, the call is host-bound. Each
    also with every launch through Triton's own launch path (sgllie's takes it once per
    specialisation): the GPU host's figures for benchmarks/results/host_overhead.md's columns."""
    print("\n| call | host us (to return) | latency us (synchronised start) |\n|---|---:|---:|")
    x, r = _rand(1, 3, 2160, 3840, dtype=torch.float16), _rand(1, 3, 180, 320, lo=-1, dtype=torch.float16)
    y = _rand(8, 3, 512, 512).requires_grad_()
    i = _rand(8, 3, 512, 512)

    def zrl_fwd_bwd():
        spa, exp, col = ops.zero_reference_loss(y, i, backend="triton")
        torch.autograd.grad(spa + exp + col, y)

    model = sgllie.EnhanceNet(scale_factor=12).cuda().half().eval()
    graphed, whole = GraphedEnhance(model, backend="triton"), StaticEnhance(model, tuple(x.shape), backend="triton")
    whole.input.copy_(x)

    calls = {
        "le_curve 4K float16: kernel function (sgllie.kernels.le_curve)": lambda: K.le_curve(x, r, 8),
        "le_curve 4K float16: torch.ops.sgllie.le_curve": lambda: torch.ops.sgllie.le_curve(x, r, 8, "triton"),
        "le_curve 4K float16: sgllie.ops.le_curve": lambda: ops.le_curve(x, r, backend="triton"),
        "copy 4K float16 (x.clone())": x.clone,
        "zero_reference_loss fwd: kernel function": lambda: K.zero_reference_loss_forward(y, i, 4, 0.6, 16),
        "zero_reference_loss fwd: sgllie.ops": lambda: ops.zero_reference_loss(y, i, backend="triton"),
        "zero_reference_loss fwd+bwd: sgllie.ops + autograd.grad": zrl_fwd_bwd,
        "enhance 4K float16 frame: GraphedEnhance (the network graphed)": lambda: graphed(x),
        "enhance 4K float16 frame: StaticEnhance (the whole forward graphed, the frame in its input)": whole,
    }
    with ops.no_finite_checks():
        for name, call in calls.items():
            host_us, latency_us = _latency_us(call)
            print(f"| {name} | {host_us:.0f} | {latency_us:.0f} |", flush=True)
            if not name.startswith("copy"):  # the same with every launch through Triton's own path
                with through_triton():
                    host_us, latency_us = _latency_us(call)
                print(f"| {name}, Triton's launch path | {host_us:.0f} | {latency_us:.0f} |", flush=True)


def main() -> None:
    torch.manual_seed(0)
    torch.backends.cudnn.allow_tf32 = False
    print("| op | floor us | kernels, graph us | kernels us | op call us | floor / graph |")
    print("|---|---:|---:|---:|---:|---:|")
    cases = list(_cases())
    for name, kernel, call, floor in cases:
        try:
            kernel()  # autotune, compile
            torch.cuda.synchronize()
            # a graphed model replays its own graph: no capture around it
            bench = do_bench if isinstance(kernel, StaticEnhance) else do_bench_cudagraph
            graph_ms = bench(kernel, rep=50, return_mode="median")
            kernel_ms = do_bench(kernel, warmup=10, rep=50, return_mode="median")
            call_ms = do_bench(call, warmup=10, rep=50, return_mode="median") if call else float("nan")
            floor_us = floor / BYTES_PER_S * 1e6
            print(f"| {name} | {floor_us:.0f} | {graph_ms * 1e3:.0f} | {kernel_ms * 1e3:.0f} | {call_ms * 1e3:.0f} | "
                  f"{floor_us / (graph_ms * 1e3):.0%} |", flush=True)
        except Exception as e:  # one broken row must not hide the others
            print(f"| {name} | error: {type(e).__name__}: {str(e).splitlines()[0][:200]} |", flush=True)
    print("\n| op | kernel | launches per call | us per call |\n|---|---|---:|---:|")
    for name, kernel, _, _ in cases:
        if name.startswith(("dsconv2d", "zero_reference_loss fwd", "le_curve fwd 4K float16")):
            kernel_breakdown(name, kernel)
        elif name.startswith("model.enhance 4K float16"):
            kernel_breakdown(name, call)  # launched one by one: each kernel's own time
    host_latency()
    forward_configs_4k()
    print("\n| op | host event | per call | self CPU us per call |\n|---|---|---:|---:|")
    host_breakdown(*next((name, kernel) for name, kernel, _, _ in cases if name == "zero_reference_loss fwd"))
    print("\n| autotuned kernel | key | chosen config |\n|---|---|---|")
    for tuned in AUTOTUNED:
        for key, config in tuned.cache.items():
            print(f"| {tuned.fn.__name__} | {key} | {config} |")


if __name__ == "__main__":
    main()
