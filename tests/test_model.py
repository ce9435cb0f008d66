"""EnhanceNet against a from-the-spec nn.Conv2d implementation of the reference network, the
released checkpoint and the reference's own output, checkpoints, torch.compile and torch.export."""
from __future__ import annotations

import copy
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sgllie
from sgllie.io import read_image, to_tensor, to_uint8
from conftest import assert_close, device_of, shared_path


class SpecNet(nn.Module):
    """SPEC.md section 1 written with plain nn.Conv2d, as the reference code computes it."""

    def __init__(self, scale_factor):
        super().__init__()
        self.scale_factor = scale_factor
        chans = [(3, 32), (32, 32), (32, 32), (32, 32), (64, 32), (64, 32), (64, 3)]
        for k, (cin, cout) in enumerate(chans, 1):
            block = nn.Module()
            block.depth_conv = nn.Conv2d(cin, cin, 3, 1, 1, groups=cin)
            block.point_conv = nn.Conv2d(cin, cout, 1)
            setattr(self, f"e_conv{k}", block)

    def block(self, k, x):
        b = getattr(self, f"e_conv{k}")
        return b.point_conv(b.depth_conv(x))

    def forward(self, x):
        s = self.scale_factor
        xd = x if s == 1 else F.interpolate(x, scale_factor=1 / s, mode="bilinear")
        x1 = F.relu(self.block(1, xd))
        x2 = F.relu(self.block(2, x1))
        x3 = F.relu(self.block(3, x2))
        x4 = F.relu(self.block(4, x3))
        x5 = F.relu(self.block(5, torch.cat([x3, x4], 1)))
        x6 = F.relu(self.block(6, torch.cat([x2, x5], 1)))
        r = torch.tanh(self.block(7, torch.cat([x1, x6], 1)))
        if s != 1:
            r = nn.UpsamplingBilinear2d(scale_factor=s)(r)
        for _ in range(8):
            x = x + r * (torch.pow(x, 2) - x)
        return x, r


def _pair(state, scale):
    ours = sgllie.EnhanceNet(scale_factor=scale)
    ours.load_state_dict(state)
    spec = SpecNet(scale)
    spec.load_state_dict(state)
    return ours.eval(), spec.eval()


@pytest.mark.parametrize("scale,shape", [(1, (2, 3, 31, 45)), (12, (2, 3, 48, 60)), (4, (1, 3, 36, 52))])
def test_matches_spec_network_random_weights(scale, shape):
    torch.manual_seed(scale)
    ours, spec = _pair(SpecNet(scale).state_dict(), scale)
    x = torch.rand(shape)
    with torch.no_grad():
        (y, r), (ye, re) = ours(x), spec(x)
    assert_close(y, ye, scale=10)
    assert_close(r, re, scale=10)
    assert_close(ours.enhance(x), ye, scale=10)


def test_gradients_match_spec_network():
    torch.manual_seed(0)
    ours, spec = _pair(SpecNet(1).state_dict(), 1)
    x = torch.rand(2, 3, 19, 23)
    for net in (ours, spec):
        y, r = net(x)
        (y.square().mean() + r.mean()).backward()
    for (name, a), (_, b) in zip(ours.named_parameters(), spec.named_parameters()):
        assert_close(a.grad, b.grad, scale=100), name


def test_any_size_is_padded_not_cropped():
    net = sgllie.EnhanceNet(scale_factor=12).eval()
    for shape in [(1, 3, 50, 61), (1, 3, 5, 7), (2, 3, 1, 1), (1, 3, 13, 300)]:
        x = torch.rand(shape)
        with torch.no_grad():
            y, r = net(x)
        assert y.shape == x.shape and r.shape == x.shape
        assert torch.isfinite(y).all()


