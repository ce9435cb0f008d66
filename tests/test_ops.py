"""Every public op on every backend available here against the reference: forward, backward,
gradcheck, opcheck; plus backend selection and the argument checks."""
from __future__ import annotations

import functools

import pytest
import torch

import sgllie.ops as ops
from sgllie.ops import reference as R
from conftest import assert_close, device_of

BACKENDS = ops.available_backends()  # each on its device: CPU, CUDA, or CPU under TRITON_INTERPRET=1
DTYPES = [torch.float32, torch.float64]


def rand(*shape, dtype=torch.float32, lo=0.0, hi=1.0, grad=False, device="cpu"):
    return torch.empty(*shape, dtype=dtype, device=device).uniform_(lo, hi).requires_grad_(grad)


def _dsconv_case(dtype, with_x2, n=2, h=13, w=9, device="cpu"):
    c1, c2, o = 5, (3 if with_x2 else 0), 7
    c = c1 + c2
    t = lambda *shape, lo=0.0: rand(*shape, dtype=dtype, lo=lo, device=device)  # noqa: E731
    return dict(x=t(n, c1, h, w), x2=t(n, c2, h, w) if with_x2 else None,
                dw_weight=t(c, 1, 3, 3, lo=-1), dw_bias=t(c, lo=-1), pw_weight=t(o, c, 1, 1, lo=-1), pw_bias=t(o, lo=-1))


def _grads(out, tensors, seed=0):
    g = torch.Generator().manual_seed(seed)
    outs = out if isinstance(out, tuple) else (out,)
    cot = [torch.rand(o.shape, generator=g, dtype=o.dtype).to(o.device) for o in outs]
    return torch.autograd.grad(outs, tensors, cot)


def _check_fwd_bwd(fused, ref, tensors, dtype, device="cpu"):
    """Run fused on copies of ``tensors`` on ``device`` and ref on CPU copies; compare outputs and
    all input gradients."""
    a = [t.detach().to(device, copy=True).requires_grad_() for t in tensors]
    b = [t.detach().to("cpu", copy=True).requires_grad_() for t in tensors]
    out_a, out_b = fused(*a), ref(*b)
    for x, y in zip(out_a if isinstance(out_a, tuple) else (out_a,),
                    out_b if isinstance(out_b, tuple) else (out_b,)):
        assert x.shape == y.shape and x.dtype == y.dtype and x.device.type == torch.device(device).type
        assert_close(x.cpu(), y, dtype)
    for x, y in zip(_grads(out_a, a), _grads(out_b, b)):
        assert_close(x.cpu(), y, dtype, scale=10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_x2,activation", [(False, None), (False, "relu"), (True, "relu"), (True, "tanh")])
@pytest.mark.parametrize("width", [9, 37])  # narrower than the CPU kernels' vector tiles; tiles + a ragged end
def test_dsconv2d(backend, dtype, with_x2, activation, width):
    dev = device_of(backend)
    case = _dsconv_case(dtype, with_x2, w=width)
    x, x2 = case.pop("x"), case.pop("x2")
    keys = list(case)
    tensors = [x] + ([x2] if with_x2 else []) + list(case.values())

    def split(t):
        return t[0], (t[1] if with_x2 else None), dict(zip(keys, t[-4:]))

    def fused(*t):
        a, a2, p = split(t)
        return ops.dsconv2d(a, **p, x2=a2, activation=activation, backend=backend)

    def ref(*t):
        a, a2, p = split(t)
        return R.dsconv2d(a, *p.values(), x2=a2, activation=activation or "none")

    _check_fwd_bwd(fused, ref, tensors, dtype, dev)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,rshape", [((2, 3, 17, 23), (2, 3, 17, 23)), ((2, 3, 25, 37), (2, 3, 3, 4)),
                                          ((1, 3, 5, 3), (1, 3, 1, 1)), ((1, 3, 3, 300), (1, 3, 2, 7)),
                                          # planes not in threes; in threes across images
                                          ((1, 2, 9, 13), (1, 2, 4, 5)), ((3, 2, 7, 9), (3, 2, 2, 3))])
