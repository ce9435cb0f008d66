"""What the Triton kernels cost on a GPU, counted without one (Triton's interpreter on CPU tensors).

    python -m benchmarks.triton_cost     writes benchmarks/results/triton_cost.{md,json}

- Bytes: each kernel's global-memory reads and writes, counted mask-aware per program
  (kernels/_counting.py), at a reduced size of each case, against the op's floor (every input read
  once, every output written once).
- Launches: kernels per model inference (scale_factor 12) and per training step, fused and eager.
- A predicted H100 time per op at the full size, labelled predicted: the counted bytes scaled to the
  full size over 3.0 TB/s (a measured device-to-device copy), or the arithmetic over 67 TFLOP/s (FP32
  FMA), whichever is larger, plus 3 us a launch.
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")   # read when the kernels' modules are imported
os.environ.setdefault("SGLLIE_CHECK_FINITE", "0")

import json  # noqa: E402
import math  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import torch  # noqa: E402

H100_BYTES_PER_S = 3.0e12
H100_FLOPS = 67e12
LAUNCH_S = 3e-6
RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Case:
    """One op call: ``prepare(n, h, w)`` builds inputs of batch n and size h x w and returns the
    call of the kernels to count;
    ``floor(n, h, w)`` is its minimum DRAM traffic in bytes and ``flops(n, h, w)`` its arithmetic."""
    what: str
    full: tuple[int, int, int]                  # (n, h, w) of the predicted time
    prepare: Callable[[int, int, int], Callable[[], object]]
    floor: Callable[[int, int, int], float]
    flops: Callable[[int, int, int], float]


def _k():
    from sgllie import kernels
    return kernels


def _rand(*shape, lo=0.0):
    return torch.empty(*shape).uniform_(lo, 1.0)


F32 = 4
ITER = 8
DS = 12  # the inference scale factor


def _dsconv_inputs(n, h, w, c1, c2, o):
    c = c1 + c2
    return (_rand(n, c1, h, w), _rand(n, c2, h, w) if c2 else None,
            [_rand(c, 1, 3, 3, lo=-1), _rand(c, lo=-1), _rand(o, c, 1, 1, lo=-1), _rand(o, lo=-1)])


def _dsconv_fwd(c1, c2, o):
    def run(n, h, w):
        x, x2, p = _dsconv_inputs(n, h, w, c1, c2, o)
        return lambda: _k().dsconv2d(x, *p, x2=x2, activation="relu")
    return run


def _dsconv_bwd(c1, c2, o):
    def run(n, h, w):
        x, x2, p = _dsconv_inputs(n, h, w, c1, c2, o)
        g, y = _rand(n, o, h, w, lo=-1), _rand(n, o, h, w, lo=-1).clamp_min(0)  # y: a relu's output
        return lambda: _k().dsconv2d_backward(g, x, *p, x2=x2, activation="relu", out=y)
    return run


def _le_fwd(n, h, w):
    x, r = _rand(n, 3, h, w), _rand(n, 3, math.ceil(h / DS), math.ceil(w / DS), lo=-1)
    return lambda: _k().le_curve(x, r, ITER)


def _le_bwd(n, h, w):
    g, x, r = _rand(n, 3, h, w), _rand(n, 3, h, w), _rand(n, 3, h, w, lo=-1)
    return lambda: _k().le_curve_backward(g, x, r, ITER)


def _zrl_fwd(n, h, w):
    y, i = _rand(n, 3, h, w), _rand(n, 3, h, w)
    return lambda: _k().zero_reference_loss_forward(y, i, 4, 0.6, 16)


def _zrl_bwd(n, h, w):
    y = _rand(n, 3, h, w)
    pooled = _k().zero_reference_loss_forward(y, _rand(n, 3, h, w), 4, 0.6, 16)[3]
    one = torch.ones(())
    return lambda: _k().zero_reference_loss_backward(one, one, one, pooled, y, False, 4, 16)


def _tv_fwd(n, h, w):
    r = _rand(n, 3, h, w)
    return lambda: _k().tv_loss(r)


def _tv_bwd(n, h, w):
    r = _rand(n, 3, h, w)
    return lambda: _k().tv_loss_backward(torch.ones(()), r)


def _px(n, h, w):
    return n * h * w


TRAIN = (8, 512, 512)
FORWARD_CASES = {
    "le_curve": Case("le_curve fwd, 4K frame, r at 1/12", (1, 2160, 3840), _le_fwd,
                     lambda n, h, w: 2 * 3 * _px(n, h, w) * F32,
                     lambda n, h, w: 3 * _px(n, h, w) * (4 * ITER + 10)),
    "dsconv2d": Case("dsconv2d fwd 32 -> 32, relu", TRAIN, _dsconv_fwd(32, 0, 32),
                     lambda n, h, w: (32 + 32) * _px(n, h, w) * F32,
                     lambda n, h, w: _px(n, h, w) * (18 * 32 + 2 * 32 * 32)),
    "dsconv2d-skip": Case("dsconv2d fwd 32+32 -> 32, relu", TRAIN, _dsconv_fwd(32, 32, 32),
                          lambda n, h, w: (64 + 32) * _px(n, h, w) * F32,
                          lambda n, h, w: _px(n, h, w) * (18 * 64 + 2 * 64 * 32)),
    "zero_reference_loss": Case("zero_reference_loss fwd (spa + exp + col)", TRAIN, _zrl_fwd,
                                lambda n, h, w: 2 * 3 * _px(n, h, w) * F32,
                                lambda n, h, w: 3 * _px(n, h, w) * 4),
    "tv_loss": Case("tv_loss fwd", TRAIN, _tv_fwd, lambda n, h, w: 3 * _px(n, h, w) * F32,
                    lambda n, h, w: 3 * _px(n, h, w) * 6),
}
BACKWARD_CASES = {
    "le_curve": Case("le_curve bwd, same-size r (training)", TRAIN, _le_bwd,
                     lambda n, h, w: 5 * 3 * _px(n, h, w) * F32,
                     lambda n, h, w: 3 * _px(n, h, w) * (ITER * ITER * 2 + 8 * ITER)),
    # floor: grad and the forward's output in, x in and dL/dx out; flops: three depthwise passes
    # (z recomputed, its weights' gradient, dL/dx) and two pointwise (dL/dz, its weights' gradient)
    "dsconv2d": Case("dsconv2d bwd 32 -> 32, relu", TRAIN, _dsconv_bwd(32, 0, 32),
                     lambda n, h, w: (2 * 32 + 2 * 32) * _px(n, h, w) * F32,
                     lambda n, h, w: _px(n, h, w) * (3 * 18 * 32 + 2 * 2 * 32 * 32)),
    "dsconv2d-skip": Case("dsconv2d bwd 32+32 -> 32, relu", TRAIN, _dsconv_bwd(32, 32, 32),
                          lambda n, h, w: (2 * 32 + 2 * 64) * _px(n, h, w) * F32,
                          lambda n, h, w: _px(n, h, w) * (3 * 18 * 64 + 2 * 2 * 64 * 32)),
    "zero_reference_loss": Case("zero_reference_loss bwd (dL/dY)", TRAIN, _zrl_bwd,
                                lambda n, h, w: 3 * _px(n, h, w) * F32,
                                lambda n, h, w: 3 * _px(n, h, w) * 4),
    "tv_loss": Case("tv_loss bwd", TRAIN, _tv_bwd, lambda n, h, w: 2 * 3 * _px(n, h, w) * F32,
                    lambda n, h, w: 3 * _px(n, h, w) * 6),
}


@dataclass
class Row:
    what: str
    counted_at: str
    bytes: int
    floor: int
    ratio: float
    launches: int
    kernels: str
    full: str = ""
    predicted_us: float = 0.0


def _shrunk(case: Case, scale: float) -> tuple[int, int, int]:
    _, h, w = case.full
    return 1, max(24, round(h * scale)), max(24, round(w * scale))


def count(case: Case, scale: float = 0.25) -> Row:
    """Counted bytes of ``case`` at batch 1 and ``scale`` x its full height and width."""
    from sgllie.kernels._counting import counting
    n, h, w = _shrunk(case, scale)
    torch.manual_seed(0)
    call = case.prepare(n, h, w)
    with counting() as costs:
        call()
    total = sum(c.read + c.written for c in costs)
    floor = int(case.floor(n, h, w))
    return Row(case.what, f"{n}x{h}x{w}", total, floor, total / floor, len(costs),
               ", ".join(dict.fromkeys(c.kernel for c in costs)))


def predict(case: Case, row: Row) -> Row:
    n, h, w = case.full
    bytes_full = row.ratio * case.floor(n, h, w)
    seconds = max(bytes_full / H100_BYTES_PER_S, case.flops(n, h, w) / H100_FLOPS) + LAUNCH_S * row.launches
    row.full, row.predicted_us = f"{n}x{h}x{w}", seconds * 1e6
    return row


def model_launches() -> dict[str, list[str]]:
    """Kernel launches of one inference (scale_factor 12) and one training step (sem=0), fused
    (Triton backend) and eager (the same network in plain PyTorch, benchmarks/_common.py)."""
    import sgllie.ops as ops
    from sgllie.kernels._counting import launches
    from sgllie.losses import LossWeights, SGZLoss
    from sgllie.model import EnhanceNet
    from benchmarks._common import plain_enhance, plain_forward, plain_sgz_loss

    torch.manual_seed(0)
    out = {}
    model = EnhanceNet(scale_factor=DS).eval()
    x = torch.rand(1, 3, 48, 72)
    with torch.inference_mode():
        with ops.use_backend("triton"), launches() as names:
            model.enhance(x)
        out["inference, fused"] = names
        with launches() as names:
            plain_enhance(model, x)
        out["inference, eager"] = names
    train = EnhanceNet(scale_factor=1).train()
    x = torch.rand(2, 3, 32, 40) * 0.5
    weights = LossWeights(sem=0)
    with ops.use_backend("triton"), launches() as names:
        enhanced, r = train(x)
        SGZLoss(weights)(enhanced, r, x)[0].backward()
    out["training step fwd+bwd, fused"] = names
    with launches() as names:
        enhanced, r = plain_forward(train, x)
        plain_sgz_loss(enhanced, r, x, weights).backward()
    out["training step fwd+bwd, eager"] = names
    return out


def main() -> None:
    rows = {"forward": [predict(c, count(c)) for c in FORWARD_CASES.values()],
            "backward": [predict(c, count(c)) for c in BACKWARD_CASES.values()]}
    launches = model_launches()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "triton_cost.json").write_text(json.dumps(
        {"rows": {k: [asdict(r) for r in v] for k, v in rows.items()},
         "launches": launches}, indent=2) + "\n")
    md = ["# Triton kernels: counted cost (no GPU)", "",
          "Written by `python -m benchmarks.triton_cost` (Triton interpreter, TRITON_INTERPRET=1). "
          "Bytes are global-memory reads + writes per launch, counted mask-aware per program (a program "
          "fetches each byte it touches once; halo bytes are fetched by every program that touches them), "
          "at batch 1 and a quarter of the full height and width; floor = every input read once and every "
          "output written once. **Predicted** H100 time at the full size = max(floor x ratio / 3.0 TB/s, "
          "flops / 67 TFLOP/s) + 3 us per launch: a prediction, not a measurement.", ""]
    for kind, title in (("forward", "Forward"), ("backward", "Backward")):
        md += [f"## {title}", "", "| op | counted at | bytes | floor | ratio | launches | full size | "
               "predicted H100 |", "|---|---|---:|---:|---:|---:|---|---:|"]
        md += [f"| {r.what} | {r.counted_at} | {r.bytes:,} | {r.floor:,} | {r.ratio:.3f}x | {r.launches} | "
               f"{r.full} | {r.predicted_us:.0f} us |" for r in rows[kind]]
        md.append("")
    md += ["## Kernel launches per call", "", "| what | launches | kernels |", "|---|---:|---|"]
    md += [f"| {k} | {len(v)} | {', '.join(f'{n} x{v.count(n)}' if v.count(n) > 1 else n for n in dict.fromkeys(v))} |"
           for k, v in launches.items()]
    md += ["", "Eager counts one launch per aten op (a lower bound: some take several kernels)."]
    (RESULTS / "triton_cost.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