@pytest.mark.needs_shared
@pytest.mark.parametrize("scale", [1, 12])
def test_released_checkpoint_matches_reference(scale):
    ckpt = shared_path("sgz-official", "Epoch99.pth")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    ours = sgllie.load_model(ckpt, scale_factor=scale)
    spec = SpecNet(scale)
    spec.load_state_dict(state)
    image = to_tensor(read_image(shared_path("sgz-official", "lowCUT", "1.png")))[..., :384, :588]
    with torch.no_grad():
        (y, r), (ye, re) = ours(image), spec.eval()(image)
    assert_close(y, ye, scale=10)   # float32 rounding
    assert_close(r, re, scale=10)


@pytest.mark.needs_shared
def test_released_checkpoint_reproduces_reference_output_image():
    """The reference's own saved output for F1.png (top-left 804x480, scale_factor 12)."""
    model = sgllie.load_model(shared_path("sgz-official", "Epoch99.pth"), scale_factor=12)
    x = to_tensor(read_image(shared_path("sgz-official", "samples", "F1.png")))[..., :480, :804]
    expected = np.round(read_image(shared_path("sgz-official", "samples", "F1Crop.png")) * 255).astype(int)
    with torch.no_grad():
        got = to_uint8(model.enhance(x)[0]).astype(int)
    diff = np.abs(got - expected)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-4  # 8-bit rounding of float32 differences only


