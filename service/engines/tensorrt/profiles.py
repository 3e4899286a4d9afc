"""Optimisation profiles: the input shapes a TensorRT engine must take, from the
model's window rules (its manifest) and the server's limits.

A profile covers a range of window sides and batch sizes and is tuned for one of
them (``opt``). The tiler sends the default window fitted to the tile (any side from
the smallest valid one up to the default) and the server's InferWindows takes up to
``max_window``; one profile over that whole range would tune kernels for one size and
run the others slowly, so the range is cut in two at ``KNEE`` px: small windows tuned
at 512 px in batches of up to ``max_batch``, large ones tuned at the GPU default window
(2636 px for the valid U-Nets, the paper's) in batches of up to half that.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.errors import InputError
from service.tiling.geometry import Geometry

KNEE = 1024


@dataclass(frozen=True)
class Profile:
    name: str
    min_side: int
    opt_side: int
    max_side: int
    max_batch: int

    def covers(self, side: int, batch: int) -> bool:
        return self.min_side <= side <= self.max_side and 1 <= batch <= self.max_batch

    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) of an input ``(N, 3, side, side)``."""
        return (
            (1, 3, self.min_side, self.min_side),
            (1, 3, self.opt_side, self.opt_side),
            (self.max_batch, 3, self.max_side, self.max_side),
        )

    def to_manifest(self) -> dict:
        return {"name": self.name, "sides": [self.min_side, self.opt_side, self.max_side], "max_batch": self.max_batch}


def profiles(geometry: Geometry, max_batch: int = 4, max_window: int = 2688) -> list[Profile]:
    """The engine's profiles (see the module text); the sides are the geometry's."""
    sides, default = geometry.tensorrt_sides(max_window)
    small = [s for s in sides if s <= KNEE]
    large = [s for s in sides if s > KNEE]
    if not large or not small:
        return [Profile("all", sides[0], default, sides[-1], max_batch)]
    small_opt = default if default <= KNEE else min(small, key=lambda s: abs(s - 512))
    return [
        Profile("small", small[0], small_opt, small[-1], max_batch),
        Profile("large", large[0], default if default > KNEE else large[0], large[-1], max(1, max_batch // 2)),
    ]


def pick(profiles_: list[Profile], side: int, batch: int) -> int:
    """Index of the profile that takes ``batch`` windows of ``side`` px."""
    for i, p in enumerate(profiles_):
        if p.covers(side, batch):
            return i
    ranges = ", ".join(f"{p.name}: {p.min_side}-{p.max_side} px, batch <= {p.max_batch}" for p in profiles_)
    raise InputError(f"{batch} window(s) of {side} px are outside this engine's profiles ({ranges})")
