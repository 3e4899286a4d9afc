"""Method 4 (Raisa Energy): two U-Nets stacked end to end.

The first U-Net maps the image to a building logit; the second takes the image and
the first's probability (4 channels) and returns a refined logit, so it learns the
post-processing (closing holes, straightening edges) the first leaves undone. Both
train together through one loss on the final output plus, weighted by the config's
``optim.aux_loss_weight``, the same loss on the first stage's output (where the seed
is silent: deep supervision keeps the first stage a segmenter rather than an
arbitrary feature map for the second).

The U-Nets are the original U-Net's shape (two 3x3 convolutions with batch norm and
ReLU per level, 2x2 max-pooling, 2x2 up-convolutions, concatenated skips) with same
padding, so an output pixel exists for every input pixel and the engine's dihedral
test-time augmentation lines up exactly; four poolings: sides are multiples of 16.
Served in overlap windows with TTA on by default (the manifest's ``tta``).
"""

from __future__ import annotations

import torch
from torch import nn

from service.errors import InputError

from .dual_unet import double_conv
from .unet_valid import check_sides, he_init

STRIDE = 16


class UNet(nn.Module):
    """A same-padding U-Net: ``(N, cin, n, n)`` -> one logit per pixel."""

    def __init__(self, cin: int, filters: tuple[int, ...]) -> None:
        super().__init__()
        if len(filters) != 5:
            raise InputError(f"a U-Net needs 5 filter widths (four poolings), got {list(filters)}")
        self.down = nn.ModuleList()
        for f in filters:
            self.down.append(double_conv(cin, f))
            cin = f
        self.up = nn.ModuleList(nn.ConvTranspose2d(filters[i + 1], filters[i], 2, stride=2) for i in reversed(range(4)))
        self.merge = nn.ModuleList(double_conv(2 * filters[i], filters[i]) for i in reversed(range(4)))
        self.head = nn.Conv2d(filters[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)


class StackedUNet(nn.Module):
    """``forward`` -> the second stage's logit; ``heads`` -> both stages' logits."""

    tta = True  # the authors averaged over the dihedral group at inference: so does serving

    def __init__(self, filters: tuple[int, ...] = (32, 64, 128, 256, 512), refine_filters: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.multiple = STRIDE
        self.first = UNet(3, tuple(filters))
        self.second = UNet(4, tuple(refine_filters or filters))
        he_init(self)

    def heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        check_sides(x, STRIDE)
        first = self.first(x)
        # The second stage sees the image and the first's probability (not its logit:
        # a bounded input whatever the first stage's confidence).
        refined = self.second(torch.cat([x, torch.sigmoid(first)], dim=1))
        return {"logits": refined, "stage1": first}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(x)["logits"]
