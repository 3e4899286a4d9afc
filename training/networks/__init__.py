"""The networks, by name. Plain ``nn.Module``s depending on torch only, so the
service imports this package (and :mod:`training.metric`) and nothing else of
``training``.

| name | method | window | parameters | MACs per window |
|---|---|---|---|---|
| ``amll_unet`` | 1, AMLL | 572 -> 388 (any 16k+124) | 7,760,130 | 37.9 G at 572, 1164 G at 2636 |
| ``nus_dual_unet`` | 2, NUS | 384 + 768 context -> 384 | see ``footprints cost`` | see ``footprints cost`` |

(``training/networks/cost.py`` computes both; the table's AMLL figures match
``shared/perf-notes.md``.)
"""

from __future__ import annotations

from typing import Any

from torch import nn

from service.errors import InputError

from .dual_unet import NUS_CHANNELS, DualResolutionUNet
from .unet_valid import ValidGeometry, ValidUNet

# name -> (class, window mode). "large" windows are valid-convolution networks
# stitched exactly; "dual" windows are NUS full/context pairs blended at overlaps.
NETWORKS: dict[str, tuple[type[nn.Module], str]] = {
    "amll_unet": (ValidUNet, "large"),
    "nus_dual_unet": (DualResolutionUNet, "dual"),
}


def _entry(name: str) -> tuple[type[nn.Module], str]:
    try:
        return NETWORKS[name]
    except KeyError:
        raise InputError(f"unknown network '{name}'; known: {', '.join(NETWORKS)}") from None


def build(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate a network by registered name; an unknown name lists the known ones."""
    return _entry(name)[0](**kwargs)


def mode_of(name: str) -> str:
    """``"large"`` or ``"dual"``: which window geometry the tiler uses for this network."""
    return _entry(name)[1]


__all__ = ["NETWORKS", "NUS_CHANNELS", "DualResolutionUNet", "ValidGeometry", "ValidUNet", "build", "mode_of"]
