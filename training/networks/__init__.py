"""The networks, by name. Plain ``nn.Module``s depending on torch only, so the
service imports this package (and :mod:`training.metric`) and nothing else of
``training``.

| name | method | window (in -> out) | parameters | MACs per window |
|---|---|---|---|---|
| ``amll_unet`` | 1, AMLL | any 16k+124 -> in - 184 | 7,760,130 | 37.85 G at 572, 206.4 G at 1180, 1163.8 G at 2636 |
| ``nus_dual_unet`` | 2, NUS | 384 + 768 context (as 384) -> 384 | 5,462,019 | 41.68 G per 384 pair |
| ``effnet_unet`` | real-imagery default | any 32k -> same | 3,624,593 | 4.18 G at 384 |
| ``segnet_sdt`` | 3, ONERA | any 32k -> same | 29,469,571 | 95.55 G at 384 (60.22 G, one conv per decoder stage) |
| ``stacked_unet`` | 4, Raisa | any 16k -> same | 15,526,370 | 54.36 G at 384, per TTA pass |
| ``fcn_mlp`` | Inria baseline | any 8k -> same | 520,802 | 13.89 G at 384 |

Per output pixel: AMLL 251 kMAC at 572, 194 kMAC at 2636; NUS 283 kMAC per window
pixel, about 427 kMAC per stitched pixel of a 5000 tile (256 windows overlapping by 64 px).
Figures from :func:`training.networks.cost.window_cost` (tested for AMLL).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from service.errors import InputError
from service.tiling.geometry import DualWindows, Geometry, LargeWindows, OverlapWindows

from .dual_unet import NUS_CHANNELS, DualResolutionUNet
from .efficientnet_unet import EfficientNetUNet
from .fcn_mlp import FcnMlp
from .segnet import SegNet
from .stacked_unet import StackedUNet
from .unet_valid import ValidGeometry, ValidUNet

# name -> (class, window geometry): valid-convolution networks in large windows stitched
# exactly; NUS in full/context pairs blended at overlaps; same-padding networks in
# overlap windows, margins dropped, cores blended (service.tiling.geometry).
NETWORKS: dict[str, tuple[type[nn.Module], type[Geometry]]] = {
    "amll_unet": (ValidUNet, LargeWindows),
    "nus_dual_unet": (DualResolutionUNet, DualWindows),
    "effnet_unet": (EfficientNetUNet, OverlapWindows),
    "segnet_sdt": (SegNet, OverlapWindows),
    "stacked_unet": (StackedUNet, OverlapWindows),
    "fcn_mlp": (FcnMlp, OverlapWindows),
}


def _entry(name: str) -> tuple[type[nn.Module], type[Geometry]]:
    try:
        return NETWORKS[name]
    except KeyError:
        raise InputError(f"unknown network '{name}'; known: {', '.join(NETWORKS)}") from None


def build(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate a network by registered name; an unknown name lists the known ones."""
    return _entry(name)[0](**kwargs)


def geometry_of(name: str) -> type[Geometry]:
    """The window geometry the tiler cuts this network's rasters with."""
    return _entry(name)[1]


def network_class(name: str) -> type[nn.Module]:
    return _entry(name)[0]


__all__ = [
    "NETWORKS", "NUS_CHANNELS", "DualResolutionUNet", "FcnMlp", "SegNet", "StackedUNet", "ValidGeometry", "ValidUNet",
    "build", "geometry_of", "network_class",
]  # fmt: skip
