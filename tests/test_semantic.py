import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sgllie.semantic import (
    SegmentationNet,
    SemanticLoss,
    imagenet_backbone_state_dict,
    load_backbone_weights,
    semantic_focal_loss,
)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return SegmentationNet()


def expected_resnet50_keys():
    """torchvision resnet50 state_dict keys minus fc, written out independently."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["conv1.weight"] + [f"bn1.{s}" for s in bn]
    for layer, blocks in enumerate([3, 4, 6, 3], start=1):
        for b in range(blocks):
            pre = f"layer{layer}.{b}."
            for i in (1, 2, 3):
                keys.append(f"{pre}conv{i}.weight")
                keys += [f"{pre}bn{i}.{s}" for s in bn]
            if b == 0:
                keys.append(f"{pre}downsample.0.weight")
                keys += [f"{pre}downsample.1.{s}" for s in bn]
    return keys


# ---------------------------------------------------------------- architecture

def test_backbone_matches_torchvision_layout(net):
    sd = net.backbone.state_dict()
    expected = expected_resnet50_keys()
    assert len(expected) == 318  # 320 torchvision keys minus fc.weight/fc.bias
    assert set(sd) == set(expected)
    shapes = {
        "conv1.weight": (64, 3, 7, 7),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer4.2.conv3.weight": (2048, 512, 1, 1),
        "layer3.5.bn2.running_var": (256,),
        "layer2.0.conv2.weight": (128, 128, 3, 3),  # stride on the 3x3 conv (v1.5)
    }
    for k, s in shapes.items():
        assert tuple(sd[k].shape) == s, k
    assert net.backbone.layer2[0].conv2.stride == (2, 2)
    assert net.backbone.layer2[0].conv1.stride == (1, 1)
    assert sum(p.numel() for p in net.backbone.parameters()) == 25_557_032 - 2_049_000


def test_head_layout_and_init(net):
    expected = {"toplayer": (256, 2048, 1, 1), "latlayer1": (256, 1024, 1, 1),
                "latlayer2": (256, 512, 1, 1), "latlayer3": (256, 256, 1, 1),
                "classify": (21, 512, 3, 3)}
    for i in range(1, 5):
        expected[f"smooth{i}_1"] = (256, 256, 3, 3)
        expected[f"smooth{i}_2"] = (128, 256, 3, 3)
    for name, shape in expected.items():
        conv = getattr(net, name)
        assert tuple(conv.weight.shape) == shape
        assert torch.all(conv.bias == 0)
        assert abs(conv.weight.std().item() - 0.01) < 0.002, name
    assert all(not p.requires_grad for p in net.parameters())


@pytest.mark.parametrize("hw,out", [((64, 64), (16, 16)), ((64, 96), (16, 24)),
                                     ((70, 90), (18, 23))])  # odd: ceil(ceil(H/2)/2)
def test_output_shape(net, hw, out):
    with torch.no_grad():
        y = net(torch.rand(2, 3, *hw))
    assert y.shape == (2, 21, *out)
    assert torch.isfinite(y).all()


# ---------------------------------------------------------------- focal loss

def reference_focal(logits, gamma, eps=1e-7):
    n, k, h, w = logits.shape
    total = 0.0
    for b in range(n):
        for i in range(h):
            for j in range(w):
                z = [logits[b, c, i, j].item() for c in range(k)]
                t = max(range(k), key=lambda c: z[c])
                p = math.exp(z[t]) / sum(math.exp(v) for v in z)
                p = min(max(p, eps), 1 - eps)
                total += -((1 - p) ** gamma) * math.log(p)
    return total / (n * h * w)


def test_focal_loss_hand_checked():
    # one pixel, logits (0, log 3): p_max = 3/4 -> loss = (1/4)^2 * -log(3/4)
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)
    loss = semantic_focal_loss(logits)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(-(0.25 ** 2) * math.log(0.75), rel=1e-6)
    # uniform over 4 classes: p = 1/4
    loss = semantic_focal_loss(torch.zeros(1, 4, 2, 3))
    assert loss.item() == pytest.approx(-(0.75 ** 2) * math.log(0.25), rel=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 3.5])
def test_focal_loss_random_logits(gamma):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64) * 3
    loss = semantic_focal_loss(logits, gamma=gamma)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(reference_focal(logits, gamma), rel=1e-5)


def test_focal_gamma0_is_cross_entropy_on_argmax():
    logits = torch.randn(2, 21, 8, 8, generator=torch.Generator().manual_seed(2))
    ce = F.cross_entropy(logits, logits.argmax(1))
    torch.testing.assert_close(semantic_focal_loss(logits, gamma=0.0), ce)


def test_focal_saturated_pixel_is_clamped():
    logits = torch.tensor([0.0, 200.0]).view(1, 2, 1, 1)  # p rounds to 1
    loss = semantic_focal_loss(logits)
    assert torch.isfinite(loss) and loss.item() >= 0


# ---------------------------------------------------------------- gradients / BN

def test_grad_flows_to_input_only_and_running_stats_untouched(net):
    before = {k: v.clone() for k, v in net.state_dict().items()}
    y = torch.rand(2, 3, 64, 64, requires_grad=True)
    loss = semantic_focal_loss(net(y))
    loss.backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_parent_eval_keeps_batch_stat_mode(net):
    parent = nn.Sequential(net)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)
        parent.eval()
        assert net.training and all(m.training for m in net.modules())
        torch.testing.assert_close(net(x), ref)
    parent.train()
    # batch statistics: differs from running-stat (eval) output of the same weights
    ev = SegmentationNet(bn_mode="eval")
    ev.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert not torch.allclose(ev(x), ref)


def test_bn_mode_eval_stays_eval():
    ev = SegmentationNet(bn_mode="eval")
    nn.Sequential(ev).train()
    assert not ev.training and not any(m.training for m in ev.modules())
    with pytest.raises(ValueError):
        SegmentationNet(bn_mode="frozen")


# ---------------------------------------------------------------- weight loading

@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    torch.manual_seed(3)
    src = SegmentationNet()
    sd = dict(src.backbone.state_dict())
    for k in sd:  # make running stats non-default so the round trip checks them
        if "running" in k:
            sd[k] = torch.rand_like(sd[k]) + 0.5
    sd["fc.weight"] = torch.randn(1000, 2048)
    sd["fc.bias"] = torch.randn(1000)
    path = tmp_path_factory.mktemp("w") / "resnet50.pth"
    torch.save(sd, path)
    return path, sd


def test_weight_round_trip(weights_file, tmp_path):
    path, sd = weights_file
    fresh = SegmentationNet()
    load_backbone_weights(fresh, path)
    got = fresh.backbone.state_dict()
    for k, v in got.items():
        assert torch.equal(v, sd[k]), k
    # {"state_dict": ...} wrapper and the constructor / SemanticLoss paths
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": sd, "epoch": 3}, wrapped)
    loss_mod = SemanticLoss(backbone_weights_path=wrapped, allow_download=False)
    assert str(wrapped) in loss_mod.source
    assert torch.equal(loss_mod.net.backbone.layer4[2].conv3.weight, sd["layer4.2.conv3.weight"])
    assert all(not p.requires_grad for p in loss_mod.parameters())


def test_bad_weight_files(weights_file, tmp_path):
    path, sd = weights_file
    net = SegmentationNet()
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00\x01 not a checkpoint" * 10)
    with pytest.raises(ValueError, match="garbage.pth"):
        load_backbone_weights(net, garbage)

    missing = tmp_path / "missing_key.pth"
    torch.save({k: v for k, v in sd.items() if k != "layer3.5.bn2.running_var"}, missing)
    with pytest.raises(ValueError, match=r"missing_key\.pth.*layer3\.5\.bn2\.running_var"):
        load_backbone_weights(net, missing)

    extra = tmp_path / "extra_key.pth"
    torch.save({**sd, "head.weight": torch.zeros(1)}, extra)
    with pytest.raises(ValueError, match=r"extra_key\.pth.*head\.weight"):
        load_backbone_weights(net, extra)

    shape = tmp_path / "bad_shape.pth"
    torch.save({**sd, "conv1.weight": torch.zeros(64, 3, 3, 3)}, shape)
    with pytest.raises(ValueError, match=r"bad_shape\.pth.*conv1\.weight"):
        load_backbone_weights(net, shape)

    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_backbone_weights(net, tmp_path / "nope.pth")


# ---------------------------------------------------------------- SemanticLoss

def test_semantic_loss_requires_weights(monkeypatch):
    with pytest.raises(RuntimeError, match=r"--seg_weights PATH.*--semantic_weight 0"):
        SemanticLoss(allow_download=False)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # force ImportError, no network
    sd, reason = imagenet_backbone_state_dict()
    assert sd is None and "torchvision" in reason
    with pytest.raises(RuntimeError, match="torchvision unavailable"):
        SemanticLoss(allow_download=True)


def test_semantic_loss_random_backbone_forward():
    loss_mod = SemanticLoss(random_backbone=True)
    assert "test" in loss_mod.source
    y = torch.rand(2, 3, 64, 64, requires_grad=True)
    loss = loss_mod(y)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
