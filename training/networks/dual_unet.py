"""Method 2 (NUS): dual-resolution U-Net.

Two inputs of the same size per location: a ``S x S`` crop at full resolution
(384 in the paper) and the ``2S x 2S`` crop with the same centre, downsampled 2x
to ``S x S`` (the tiler does the downsampling). Each goes through its own U-Net
(padded convolutions, channels 32, 64, 128, 128 | 256 | 128, 128, 64, 32) to a
score map; the context score map's centre half is upsampled back to full
resolution, and a learned per-pixel weight map merges the two:

    logit = w * score_full + (1 - w) * score_context,   w = sigmoid(conv(features))

The output is one building logit per full-resolution pixel ``(N, 1, S, S)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from service.errors import InputError

from .unet_valid import exporting, he_init

NUS_CHANNELS = (32, 64, 128, 128, 256, 128, 128, 64, 32)


def double_conv(cin: int, cout: int) -> nn.Sequential:
    """Two same-padding 3x3 convolutions with batch norm and ReLU: the U-Net level of the
    same-padding networks (NUS, Raisa, the baseline's FCN stages)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class PaddedUNet(nn.Module):
    """A same-size U-Net; ``channels`` lists encoder, bottleneck and decoder widths
    (odd length, symmetric depth). Returns the last decoder features."""

    def __init__(self, in_channels: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        if len(channels) % 2 != 1:
            raise ValueError(f"channels must be encoder + bottleneck + decoder (odd length), got {channels}")
        depth = len(channels) // 2
        enc, bottom, dec = channels[:depth], channels[depth], channels[depth + 1 :]
        self.depth = depth
        self.enc = nn.ModuleList()
        cin = in_channels
        for c in enc:
            self.enc.append(double_conv(cin, c))
            cin = c
        self.bottom = double_conv(cin, bottom)
        self.ups = nn.ModuleList()
        self.dec = nn.ModuleList()
        cin = bottom
        for skip_c, c in zip(reversed(enc), dec):
            self.ups.append(nn.ConvTranspose2d(cin, c, 2, stride=2))
            self.dec.append(double_conv(c + skip_c, c))
            cin = c
        self.out_channels = cin
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.enc:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, block, skip in zip(self.ups, self.dec, reversed(skips)):
            x = block(torch.cat([skip, up(x)], dim=1))
        return x


class DualResolutionUNet(nn.Module):
    """NUS's network; ``forward(full, context)`` with both ``(N, 3, S, S)``, S a multiple of 2**depth."""

    def __init__(self, in_channels: int = 3, channels: tuple[int, ...] = NUS_CHANNELS) -> None:
        super().__init__()
        self.channels = tuple(channels)
        self.full = PaddedUNet(in_channels, self.channels)
        self.context = PaddedUNet(in_channels, self.channels)
        f = self.full.out_channels
        self.score_full = nn.Conv2d(f, 1, 1)
        self.score_context = nn.Conv2d(f, 1, 1)
        self.weight = nn.Conv2d(2 * f, 1, 1)  # per-pixel merge weight from both feature maps
        self.multiple = 2**self.full.depth
        he_init(self)

    @staticmethod
    def _centre_up(t: torch.Tensor) -> torch.Tensor:
        """Centre half of a context map, upsampled 2x to full resolution.

        One pixel of extra context on each side goes into the interpolation and is
        cropped afterwards, so border pixels are interpolated like interior ones.
        """
        s = t.shape[-1]
        q = s // 4
        centre = t[..., q - 1 : s - q + 1, q - 1 : s - q + 1]
        up = F.interpolate(centre, scale_factor=2, mode="bilinear", align_corners=False)
        return up[..., 2:-2, 2:-2]

    def forward(self, full: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if not exporting():
            if full.shape != context.shape:
                raise InputError(f"full {tuple(full.shape)} and context {tuple(context.shape)} inputs must match")
            side = full.shape[-1]
            if full.shape[-2] != side or side % self.multiple or side < 2 * self.multiple:
                raise InputError(
                    f"dual-resolution window must be square with a side that is a multiple of "
                    f"{self.multiple}, at least {2 * self.multiple} (e.g. 384), got {tuple(full.shape[-2:])}"
                )
        ff = self.full(full)
        fc = self._centre_up(self.context(context))
        s_full = self.score_full(ff)
        s_ctx = self.score_context(fc)
        w = torch.sigmoid(self.weight(torch.cat([ff, fc], dim=1)))
        return w * s_full + (1 - w) * s_ctx
