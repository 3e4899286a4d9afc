"""The Inria benchmark's baseline: an FCN whose multi-scale features feed a per-pixel
MLP (Maggiori et al., "High-resolution aerial image labeling with convolutional neural
networks", IEEE TGRS 2017).

A small fully convolutional base (four stages of 3x3 convolutions, 2x2 max-pooling
between them) gives features at 1, 1/2, 1/4 and 1/8 of the input resolution; each
is upsampled bilinearly to full resolution and all are concatenated, so every pixel
carries a description of its surroundings at four scales; an MLP made of 1x1
convolutions classifies each pixel from its own feature vector alone. The stage
widths and the MLP's hidden size are ours (the paper's text gives the structure,
not the table of widths); same padding, sides multiples of 8, overlap windows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from service.errors import InputError

from .dual_unet import double_conv
from .unet_valid import check_sides, he_init

STRIDE = 8


class FcnMlp(nn.Module):
    """``(N, 3, n, n)`` -> two class scores per pixel (trained with cross-entropy)."""

    classes = 2

    def __init__(self, widths: tuple[int, ...] = (32, 64, 96, 128), hidden: int = 128) -> None:
        super().__init__()
        if len(widths) != 4:
            raise InputError(f"the FCN base needs 4 stage widths (scales 1, 1/2, 1/4, 1/8), got {list(widths)}")
        self.multiple = STRIDE
        self.base = nn.ModuleList()
        cin = 3
        for w in widths:
            self.base.append(double_conv(cin, w))
            cin = w
        # 1x1 convolutions: the same small MLP applied to each pixel's feature vector.
        self.mlp = nn.Sequential(
            nn.Conv2d(sum(widths), hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 2, 1),
        )
        he_init(self)

    def multiscale(self, x: torch.Tensor) -> torch.Tensor:
        """Every stage's features at full resolution, concatenated: the MLP's input."""
        check_sides(x, STRIDE)
        scales = []
        for i, stage in enumerate(self.base):
            x = stage(x if i == 0 else F.max_pool2d(x, 2))
            scales.append(x if i == 0 else F.interpolate(x, scale_factor=float(2**i), mode="bilinear", align_corners=False))
        return torch.cat(scales, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.multiscale(x))