def test_le_curve(backend, dtype, shape, rshape):
    dev = device_of(backend)
    x, r = rand(*shape, dtype=dtype), rand(*rshape, dtype=dtype, lo=-1)
    _check_fwd_bwd(lambda a, b: ops.le_curve(a, b, backend=backend), R.le_curve, [x, r], dtype, dev)


LOSS_SHAPES = [(2, 3, 16, 16), (3, 3, 19, 35), (1, 3, 17, 50)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", LOSS_SHAPES)
def test_losses(backend, dtype, shape):
    dev = device_of(backend)
    y, i = rand(*shape, dtype=dtype), rand(*shape, dtype=dtype)
    for patch in (3, 4, 5):
        _check_fwd_bwd(lambda a, b: ops.spatial_consistency_loss(a, b, patch, backend=backend),
                       lambda a, b: R.spatial_consistency_loss(a, b, patch), [y, i], dtype, dev)
    _check_fwd_bwd(lambda a: ops.exposure_loss(a, 0.5, backend=backend),
                   lambda a: R.exposure_loss(a, 0.5), [y], dtype, dev)
    _check_fwd_bwd(lambda a: ops.color_constancy_loss(a, backend=backend), R.color_constancy_loss, [y], dtype, dev)
    _check_fwd_bwd(lambda a: ops.tv_loss(a, backend=backend), R.tv_loss, [y], dtype, dev)
    _check_fwd_bwd(lambda a, b: ops.zero_reference_loss(a, b, patch=5, level=0.7, backend=backend),
                   lambda a, b: R.zero_reference_loss(a, b, 5, 0.7, 16), [y, i], dtype, dev)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_reference_loss_partial_use(backend):
    """Only some of the three outputs feeding the loss must still give the right gradient."""
    dev = device_of(backend)
    y = rand(2, 3, 20, 18, grad=True, device=dev)
    i = rand(2, 3, 20, 18, device=dev)
    spa, _, col = ops.zero_reference_loss(y, i, backend=backend)
    (g,) = torch.autograd.grad(spa + 2 * col, y)
    y2 = y.detach().clone().requires_grad_()
    (expected,) = torch.autograd.grad(R.spatial_consistency_loss(y2, i) + 2 * R.color_constancy_loss(y2), y2)
    assert_close(g, expected, scale=10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    dev = device_of(backend)
    # Under the Triton interpreter every kernel launch costs milliseconds: fast mode checks random
    # projections of the Jacobian (a few evaluations) instead of every column.
    interpreted = backend == "triton" and ops._backends.triton_interpreting()
    gradcheck = functools.partial(torch.autograd.gradcheck, fast_mode=interpreted)
    d = torch.float64
    x, r = rand(1, 3, 5, 4, dtype=d, grad=True, device=dev), rand(1, 3, 2, 3, dtype=d, lo=-1, grad=True,
                                                                   device=dev)
    assert gradcheck(lambda a, b: ops.le_curve(a, b, 3, backend=backend), (x, r))
    case = {k: v.requires_grad_() for k, v in _dsconv_case(d, True, n=1, h=4, w=5, device=dev).items()}
    x, x2 = case.pop("x"), case.pop("x2")
    assert gradcheck(
        lambda a, a2, *p: ops.dsconv2d(a, *p, x2=a2, activation="tanh", backend=backend), (x, x2, *case.values()))
    y, i = rand(2, 3, 9, 10, dtype=d, grad=True, device=dev), rand(2, 3, 9, 10, dtype=d, grad=True, device=dev)
    assert gradcheck(lambda a, b: ops.spatial_consistency_loss(a, b, 3, backend=backend), (y, i))
    assert gradcheck(lambda a: ops.exposure_loss(a, 0.6, 4, backend=backend), (y,))
    assert gradcheck(lambda a: ops.color_constancy_loss(a, backend=backend), (y,))
    assert gradcheck(lambda a: ops.tv_loss(a, backend=backend), (y,))
    assert gradcheck(
        lambda a, b: ops.zero_reference_loss(a, b, patch=3, exposure_patch=4, backend=backend), (y, i))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    dev = device_of(backend)
    lib = ops._library
    case = _dsconv_case(torch.float32, True, h=6, w=7, device=dev)
    x, x2 = case.pop("x").requires_grad_(), case.pop("x2").requires_grad_()
    p = [t.requires_grad_() for t in case.values()]
    y, i = rand(2, 3, 17, 19, grad=True, device=dev), rand(2, 3, 17, 19, device=dev)
    last = lambda t: t.detach().contiguous(memory_format=torch.channels_last).requires_grad_()  # noqa: E731
    out = lib.dsconv2d(last(x), last(x2), *p, "relu", True, backend).detach()
    samples = [
        (lib.dsconv2d, (x, x2, *p, "relu", False, backend)),
        (lib.dsconv2d, (x, None, *[rand(5, 1, 3, 3, lo=-1, grad=True, device=dev), rand(5, grad=True, device=dev),
                                   rand(4, 5, 1, 1, grad=True, device=dev), rand(4, grad=True, device=dev)], "tanh",
                        False, backend)),
        # layouts: results (and gradients) laid out as the shape functions say
        (lib.dsconv2d, (last(x), last(x2), *p, "relu", True, backend)),
        (lib.dsconv2d, (last(x), x2, *p, "none", False, backend)),
        (lib.dsconv2d, (x, x2, *p, "tanh", True, backend)),
        # (no grad for the backward op's inputs: it has no autograd, double backward is unsupported)
        (lib.dsconv2d_backward, (torch.rand_like(out), *(last(t).detach() for t in (x, x2)),
                                 *(t.detach() for t in p), out, "relu", backend)),
        (lib.le_curve, (rand(2, 3, 9, 11, grad=True, device=dev), rand(2, 3, 2, 3, lo=-1, grad=True, device=dev), 8, backend)),
        (lib.spatial_consistency_loss, (y, i, 4, backend)),
        (lib.exposure_loss, (y, 0.6, 16, backend)),
        (lib.color_constancy_loss, (y, backend)),
        (lib.tv_loss, (y, backend)),
        (lib.zero_reference_loss, (y, i, 4, 0.6, 16, backend)),
    ]
    for op, args in samples:
        torch.library.opcheck(op, args)


# ----------------------------------------------------------------------------- backend selection
def test_reference_always_available():
    assert "reference" in ops.available_backends()
    status = ops.backend_status()
    assert status["reference"] == "available"
    assert set(status) - {"cuda_emu"} == {"reference", "cpu", "triton", "cuda"}  # cuda_emu: the tests' own
    for name, why in status.items():
        assert why == "available" or why, name


def test_selection_precedence(monkeypatch):
    resolve = ops._backends.resolve
    cpu = torch.device("cpu")
    monkeypatch.delenv("SGLLIE_BACKEND", raising=False)
    auto = next(n for n in ops._backends.PREFERENCE["cpu"] if n in ops.available_backends())
    assert resolve("le_curve", None, cpu) == auto
    monkeypatch.setenv("SGLLIE_BACKEND", "reference")
    assert resolve("le_curve", None, cpu) == "reference"
    monkeypatch.setenv("SGLLIE_BACKEND", "bogus")
    with pytest.raises(ValueError, match="SGLLIE_BACKEND.*unknown backend 'bogus'"):
        resolve("le_curve", None, cpu)
    with ops.use_backend("reference"):       # the context beats the environment
        assert resolve("le_curve", None, cpu) == "reference"
    assert resolve("le_curve", "reference", cpu) == "reference"  # the argument beats both
    with pytest.raises(ValueError, match="unknown backend"):
        with ops.use_backend("fastest"):
            pass


@pytest.mark.parametrize("name", [n for n in ("cpu", "triton", "cuda") if n not in ops.available_backends()])
def test_unavailable_backend_is_a_clear_error(name):
    x = rand(1, 3, 4, 4)
    with pytest.raises(ops.BackendUnavailableError, match=f"backend '{name}'.*not available: .+Available: "):
        ops.le_curve(x, x, backend=name)
    with pytest.raises(ops.BackendUnavailableError, match="use_backend"):
        with ops.use_backend(name):
            ops.tv_loss(x)


# ----------------------------------------------------------------------------- argument checks
@pytest.mark.parametrize("call,match", [
    (lambda: ops.le_curve(torch.rand(3, 4, 4), torch.rand(3, 4, 4)), "x must be 4-D"),
    (lambda: ops.le_curve(torch.rand(1, 3, 4, 4), torch.rand(1, 2, 4, 4)), "r of shape"),
    (lambda: ops.le_curve(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 5, 4)), "r of shape"),
    (lambda: ops.le_curve(torch.ones(1, 3, 4, 4, dtype=torch.int32), torch.rand(1, 3, 4, 4)), "floating"),
    (lambda: ops.le_curve(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4).double()), "r is torch.float64"),
    (lambda: ops.le_curve(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4), 0), "iterations"),
    (lambda: ops.le_curve(torch.full((1, 3, 4, 4), float("nan")), torch.rand(1, 3, 4, 4)), "x contains NaN"),
    (lambda: ops.tv_loss(torch.rand(1, 3, 1, 9)), "too small"),
    (lambda: ops.exposure_loss(torch.rand(1, 3, 15, 40)), "too small"),
    (lambda: ops.exposure_loss(torch.rand(1, 3, 16, 16), level=1.5), "level"),
    (lambda: ops.color_constancy_loss(torch.rand(1, 4, 8, 8)), "3 channels"),
    (lambda: ops.spatial_consistency_loss(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9)), "must match"),
    (lambda: ops.spatial_consistency_loss(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), 6), "patch"),
    (lambda: ops.spatial_consistency_loss(torch.rand(1, 3, 3, 8), torch.rand(1, 3, 3, 8)), "too small"),
    (lambda: ops.zero_reference_loss(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8).mul(float("inf"))),
     "i contains NaN or Inf"),
    (lambda: ops.dsconv2d(torch.rand(1, 3, 4, 4), torch.rand(3, 1, 3, 3), torch.rand(3),
                          torch.rand(8, 4, 1, 1), torch.rand(8)), "pw_weight must have shape"),
    (lambda: ops.dsconv2d(torch.rand(1, 3, 4, 4), torch.rand(5, 1, 3, 3), torch.rand(5),
                          torch.rand(8, 5, 1, 1), torch.rand(8), x2=torch.rand(1, 2, 4, 5)), "x2 of shape"),
    (lambda: ops.dsconv2d("x", None, None, None, None), "x must be a torch.Tensor"),
    (lambda: ops.dsconv2d(torch.rand(1, 3, 4, 4), torch.rand(3, 1, 3, 3), torch.rand(3),
                          torch.rand(8, 3, 1, 1), torch.rand(8), activation="sigmoid"), "activation must be"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ops.OpInputError, match=r"^sgllie\.ops\.\w+: .*" + match):
        call()


