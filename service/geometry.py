"""A model's window rules, as its manifest records them.

The serving side learns everything about a model's windows from the store: which
input sides a valid-convolution network takes (:class:`ValidGeometry`), the
default window per device and the dual-resolution rules (:class:`WindowSpec`),
and what one window costs in memory (:class:`WindowMemory`). Export writes these
records from the network; this module is the one place that reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError


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
        return (self.min_input - self.output_size(self.min_input)) // 2

    def output_size(self, size: int) -> int:
        out = self._output(size)
        if out is None:
            self.check(size)  # raises, naming the nearest valid sizes
            raise AssertionError(size)
        return out

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


MODES = ("large", "dual", "overlap")


@dataclass(frozen=True)
class WindowSpec:
    """How a model is cut into windows: ``mode`` ``"large"`` (valid-convolution
    windows stitched exactly), ``"dual"`` (NUS full/context pairs, blended) or
    ``"overlap"`` (same-padding windows: a margin dropped, the cores blended); and
    whether its windows get dihedral test-time augmentation unless a request says
    otherwise (``tta``: method 4 is served that way, as its authors ran it)."""

    mode: str
    default_window_px: Mapping[str, int] = field(default_factory=dict)  # per device kind, and "parity"
    depth: int = 0  # large: poolings of the valid U-Net
    multiple: int = 16  # dual, overlap: window sides are multiples of the network's stride
    margin: int = 0  # overlap: px dropped on each side of a window's output
    overlap: int = 0  # overlap: px blended between neighbouring windows' kept cores
    tta: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"unknown window mode '{self.mode}'; known: {', '.join(MODES)}")
        if self.mode == "large" and self.depth < 1:
            raise InputError("a large-window model needs the depth of its valid U-Net")

    @property
    def valid(self) -> ValidGeometry | None:
        """The valid-size rules of a large-window network (None for dual)."""
        return ValidGeometry(self.depth) if self.mode == "large" else None

    def check_side(self, side: int) -> None:
        """Refuse an input window side the network cannot take (``InferWindows``' ``side``)."""
        if self.mode == "large":
            assert self.valid is not None
            self.valid.check(side)
        elif side < self.multiple or side % self.multiple:
            raise InputError(
                f"window side {side} is not valid for this {self.mode} model: sides are multiples of {self.multiple} px"
            )
        elif self.mode == "overlap" and side <= 2 * self.margin:
            raise InputError(f"window side {side} leaves nothing inside the {self.margin}-px margins of this model")

    @property
    def plan_fixed(self) -> bool:
        """Whether the window plan decides the mask: blended windows (overlap, dual) give
        other last bits for other plans, so their plan is fixed; valid-convolution windows
        stitch exactly whatever their size, so theirs may follow measured speed."""
        return self.mode != "large"

    def default_window(self, device: str) -> int:
        """The default window (large: the input side; dual: the output side). For models
        whose plan is fixed it is the manifest's ``plan`` window on every device and
        every path, so a tile gets one mask; for large windows it is the device's
        (devices the manifest does not name get the CPU's)."""
        px = self.default_window_px
        if self.plan_fixed and "plan" in px:
            return int(px["plan"])
        kind = device.split(":")[0]
        return int(px.get(kind, px.get("cpu", 0)))

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> WindowSpec:
        g = manifest["geometry"]
        px = {k: int(v) for k, v in g.get("default_window_px", {}).items()}
        tta = bool(g.get("tta", False))
        if g["kind"] == "valid_unet":
            return cls("large", px, depth=int(g["depth"]), tta=tta)
        if g["kind"] == "dual_resolution":
            return cls("dual", px, multiple=int(g.get("multiple", 16)), tta=tta)
        if g["kind"] == "same_padding":
            return cls("overlap", px, multiple=int(g["multiple"]), margin=int(g["margin"]), overlap=int(g["overlap"]), tta=tta)
        raise InputError(f"model {manifest.get('name')} has window geometry '{g['kind']}', which this server does not know")

    def to_manifest(self) -> dict[str, Any]:
        """The manifest's ``geometry`` record (margin, stride and sizes spelled out for readers)."""
        return {**self._geometry(), **({"tta": True} if self.tta else {})}

    def _geometry(self) -> dict[str, Any]:
        if self.mode == "large":
            g = ValidGeometry(self.depth)
            return {
                "kind": "valid_unet",
                "depth": self.depth,
                "margin": g.margin,
                "stride": g.stride,
                "min_input": g.min_input,
                "default_window_px": dict(self.default_window_px),
            }
        window = self.default_window("cpu")
        if self.mode == "overlap":
            return {
                "kind": "same_padding",
                "window": window,
                "margin": self.margin,
                "overlap": self.overlap,
                "multiple": self.multiple,
                "default_window_px": dict(self.default_window_px),
            }
        return {
            "kind": "dual_resolution",
            "window": window,
            "context": 2 * window,
            "multiple": self.multiple,
            "default_window_px": dict(self.default_window_px),
        }


@dataclass(frozen=True)
class WindowMemory:
    """Bytes one window of side ``n`` needs: ``a n^2 + b n + c``.

    Every activation of these networks has sides affine in the window side (valid
    convolutions take a fixed margin, poolings halve), so the total is exactly a
    quadratic in ``n``; export fits it to a meta-device count of the activations at
    three window sides and checks it at a fourth (``training.export``).
    """

    coefficients: tuple[float, float, float]

    def bytes(self, window: int) -> int:
        a, b, c = self.coefficients
        return int(round(a * window * window + b * window + c))

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> WindowMemory:
        record = manifest.get("window_memory")
        if not record:
            raise InputError(
                f"model {manifest.get('name')} v{manifest.get('version')} records no window memory; "
                "re-export it with `footprints export`"
            )
        a, b, c = record["coefficients"]
        return cls((float(a), float(b), float(c)))

    def to_manifest(self, fitted_at: list[int], checked_at: int) -> dict[str, Any]:
        return {
            "bytes": "a * n^2 + b * n + c for window side n (large: input side; dual: output side)",
            "coefficients": list(self.coefficients),
            "fitted_at": fitted_at,
            "checked_at": checked_at,
            "source": "activations counted on PyTorch's meta device at export: an upper bound on one window's peak",
        }
