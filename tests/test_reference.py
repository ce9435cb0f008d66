"""The reference ops against independent, straightforward computations (numpy loops), and their
hand-written backward functions against autograd through the forward."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sgllie.ops import reference as R
from conftest import assert_close


def rng(seed=0):
    return np.random.default_rng(seed)


def grey_pool_np(a, p):
    """(N,3,H,W) -> (N,H//p,W//p): channel mean then non-overlapping p x p mean, remainder dropped."""
    g = a.mean(1)
    n, h, w = g.shape
    out = np.zeros((n, h // p, w // p))
    for b in range(n):
        for i in range(h // p):
            for j in range(w // p):
                out[b, i, j] = g[b, i * p:(i + 1) * p, j * p:(j + 1) * p].mean()
    return out


def test_dsconv2d_matches_loops():
    r = rng(1)
    n, c1, c2, o, h, w = 2, 2, 3, 4, 5, 7
    x, x2 = r.random((n, c1, h, w)), r.random((n, c2, h, w))
    dw, db = r.standard_normal((c1 + c2, 1, 3, 3)), r.standard_normal(c1 + c2)
    pw, pb = r.standard_normal((o, c1 + c2, 1, 1)), r.standard_normal(o)
    xc = np.concatenate([x, x2], 1)
    xp = np.pad(xc, ((0, 0), (0, 0), (1, 1), (1, 1)))
    z = np.zeros_like(xc)
    for ch in range(c1 + c2):
        for i in range(h):
            for j in range(w):
                z[:, ch, i, j] = (xp[:, ch, i:i + 3, j:j + 3] * dw[ch, 0]).sum((1, 2)) + db[ch]
    y = np.einsum("oc,nchw->nohw", pw[:, :, 0, 0], z) + pb[None, :, None, None]
    t = lambda a: torch.from_numpy(a)
    got = R.dsconv2d(t(x), t(dw), t(db), t(pw), t(pb), x2=t(x2), activation="relu")
    assert_close(got, t(np.maximum(y, 0)))
    assert_close(R.dsconv2d(t(xc), t(dw), t(db), t(pw), t(pb)), t(y))


def test_le_curve_matches_loops_with_upsample():
    r = rng(2)
    x = r.random((2, 3, 7, 10))
    small = r.uniform(-1, 1, (2, 3, 3, 4))
    # align_corners=True: output pixel i samples input at i * (h_in - 1) / (h_out - 1)
    up = np.zeros_like(x)
    for i in range(7):
        for j in range(10):
            fy, fx = i * 2 / 6, j * 3 / 9
            y0, x0 = int(np.floor(fy)), int(np.floor(fx))
            y1, x1 = min(y0 + 1, 2), min(x0 + 1, 3)
            wy, wx = fy - y0, fx - x0
            up[..., i, j] = ((1 - wy) * ((1 - wx) * small[..., y0, x0] + wx * small[..., y0, x1])
                             + wy * ((1 - wx) * small[..., y1, x0] + wx * small[..., y1, x1]))
    expected = x.copy()
    for _ in range(8):
        expected = expected + up * (expected ** 2 - expected)
    assert_close(R.le_curve(torch.from_numpy(x), torch.from_numpy(small)), torch.from_numpy(expected))
    same = r.uniform(-1, 1, x.shape)
    e2 = x.copy()
    for _ in range(3):
        e2 = e2 + same * (e2 ** 2 - e2)
    assert_close(R.le_curve(torch.from_numpy(x), torch.from_numpy(same), 3), torch.from_numpy(e2))


@pytest.mark.parametrize("patch,h,w", [(4, 13, 10), (3, 9, 11), (5, 5, 17), (4, 4, 4)])
def test_spatial_consistency_matches_loops(patch, h, w):
    r = rng(3)
    y, i = r.random((2, 3, h, w)), r.random((2, 3, h, w))
    py, pi = grey_pool_np(y, patch), grey_pool_np(i, patch)
    n, ph, pw = py.shape
    total = 0.0
    for b in range(n):
        for a in range(ph):
            for c in range(pw):
                for (dy, dx), weight in R.SPA_NEIGHBOURS:
                    na, nc = a + dy, c + dx
                    inside = 0 <= na < ph and 0 <= nc < pw
                    dY = py[b, a, c] - (py[b, na, nc] if inside else 0.0)
                    dI = pi[b, a, c] - (pi[b, na, nc] if inside else 0.0)
                    total += weight * (dY - dI) ** 2
    got = R.spatial_consistency_loss(torch.from_numpy(y), torch.from_numpy(i), patch)
    assert got.shape == ()
    assert_close(got, torch.tensor(total / (n * ph * pw), dtype=torch.float64))


def test_spatial_consistency_hand_value():
    # one pooled pixel: every neighbour is the zero border, so E = (4 + 4 * 0.5) * (gY - gI)^2
    y = torch.full((1, 3, 4, 4), 0.5, dtype=torch.float64)
    i = torch.full((1, 3, 4, 4), 0.25, dtype=torch.float64)
    assert float(R.spatial_consistency_loss(y, i)) == pytest.approx(6 * 0.25 ** 2)


@pytest.mark.parametrize("h,w", [(16, 16), (35, 50)])
def test_exposure_matches_loops(h, w):
    y = rng(4).random((3, 3, h, w))
    p = grey_pool_np(y, 16)
    expected = ((p - 0.6) ** 2).mean()
    assert_close(R.exposure_loss(torch.from_numpy(y)), torch.tensor(expected, dtype=torch.float64))
    assert float(R.exposure_loss(torch.full((1, 3, 16, 16), 0.6, dtype=torch.float64))) == pytest.approx(0)


def test_color_constancy_matches_numpy():
    y = rng(5).random((3, 3, 6, 7))
    m = y.mean((2, 3))
    k = np.sqrt((m[:, 0] - m[:, 1]) ** 4 + (m[:, 0] - m[:, 2]) ** 4 + (m[:, 2] - m[:, 1]) ** 4)
    assert_close(R.color_constancy_loss(torch.from_numpy(y)), torch.tensor(k.mean(), dtype=torch.float64))
    # hand value: means (1, 0, 0) -> sqrt(1 + 1 + 0)
    one = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    one[:, 0] = 1
    assert float(R.color_constancy_loss(one)) == pytest.approx(np.sqrt(2))


def test_tv_matches_loops():
    r = rng(6).random((2, 3, 5, 4))
    n, c, h, w = r.shape
    sh = sum((r[b, k, i + 1, j] - r[b, k, i, j]) ** 2 for b in range(n) for k in range(c)
             for i in range(h - 1) for j in range(w))
    sw = sum((r[b, k, i, j + 1] - r[b, k, i, j]) ** 2 for b in range(n) for k in range(c)
             for i in range(h) for j in range(w - 1))
    expected = 2 * (sh / ((h - 1) * w) + sw / (h * (w - 1))) / n
    assert_close(R.tv_loss(torch.from_numpy(r)), torch.tensor(expected, dtype=torch.float64))


# ----------------------------------------------------------------------------- backward formulas
def _autograd(fn, inputs, grads):
    leaves = [t.detach().requires_grad_() for t in inputs]
    out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    return torch.autograd.grad(outs, leaves, grads)


def _f64(*shape, lo=0.0, hi=1.0):
    return torch.empty(*shape, dtype=torch.float64).uniform_(lo, hi)


@pytest.mark.parametrize("with_x2,activation", [(False, "none"), (True, "relu"), (True, "tanh")])
def test_dsconv2d_backward_formula(with_x2, activation):
    torch.manual_seed(0)
    x, x2 = _f64(2, 3, 7, 9), (_f64(2, 2, 7, 9) if with_x2 else None)
    c = 3 + (2 if with_x2 else 0)
    params = [_f64(c, 1, 3, 3, lo=-1), _f64(c, lo=-1), _f64(5, c, 1, 1, lo=-1), _f64(5, lo=-1)]
    grad = _f64(2, 5, 7, 9, lo=-1)
    inputs = [x] + ([x2] if with_x2 else []) + params

    def fn(*t):
        return R.dsconv2d(t[0], *t[-4:], x2=t[1] if with_x2 else None, activation=activation)

    expected = _autograd(fn, inputs, grad)
    out = fn(*inputs)
    gx, gx2, *gp = R.dsconv2d_backward(grad, x, *params, x2=x2, activation=activation, out=out)
    got = [gx] + ([gx2] if with_x2 else []) + gp
    for a, b in zip(got, expected):
        assert_close(a, b)


@pytest.mark.parametrize("rshape", [(2, 3, 7, 10), (2, 3, 3, 4), (2, 3, 1, 1)])
def test_le_curve_backward_formula(rshape):
    x, r = _f64(2, 3, 7, 10), _f64(*rshape, lo=-1)
    grad = _f64(2, 3, 7, 10, lo=-1)
    expected = _autograd(lambda a, b: R.le_curve(a, b, 8), [x, r], grad)
    for a, b in zip(R.le_curve_backward(grad, x, r, 8), expected):
        assert_close(a, b)


@pytest.mark.parametrize("patch,h,w", [(4, 13, 10), (3, 3, 7), (5, 11, 16)])
def test_loss_backward_formulas(patch, h, w):
    y, i = _f64(2, 3, h, w), _f64(2, 3, h, w)
    g = torch.tensor(1.7, dtype=torch.float64)
    expected = _autograd(lambda a, b: R.spatial_consistency_loss(a, b, patch), [y, i], g)
    for a, b in zip(R.spatial_consistency_loss_backward(g, y, i, patch), expected):
        assert_close(a, b)
    assert_close(R.color_constancy_loss_backward(g, y), _autograd(R.color_constancy_loss, [y], g)[0])
    assert_close(R.tv_loss_backward(g, y), _autograd(R.tv_loss, [y], g)[0])
    if min(h, w) >= 3:
        ep = 3  # an exposure patch that fits these small maps
        assert_close(R.exposure_loss_backward(g, y, 0.6, ep),
                     _autograd(lambda a: R.exposure_loss(a, 0.6, ep), [y], g)[0])


def test_color_constancy_backward_is_zero_on_grey():
    y = torch.full((1, 3, 4, 4), 0.3, dtype=torch.float64)
    g = R.color_constancy_loss_backward(torch.tensor(1.0, dtype=torch.float64), y)
    assert torch.equal(g, torch.zeros_like(y))  # autograd would give NaN here


def test_zero_reference_loss_backward_formula():
    y, i = _f64(2, 3, 33, 37), _f64(2, 3, 33, 37)
    gs = [torch.tensor(v, dtype=torch.float64) for v in (0.5, 2.0, -1.5)]
    expected = _autograd(lambda a, b: R.zero_reference_loss(a, b, 4, 0.6, 16), [y, i], gs)
    *losses, pooled = R.zero_reference_loss_forward(y, i, 4, 0.6, 16)
    for a, b in zip(losses, R.zero_reference_loss(y, i, 4, 0.6, 16)):
        assert_close(a, b)
    for a, b in zip(R.zero_reference_loss_backward(*gs, pooled, y, True, 4, 16), expected):
        assert_close(a, b)
    assert R.zero_reference_loss_backward(*gs, pooled, y, False, 4, 16)[1] is None


def test_dsconv2d_backward_needs_the_output_with_an_activation():
    x, params = _f64(1, 3, 4, 4), [_f64(3, 1, 3, 3), _f64(3), _f64(2, 3, 1, 1), _f64(2)]
    with pytest.raises(ValueError, match="needs the forward's output"):
        R.dsconv2d_backward(_f64(1, 2, 4, 4), x, *params, activation="relu")