def test_checkpoint_round_trip(tmp_path):
    net = sgllie.EnhanceNet(conv_type="tc")
    sgllie.save_checkpoint(net, tmp_path / "a.pth", epoch=3)
    loaded = sgllie.load_model(tmp_path / "a.pth", scale_factor=2)
    assert loaded.conv_type == "tc" and loaded.scale_factor == 2 and not loaded.training
    assert loaded.meta == {"epoch": 3}
    for (k, a), (_, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    torch.save(net.state_dict(), tmp_path / "plain.pth")  # the reference's format
    assert sgllie.load_model(tmp_path / "plain.pth").conv_type == "tc"
    assert not list(tmp_path.glob("*.tmp*"))


def test_bad_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth: checkpoint not found"):
        sgllie.load_model(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth: not a readable PyTorch checkpoint"):
        sgllie.load_model(tmp_path / "junk.pth")
    torch.save({"weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="other.pth: not an SGZ checkpoint"):
        sgllie.load_model(tmp_path / "other.pth")
    state = sgllie.EnhanceNet().state_dict()
    state["e_conv7.point_conv.weight"] = torch.zeros(4, 64, 1, 1)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match="shape.pth: weights do not fit"):
        sgllie.load_model(tmp_path / "shape.pth")
    state = sgllie.EnhanceNet().state_dict()
    state["e_conv3.depth_conv.bias"][1] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    with pytest.raises(ValueError, match=r"nan.pth: weights contain NaN or Inf \(e_conv3.depth_conv.bias\)"):
        sgllie.load_model(tmp_path / "nan.pth")


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="conv_type"):
        sgllie.EnhanceNet(conv_type="dc")
    with pytest.raises(ValueError, match="scale_factor"):
        sgllie.EnhanceNet(scale_factor=0)
    with pytest.raises(ValueError, match="3 channels"):
        sgllie.EnhanceNet()(torch.rand(1, 4, 8, 8))
    with pytest.raises(sgllie.ops.OpInputError, match="EnhanceNet: x contains NaN or Inf"):
        sgllie.EnhanceNet().enhance(torch.full((1, 3, 8, 8), float("inf")))


def test_forward_checks_its_input_once(monkeypatch):
    """One NaN/Inf check per forward (each is a reduction and a host sync), not one per layer."""
    checked = []
    real_finite = torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda t: checked.append(tuple(t.shape)) or real_finite(t))
    net = sgllie.EnhanceNet(scale_factor=2)
    x = torch.rand(1, 3, 10, 12)
    net(x)
    assert checked == [()]  # the input's sum
    checked.clear()
    net.enhance(x, adjust_factor_map=lambda r: r * 0.5)
    assert checked == [()]
    checked.clear()
    sgllie.ops.le_curve(x, x)  # a direct call of an op still checks its inputs
    assert checked == [(), ()]


@pytest.mark.slow
def test_torch_compile_matches_eager():
    torch.manual_seed(0)
    net = sgllie.EnhanceNet(scale_factor=4)
    x = torch.rand(2, 3, 40, 44)
    compiled = torch.compile(net, fullgraph=True)
    y, r = net(x)
    yc, rc = compiled(x)
    assert_close(yc, y, scale=10)
    (yc.mean() + rc.mean()).backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    (y.mean() + r.mean()).backward()
    for a, b in zip(grads, net.parameters()):
        assert_close(a, b.grad, scale=100)


def test_torch_export():
    net = sgllie.EnhanceNet(scale_factor=4).eval()
    x = torch.rand(1, 3, 32, 36)
    program = torch.export.export(net, (x,))
    names = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "sgllie.dsconv2d.default" in names and "sgllie.le_curve.default" in names
    y, _ = program.module()(x)
    assert_close(y, net(x)[0])


@pytest.mark.parametrize("backend", [b for b in sgllie.ops.available_backends() if b != "reference"])
def test_fused_backends_match_reference_backend(backend):
    """The whole model, forward and parameter gradients, on each fused backend available here."""
    torch.manual_seed(0)
    net = sgllie.EnhanceNet(scale_factor=4)
    x = torch.rand(2, 3, 44, 52)
    results = {}
    for name, device in (("reference", "cpu"), (backend, device_of(backend))):
        net.to(device).zero_grad()
        with sgllie.ops.use_backend(name):
            y, r = net(x.to(device))
            (y.square().mean() + r.mean()).backward()
        results[name] = [t.cpu() for t in [y.detach(), r.detach()] + [p.grad.clone() for p in net.parameters()]]
    for a, b in zip(results[backend], results["reference"]):
        assert_close(a, b, scale=100)


@pytest.mark.needs_shared
@pytest.mark.parametrize("backend", [b for b in sgllie.ops.available_backends() if b != "reference"])
def test_released_checkpoint_on_fused_backends(backend):
    model = sgllie.load_model(shared_path("sgz-official", "Epoch99.pth"), scale_factor=12)
    x = to_tensor(read_image(shared_path("sgz-official", "lowCUT", "22.png")))
    with torch.no_grad():
        with sgllie.ops.use_backend("reference"):
            expected = model.enhance(x)
        with sgllie.ops.use_backend(backend):
            device = device_of(backend)
            got = model.to(device).enhance(x.to(device)).cpu()
    assert_close(got, expected, scale=10)


@pytest.mark.parametrize("backend", [b for b in sgllie.ops.available_backends() if b != "reference"])
def test_fused_training_gradients_as_accurate_as_eager(backend):
    """flash-attention's rule: against a float64 run, a fused backend in float32 errs at most twice
    as much as the reference backend in float32 (whole training loss, every parameter gradient)."""
    from sgllie.losses import LossWeights, SGZLoss
    torch.manual_seed(0)
    net, loss = sgllie.EnhanceNet(), SGZLoss(LossWeights(sem=0))
    # smaller under the Triton interpreter, where every program of every launch runs in numpy
    x = torch.rand(*((1, 3, 20, 36) if sgllie.ops._backends.triton_interpreting() else (2, 3, 64, 80)))

    def grads(model, images, name):
        model.zero_grad()
        with sgllie.ops.use_backend(name):
            y, r = model(images)
            loss(y, r, images)[0].backward()
        return [p.grad.double() for p in model.parameters()]

    truth = grads(copy.deepcopy(net).double(), x.double(), "reference")

    def error(gs):
        return max(float((g - t).abs().max() / t.abs().max()) for g, t in zip(gs, truth))
    device = device_of(backend)
    fused = [g.cpu() for g in grads(copy.deepcopy(net).to(device), x.to(device), backend)]
    assert error(fused) <= 2 * error(grads(net, x, "reference"))
