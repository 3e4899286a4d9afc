"""Method 1 (AMLL, Duke): the original U-Net with valid convolutions, filters halved.

Four down-samplings, two unpadded 3x3 convolutions per level, 2x2 max-pooling,
2x2 up-convolutions, crop-and-concatenate skips. With filters (32, 64, 128, 256,
512) it has 7,760,130 parameters (2 classes). An input of side ``16k + 124``
gives an output of side ``input - 184`` (572 -> 388, 2636 -> 2452): 92 px are
lost on each side and the pooling grid repeats every 16 px, which is what lets
the tiler stitch windows into exactly the monolithic result.
"""

from __future__ import annotations

import torch
from torch import nn

from service.errors import InputError
from service.tiling.geometry import ValidGeometry


def exporting() -> bool:
    """True while an exporter (ONNX, TorchScript tracing, ``torch.export``) records the
    graph: shape checks with Python ints would freeze the window size into it."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()


def check_sides(x: torch.Tensor, multiple: int) -> None:
    """Refuse a window whose sides are not multiples of a same-padding network's stride
    (skipped while exporting: Python-int checks would freeze the size into the graph)."""
    if not exporting():
        for side in x.shape[-2:]:
            if int(side) % multiple:
                raise InputError(f"window sides must be multiples of {multiple} for this network, got {tuple(x.shape[-2:])}")


def he_init(module: nn.Module) -> None:
    """Gaussian weights with std sqrt(2 / fan_in), as the U-Net paper prescribes;
    PyTorch's default shrinks the signal layer by layer in a net this deep."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3), nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3), nn.ReLU(inplace=True))


def crop_concat(skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Centre-crop ``skip`` to ``up``'s size and concatenate on channels.

    Writes both halves into one preallocated tensor instead of ``torch.cat``:
    on channels_last CPU tensors, cat of a cropped view was ~20x slower in torch
    2.13 (shared/perf-notes.md). Autograd handles the slice copies.
    """
    dh = (skip.shape[-2] - up.shape[-2]) // 2
    dw = (skip.shape[-1] - up.shape[-1]) // 2
    cropped = skip[..., dh : dh + up.shape[-2], dw : dw + up.shape[-1]]
    if exporting():
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
        if not exporting():
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