def test_finite_check_can_be_disabled(monkeypatch):
    monkeypatch.setenv("SGLLIE_CHECK_FINITE", "0")
    out = ops.le_curve(torch.full((1, 3, 2, 2), float("nan")), torch.rand(1, 3, 2, 2))
    assert torch.isnan(out).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    dev = device_of(backend)
    x = rand(2, 3, 23, 19, device=dev).transpose(2, 3)          # (2, 3, 19, 23), not contiguous
    r = rand(2, 3, 6, 5, lo=-1, device=dev).transpose(2, 3)
    assert not x.is_contiguous() and not r.is_contiguous()
    _check_fwd_bwd(lambda a, b: ops.le_curve(a, b, backend=backend), R.le_curve, [x, r], torch.float32, dev)
    _check_fwd_bwd(lambda a: ops.tv_loss(a, backend=backend), R.tv_loss, [x[:, :, ::2]], torch.float32, dev)
    y, i = rand(2, 3, 40, 36, device=dev)[..., ::2, :], rand(2, 3, 20, 36, device=dev)
    _check_fwd_bwd(lambda a, b: ops.zero_reference_loss(a, b, backend=backend),
                   lambda a, b: R.zero_reference_loss(a, b, 4, 0.6, 16), [y, i], torch.float32, dev)


