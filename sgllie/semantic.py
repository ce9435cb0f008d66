"""Frozen segmentation net and semantic loss of SGZ (Zheng & Gupta, WACV 2022).

The enhanced image is fed (un-normalised, in [0, 1]) to a ResNet-50 + FPN
segmentation net whose parameters are frozen; the loss is a focal loss of the
net's logits against their own argmax, so it rewards images the net segments
confidently. Only the ImageNet backbone is pretrained: the FPN head keeps its
random normal(0, 0.01) init, exactly as in the reference.

Batch norm: the reference leaves the net in train mode, so BN normalises with
the statistics of the current batch. That is the default here (``bn_mode=
"batch"``) and ``train()``/``eval()`` calls (e.g. from a parent model) cannot
change it; ``bn_mode="eval"`` uses the stored running statistics instead.
In batch mode the running-stat buffers are never written: the reference does
update them, but it never reads them, so leaving them untouched gives the same
loss while keeping the loaded ImageNet weights intact. Batch mode needs more
than one value per channel at 1/32 resolution (N * ceil(H/32) * ceil(W/32) > 1).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SegmentationNet",
    "SemanticLoss",
    "imagenet_backbone_state_dict",
    "load_backbone_weights",
    "semantic_focal_loss",
]

BN_MODES = ("batch", "eval")


class _BatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d (same state_dict keys) that never updates its running stats."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:  # batch statistics, buffers untouched
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


class _Bottleneck(nn.Module):
    """torchvision ResNet v1.5 bottleneck: the stride sits on the 3x3 conv."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = _BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = _BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = _BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), _BatchNorm2d(out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNet50Backbone(nn.Module):
    """ResNet-50 without avgpool/fc, in torchvision's state_dict layout; returns c2..c5."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = _BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, blocks, stride) in enumerate(
            [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], start=1
        ):
            layer = [_Bottleneck(inplanes, planes, stride)]
            inplanes = planes * _Bottleneck.expansion
            layer += [_Bottleneck(inplanes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*layer))
        # torchvision's init, so a "random" backbone behaves like an untrained ResNet.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return c2, c3, c4, c5


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class SegmentationNet(nn.Module):
    """Frozen ResNet-50 + FPN segmentation net of SGZ; logits at 1/4 resolution.

    Output size is that of c2: ceil(ceil(H/2)/2) x ceil(ceil(W/2)/2), i.e. H/4 x W/4
    for sizes divisible by 4 (70x90 -> 18x23), as in the reference.

    All parameters are frozen (requires_grad False) but the net is differentiable
    w.r.t. its input. ``bn_mode="batch"`` (default, = reference): permanently in
    train mode, BN uses batch statistics; ``bn_mode="eval"``: permanently in eval
    mode, BN uses running statistics. ``train()``/``eval()`` cannot change it.
    ``backbone_weights``: None (random), a path, or a torchvision-layout state_dict.
    """

    def __init__(self, num_classes: int = 21, backbone_weights=None, bn_mode: str = "batch"):
        super().__init__()
        if bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
        self.bn_mode = bn_mode
        self.backbone = ResNet50Backbone()
        self.toplayer = nn.Conv2d(2048, 256, 1)
        self.latlayer1 = nn.Conv2d(1024, 256, 1)
        self.latlayer2 = nn.Conv2d(512, 256, 1)
        self.latlayer3 = nn.Conv2d(256, 256, 1)
        for i in range(1, 5):
            setattr(self, f"smooth{i}_1", nn.Conv2d(256, 256, 3, padding=1))
            setattr(self, f"smooth{i}_2", nn.Conv2d(256, 128, 3, padding=1))
        self.classify = nn.Conv2d(512, num_classes, 3, padding=1)
        for name, m in self.named_children():
            if name != "backbone":  # the head is never trained: this init is final
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

        if isinstance(backbone_weights, Mapping):
            _load_backbone_state_dict(self, backbone_weights, "given state_dict")
        elif backbone_weights is not None:
            load_backbone_weights(self, backbone_weights)
        self.requires_grad_(False)
        self.train()

    def train(self, mode: bool = True):
        # Ignore the requested mode: the BN behaviour is fixed by bn_mode.
        return super().train(self.bn_mode == "batch")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c2, c3, c4, c5 = self.backbone(x)
        p5 = self.toplayer(c5)
        p4 = _up(p5, c4) + self.latlayer1(c4)
        p3 = _up(p4, c3) + self.latlayer2(c3)
        p2 = _up(p3, c2) + self.latlayer3(c2)
        p5 = self.smooth1_2(self.smooth1_1(p5))
        p4 = self.smooth2_2(self.smooth2_1(p4))
        p3 = self.smooth3_2(self.smooth3_1(p3))
        p2 = self.smooth4_2(self.smooth4_1(p2))
        return self.classify(torch.cat([_up(p5, p2), _up(p4, p2), _up(p3, p2), p2], dim=1))


def _load_backbone_state_dict(net: nn.Module, state_dict: Mapping, origin: str) -> None:
    """Strictly load a torchvision resnet50 state_dict (fc.* ignored) into net's backbone."""
    backbone = getattr(net, "backbone", net)
    sd = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    own = backbone.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{origin}: not a torchvision ResNet-50 state_dict; "
            f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''} ({len(missing)}), "
            f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} "
            f"({len(unexpected)})"
        )
    bad = [
        f"{k}: {tuple(getattr(v, 'shape', ()))} vs expected {tuple(own[k].shape)}"
        for k, v in sd.items()
        if not isinstance(v, torch.Tensor) or v.shape != own[k].shape
    ]
    if bad:
        raise ValueError(f"{origin}: wrong shapes for {len(bad)} key(s), e.g. {bad[:3]}")
    backbone.load_state_dict(sd)


