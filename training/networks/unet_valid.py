"""Method 1 (AMLL, Duke): the original U-Net with valid convolutions, filters halved.

Four down-samplings, two unpadded 3x3 convolutions per level, 2x2 max-pooling,
2x2 up-convolutions, crop-and-concatenate skips. With filters (32, 64, 128, 256,
512) it has 7,760,130 parameters (2 classes). An input of side ``16k + 124``
gives an output of side ``input - 184`` (572 -> 388, 2636 -> 2452): 92 px are
lost on each side and the pooling grid repeats every 16 px, which is what lets
the tiler stitch windows into exactly the monolithic result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from service.errors import InputError


@dataclass(frozen=True)
class ValidGeometry:
    """Window sizes a valid-convolution U-Net of ``depth`` poolings accepts.

    Sizes are found by walking the layers' arithmetic rather than by a closed
    formula: down each level two 3x3 convolutions take 4 px and the size must be
    even to pool; the bottom takes 4; up each level doubles and takes 4. For depth
    4 that gives inputs ``16k + 124`` (k >= 4) and outputs ``input - 184``.
    """

    depth: int

    @property
    def stride(self) -> int:
        """Total down-sampling: window offsets must be multiples of it to stitch exactly."""
        return 2**self.depth

    def _output(self, size: int) -> int | None:
        for _ in range(self.depth):
            size -= 4
            if size <= 0 or size % 2:
                return None
            size //= 2
        size -= 4
        if size < 1:
            return None
        for _ in range(self.depth):
            size = 2 * size - 4
            if size < 1:
                return None
        return size

    def is_valid(self, size: int) -> bool:
        return self._output(size) is not None

    @property
    def min_input(self) -> int:
        size = 1
        while not self.is_valid(size):
            size += 1
        return size

    @property
    def margin(self) -> int:
        """Pixels lost on each side (92 for depth 4)."""
        size = self.min_input
        return (size - self._output(size)) // 2

    def output_size(self, size: int) -> int:
        self.check(size)
        return size - 2 * self.margin

    def smallest_input_for_output(self, out: int) -> int:
        """The smallest valid input whose output covers ``out`` pixels."""
        size = max(self.min_input, out + 2 * self.margin)
        while not self.is_valid(size):
            size += 1
        return size

    def nearest(self, size: int) -> tuple[int | None, int]:
        """The valid sizes just below (None if there is none) and just above ``size``."""
        below = next((s for s in range(size - 1, self.min_input - 1, -1) if self.is_valid(s)), None)
        return below, self.smallest_input_for_output(size + 1 - 2 * self.margin)

    def check(self, size: int) -> None:
        if not self.is_valid(size):
            lo, hi = self.nearest(size)
            near = f"{lo} and {hi}" if lo else f"{hi} (the smallest)"
            raise InputError(
                f"window size {size} is not valid for this valid-convolution U-Net: valid sizes are "
                f"{self.min_input}, {self.min_input + self.stride}, ... every {self.stride} px "
                f"(e.g. 572, 1180, 2636 at depth 4); nearest are {near}"
            )


def he_init(module: nn.Module) -> None:
    """Gaussian weights with std sqrt(2 / fan_in), as the U-Net paper prescribes;
    PyTorch's default shrinks the signal layer by layer in a net this deep."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3), nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3), nn.ReLU(inplace=True)
    )


def crop_concat(skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Centre-crop ``skip`` to ``up``'s size and concatenate on channels.

    Writes both halves into one preallocated tensor instead of ``torch.cat``:
    on channels_last CPU tensors, cat of a cropped view was ~20x slower in torch
    2.13 (shared/perf-notes.md). Autograd handles the slice copies.
    """
    dh = (skip.shape[-2] - up.shape[-2]) // 2
    dw = (skip.shape[-1] - up.shape[-1]) // 2
    cropped = skip[..., dh : dh + up.shape[-2], dw : dw + up.shape[-1]]
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return torch.cat([cropped, up], dim=1)  # exporters want the plain op
    out = torch.empty(
        (up.shape[0], skip.shape[1] + up.shape[1], up.shape[2], up.shape[3]),
        dtype=up.dtype,
        device=up.device,
        memory_format=torch.channels_last if up.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format,
    )
    out[:, : skip.shape[1]] = cropped
    out[:, skip.shape[1] :] = up
    return out


class ValidUNet(nn.Module):
    """U-Net with valid convolutions. Returns per-class logits ``(N, classes, out, out)``."""

    def __init__(self, in_channels: int = 3, classes: int = 2, filters: tuple[int, ...] = (32, 64, 128, 256, 512)) -> None:
        super().__init__()
        self.filters = tuple(filters)
        self.classes = classes
        self.geometry = ValidGeometry(depth=len(filters) - 1)
        self.down = nn.ModuleList()
        cin = in_channels
        for f in filters[:-1]:
            self.down.append(_double_conv(cin, f))
            cin = f
        self.bottom = _double_conv(filters[-2], filters[-1])
        self.ups = nn.ModuleList()
        self.up_convs = nn.ModuleList()
        for f_hi, f in zip(reversed(filters[1:]), reversed(filters[:-1])):
            self.ups.append(nn.ConvTranspose2d(f_hi, f, 2, stride=2))
            self.up_convs.append(_double_conv(2 * f, f))
        self.head = nn.Conv2d(filters[0], classes, 1)
        self.pool = nn.MaxPool2d(2)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export():
            for side in x.shape[-2:]:
                self.geometry.check(int(side))
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, conv, skip in zip(self.ups, self.up_convs, reversed(skips)):
            x = conv(crop_concat(skip, up(x)))
        return self.head(x)