def test_auto_falls_back_with_one_warning(monkeypatch):
    """A backend meant to be here that fails to load: auto says so once and uses the next one."""
    b = ops._backends
    monkeypatch.setitem(b.BACKENDS, "cpu", b.Backend("cpu", "sgllie._missing_ext.kernels", ("cpu",), "a build"))
    monkeypatch.delenv("SGLLIE_BACKEND", raising=False)
    b._import.cache_clear()
    b._warn_fallback.cache_clear()
    try:
        with pytest.warns(UserWarning, match=r"backend 'cpu' unavailable \(needs a build"):
            assert b.resolve("tv_loss", None, torch.device("cpu")) == "reference"
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # only once per process
            assert b.resolve("tv_loss", None, torch.device("cpu")) == "reference"
    finally:
        monkeypatch.undo()
        b._import.cache_clear()
        b._warn_fallback.cache_clear()


def test_auto_times_the_gpu_backends_once_per_shape_class(monkeypatch):
    """auto with both CUDA and Triton available: each is timed once per (op, shape class), the
    faster kept (no GPU here: the timer runs the call and takes its return value as the time)."""
    b = ops._backends
    monkeypatch.setattr(b, "_fastest", {})
    monkeypatch.setattr(b, "_time_on_device", lambda fn: fn())
    speed, calls = {"cuda": 2.0, "triton": 1.0}, []

    def run(name):
        calls.append(name)
        return speed[name]
    assert b.fastest("le_curve", ("k",), run) == "triton"
    assert b.fastest("le_curve", ("k",), run) == "triton"
    assert calls == ["cuda", "triton"]
    speed["cuda"] = 0.5
    assert b.fastest("le_curve", ("other shape",), run) == "cuda"
    assert b.fastest("tv_loss", ("k",), run) == "cuda"
    x, y = torch.rand(2, 3, 30, 40), torch.rand(2, 3, 17, 30)
    assert b.shape_class(x) == b.shape_class(torch.rand(2, 3, 40, 30)) != b.shape_class(y)
    # the backends read the layouts differently (the CUDA kernels copy channels-last to NCHW)
    assert b.shape_class(x.contiguous(memory_format=torch.channels_last)) != b.shape_class(x)


def test_only_auto_is_timed(monkeypatch):
    b = ops._backends
    monkeypatch.setattr(ops, "resolve", lambda op, requested, device: requested or "cuda")
    monkeypatch.setattr(b, "load", lambda name: (object(), ""))
    monkeypatch.setattr(b, "fastest", lambda op, key, run: "triton")
    monkeypatch.delenv("SGLLIE_BACKEND", raising=False)
    x = torch.rand(1, 3, 4, 4)
    assert ops._choose("le_curve", None, x, None) == "triton"
    assert ops._choose("le_curve", "cuda", x, None) == "cuda"
    with ops.use_backend("cuda"):
        assert ops._choose("le_curve", None, x, None) == "cuda"
    monkeypatch.setenv("SGLLIE_BACKEND", "cuda")
    assert ops._choose("le_curve", None, x, None) == "cuda"
