"""SGZ's enhancement-factor network (EFE) and recurrent enhancement (RIE), built on sgllie.ops."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ops
from .io import atomic_write

WIDTH = 32          # the reference's number_f
ITERATIONS = 8      # steps of the LE curve
CHECKPOINT_FORMAT = "sgllie.EnhanceNet"
DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "sgllie_default.pth"


class DSC(nn.Module):
    """Depthwise-separable block: 3x3 depthwise + 1x1 pointwise, both with bias (reference layout)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.depth_conv = nn.Conv2d(cin, cin, 3, padding=1, groups=cin)
        self.point_conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor, x2: Tensor | None = None, activation: str | None = None,
                memory_format: torch.memory_format = torch.preserve_format) -> Tensor:
        return ops.dsconv2d(x, self.depth_conv.weight, self.depth_conv.bias, self.point_conv.weight,
                            self.point_conv.bias, x2=x2, activation=activation, memory_format=memory_format)


class TC(nn.Module):
    """The reference's 'tc' ablation: one plain 3x3 conv per block."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x: Tensor, x2: Tensor | None = None, activation: str | None = None,
                memory_format: torch.memory_format = torch.preserve_format) -> Tensor:
        y = self.conv(x if x2 is None else torch.cat([x, x2], 1))
        return ops.reference.laid_out(ops.reference.activate(y, activation or "none"), memory_format)


BLOCKS = {"dsc": DSC, "tc": TC}


class EnhanceNet(nn.Module):
    """SGZ's network. ``forward(x)`` returns (enhanced, r) exactly as the reference code.

    Images are (N, 3, H, W) in [0, 1]. With scale_factor s > 1 the factor map is estimated on the
    image downscaled by s and upsampled back; H and W that are not multiples of s are reflect-padded
    and cropped back (the reference requires multiples of s and crops its inputs instead).
    """

    def __init__(self, scale_factor: int = 1, conv_type: str = "dsc"):
        super().__init__()
        if conv_type not in BLOCKS:
            raise ValueError(f"conv_type must be one of {sorted(BLOCKS)}, got {conv_type!r}")
        if isinstance(scale_factor, bool) or not isinstance(scale_factor, int) or scale_factor < 1:
            raise ValueError(f"scale_factor must be a positive int, got {scale_factor!r}")
        self.scale_factor = scale_factor
        self.conv_type = conv_type
        block = BLOCKS[conv_type]
        self.e_conv1 = block(3, WIDTH)
        self.e_conv2 = block(WIDTH, WIDTH)
        self.e_conv3 = block(WIDTH, WIDTH)
        self.e_conv4 = block(WIDTH, WIDTH)
        self.e_conv5 = block(2 * WIDTH, WIDTH)
        self.e_conv6 = block(2 * WIDTH, WIDTH)
        self.e_conv7 = block(2 * WIDTH, 3)

    def factor_map(self, x: Tensor) -> Tensor:
        """r at the network's working resolution (H/s, W/s); x's H, W must be multiples of s."""
        return self.factor_network(self.downscale(x))

    def downscale(self, x: Tensor) -> Tensor:
        """x at the network's working resolution; H, W must be multiples of s."""
        s = self.scale_factor
        return x if s == 1 else F.interpolate(x, scale_factor=1 / s, mode="bilinear")

    def factor_network(self, x_down: Tensor) -> Tensor:
        """The seven blocks: the factor map r (NCHW) of an image at the working resolution.

        Where dsconv2d's backend reads channels-last activations in place (the Triton kernels) and
        no autograd graph is recorded, the activations between the blocks are channels-last: a
        pixel's channels are then contiguous, and the kernels run ~20-50% fewer instructions
        (counted in their sm_90 builds). The first block writes them so from the NCHW image, the
        last reads them, so no copy is made. Training keeps NCHW, which the backward kernels read.
        """
        inside = torch.contiguous_format
        if (not (torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()))
                and self.conv_type == "dsc" and ops.reads_channels_last(x_down)):
            inside = torch.channels_last
        x1 = self.e_conv1(x_down, activation="relu", memory_format=inside)
        x2 = self.e_conv2(x1, activation="relu")
        x3 = self.e_conv3(x2, activation="relu")
        x4 = self.e_conv4(x3, activation="relu")
        x5 = self.e_conv5(x3, x4, activation="relu")
        x6 = self.e_conv6(x2, x5, activation="relu")
        return self.e_conv7(x1, x6, activation="tanh", memory_format=torch.contiguous_format)  # tanh fused in

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h, w = self.check_input(x)
        padded = self.pad(x)
        with ops.no_finite_checks():  # x was checked; the layers' inputs derive from it
            r = self.factor_map(padded)
            enhanced = ops.le_curve(padded, r, ITERATIONS)
        if r.shape[-2:] != padded.shape[-2:]:
            r = ops.reference.upsample_factor_map(r, tuple(padded.shape[-2:]))
        return enhanced[..., :h, :w], r[..., :h, :w]

    def enhance(self, x: Tensor, adjust_factor_map: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """The enhanced image only: the full-size factor map is never materialised.
        ``adjust_factor_map`` maps r (at the working resolution) before the curve, e.g. to smooth it
        across video frames."""
        h, w = self.check_input(x)
        padded = self.pad(x)
        with ops.no_finite_checks():  # x was checked; the layers' inputs derive from it
            r = self.factor_map(padded)
            if adjust_factor_map is not None:
                r = adjust_factor_map(r)
            return ops.le_curve(padded, r, ITERATIONS)[..., :h, :w]

    def check_input(self, x: Tensor) -> tuple[int, int]:
        """x's H, W, once x is known to be an (N, 3, H, W) image with no NaN/Inf (the one such check
        of a forward; the weights': at loading)."""
        ops.check.tensor4d("EnhanceNet", "x", x, channels=3)
        ops.check.finite("EnhanceNet", x=x)
        return x.shape[-2], x.shape[-1]

    def pad(self, x: Tensor) -> Tensor:
        """x with H, W padded up to multiples of s (reflected; replicated where too small to reflect)."""
        h, w = x.shape[-2:]
        s = self.scale_factor
        ph, pw = -h % s, -w % s
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        return x


def save_checkpoint(model: EnhanceNet, path: str | os.PathLike, **meta) -> None:
    """Write the model's weights atomically in sgllie's format (with conv_type and any ``meta``)."""
    payload = {"format": CHECKPOINT_FORMAT, "version": 1, "conv_type": model.conv_type,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "meta": meta}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, str, dict]:
    """(state_dict, conv_type, meta) from an sgllie or a reference checkpoint (a plain state_dict)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if isinstance(data, dict) and data.get("format") == CHECKPOINT_FORMAT:
        state, conv_type, meta = data["state_dict"], data["conv_type"], data.get("meta", {})
    elif isinstance(data, dict) and "e_conv1.depth_conv.weight" in data:
        state, conv_type, meta = data, "dsc", {"source": "reference checkpoint"}
    elif isinstance(data, dict) and "e_conv1.conv.weight" in data:
        state, conv_type, meta = data, "tc", {"source": "reference checkpoint"}
    else:
        raise ValueError(f"{path}: not an SGZ checkpoint (neither sgllie's format nor the reference's "
                         "e_conv1..e_conv7 state_dict)")
    # checked here, once: the model's forward checks its input only, not each layer
    bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise ValueError(f"{path}: weights contain NaN or Inf ({', '.join(bad[:3])}"
                         f"{', ...' if len(bad) > 3 else ''}): a diverged training run?")
    return state, conv_type, meta


def load_model(path: str | os.PathLike | None = None, scale_factor: int = 12,
               device: str | torch.device | None = None) -> EnhanceNet:
    """An EnhanceNet in eval mode with the packaged default weights or the checkpoint at ``path``."""
    path = DEFAULT_WEIGHTS if path is None else Path(path)
    state, conv_type, meta = read_checkpoint(path)
    model = EnhanceNet(scale_factor=scale_factor, conv_type=conv_type)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit EnhanceNet({conv_type!r}): {e}") from None
    model.meta = meta
    return model.to(device or "cpu").eval()