def load_backbone_weights(net: nn.Module, path) -> None:
    """Load a torchvision-layout ResNet-50 state_dict file into net's backbone.

    Accepts a plain state_dict or a dict with a "state_dict" entry; fc.* keys are ignored.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"segmentation backbone weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot be read as a torch state_dict ({e})") from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state_dict (dict), got {type(obj).__name__}")
    _load_backbone_state_dict(net, obj, path)


def imagenet_backbone_state_dict() -> tuple[dict | None, str]:
    """torchvision's ImageNet ResNet-50 (IMAGENET1K_V1) weights, or (None, reason)."""
    try:
        from torchvision.models import ResNet50_Weights
    except Exception as e:  # not installed, or incompatible with this torch
        return None, f"torchvision unavailable ({type(e).__name__}: {e})"
    try:
        sd = ResNet50_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    except Exception as e:  # offline, blocked, corrupt cache...
        return None, f"torchvision ResNet-50 download failed ({type(e).__name__}: {e})"
    return dict(sd), "torchvision ResNet50_Weights.IMAGENET1K_V1"


def semantic_focal_loss(logits: torch.Tensor, gamma: float = 2.0, eps: float = 1e-7) -> torch.Tensor:
    """Mean focal loss of (N, K, H, W) logits against their own (no-grad) argmax."""
    logits = logits.float()  # softmax/log in full precision under autocast
    target = logits.detach().argmax(dim=1, keepdim=True)
    p = logits.softmax(dim=1).gather(1, target).clamp(eps, 1.0 - eps)
    return (-((1.0 - p) ** gamma) * p.log()).mean()


class SemanticLoss(nn.Module):
    """SGZ semantic loss: focal loss of the frozen SegmentationNet on the enhanced image.

    Backbone weights: ``backbone_weights_path`` if given, else torchvision's ImageNet
    download if ``allow_download``, else RuntimeError. ``random_backbone=True`` skips
    all of that and keeps a random backbone: FOR TESTS ONLY, the loss is meaningless.
    ``source`` records where the backbone weights came from.
    """

    def __init__(
        self,
        num_classes: int = 21,
        backbone_weights_path=None,
        allow_download: bool = True,
        gamma: float = 2.0,
        *,
        random_backbone: bool = False,
        bn_mode: str = "batch",
    ):
        super().__init__()
        self.gamma = gamma
        self.net = SegmentationNet(num_classes, bn_mode=bn_mode)
        if random_backbone:
            self.source = "random backbone (tests only)"
        elif backbone_weights_path is not None:
            load_backbone_weights(self.net, backbone_weights_path)
            self.source = os.fspath(backbone_weights_path)
        else:
            sd, reason = (None, "download disabled")
            if allow_download:
                sd, reason = imagenet_backbone_state_dict()
            if sd is None:
                raise RuntimeError(
                    f"no ImageNet ResNet-50 weights ({reason}): pass --seg_weights PATH "
                    "(torchvision resnet50 state_dict, e.g. resnet50-0676ba61.pth) or use "
                    "--semantic_weight 0 to train without the semantic loss, or install "
                    "torchvision with network access to download them"
                )
            _load_backbone_state_dict(self.net, sd, reason)
            self.source = reason

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return semantic_focal_loss(self.net(y), self.gamma)
