"""Window geometry: how a model is cut into windows, one class per kind.

* :class:`LargeWindows`: valid-convolution U-Nets (method 1, AMLL). A window of input
  side ``n`` yields ``n - 2m`` output pixels; windows stitch exactly, whatever their
  size, so their plan may follow measured speed.
* :class:`DualWindows`: NUS pairs (method 2): an output window of side ``s`` and the
  ``2s`` context crop of the same centre, overlaps blended.
* :class:`OverlapWindows`: same-padding networks (the EfficientNet U-Net, SegNet,
  stacked U-Nets, the FCN baseline): a margin dropped per side, the cores blended.

Each class owns everything that differs between them: its plan and fitting, the
crops a window reads and the model's inputs, the sides it accepts, its default and
plan windows, its record in the manifest, and the window sides a TensorRT engine must
take. Callers ask a geometry; nobody outside this package asks which one it is. The
manifest names it once, as ``geometry.mode``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from service.errors import InputError
from service.tiling.plans import (
    DualWindowPlan,
    LargeWindowPlan,
    OverlapWindowPlan,
    TilePlan,
    fit_large_window,
    fit_overlap_window,
)

# Default windows written at export. Large windows (input side): GPUs take the paper's
# 2636 (what fit an 11 GB card); on the CPU, benchmarks/tiling.py measured 1180 fastest
# per output pixel. Blended windows' plan is one window on every device and path (their
# last bits depend on it): 4 x 4 windows on a 5000-px tile for the same-padding U-Nets,
# the fastest count measured on AMX CPUs; the paper's 384 output side for NUS.
LARGE_WINDOW = {"cuda": 2636, "cpu": 1180}
OVERLAP_PLAN, OVERLAP_MARGIN, OVERLAP_BLEND = 1376, 32, 64
DUAL_PLAN = 384
PARITY_OVERLAP = 384  # the window parity and precision checks run at
DUAL_OVERLAP = 64  # px blended between dual windows (EngineConfig may say otherwise)


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


@dataclass(frozen=True)
class Geometry:
    """What every window geometry answers (see the module). ``default_window_px`` maps
    device kinds (and ``"plan"``, ``"parity"``) to window sides; ``tta``: windows get the
    8 dihedral passes unless a request says otherwise (method 4 is served so)."""

    mode: ClassVar[str]
    plan_fixed: ClassVar[bool] = True  # the plan decides the mask's last bits
    context: ClassVar[int] = 0  # a context crop of this many times the window side (0: none)

    default_window_px: Mapping[str, int] = field(default_factory=dict)
    tta: bool = False

    # ---- windows ---------------------------------------------------------------
    @property
    def input_names(self) -> tuple[str, ...]:
        """The model's inputs, in order (the ONNX graph's names)."""
        return ("rgb", "context") if self.context else ("rgb",)

    def default_window(self, device: str) -> int:
        """The default window (large: the input side; dual: the output side). A blended
        geometry's is its ``plan`` window on every device and path, so that a tile gets
        one mask; otherwise the device's (devices the manifest does not name get the CPU's)."""
        px = self.default_window_px
        if self.plan_fixed and "plan" in px:
            return int(px["plan"])
        return int(px.get(device.split(":")[0], px.get("cpu", 0)))

    def parity_window(self) -> int:
        """The window side parity and precision checks run at."""
        return int(self.default_window_px.get("parity", self.default_window("cpu")))

    def check_side(self, side: int) -> None:
        """Refuse an input window side the network cannot take (``InferWindows``' ``side``)."""
        raise NotImplementedError

    def read_side(self, side: int) -> int:
        """The largest crop a window of ``side`` reads from the raster (dual: its context)."""
        return side * (self.context or 1)

    def output_side(self, side: int) -> int:
        """The side of the model's output for an input window of ``side``."""
        return side

    def kept_side(self, side: int) -> int:
        """Raster pixels along one axis a window's output is kept for (margins dropped)."""
        return self.output_side(side)

    def crop_shapes(self, count: int, side: int) -> list[tuple[int, int, int, int]]:
        """Shapes of the uint8 crops ``count`` windows of ``side`` send to a model."""
        return [(count, 3, side, side)] + ([(count, 3, self.context * side, self.context * side)] if self.context else [])

    def split(self, reads: np.ndarray, side: int) -> list[np.ndarray]:
        """The crops of windows of ``side`` from ``(N, 3, n, n)`` reads centred on them
        (``n`` >= ``side``; a context geometry's reads are its context, ``n = 2 side``)."""
        lo = (reads.shape[-1] - side) // 2
        centre = np.ascontiguousarray(reads[:, :, lo : lo + side, lo : lo + side])
        return [centre, reads] if self.context else [centre]

    def random_crops(self, count: int, side: int, seed: int = 0) -> list[np.ndarray]:
        """Random uint8 crops of ``count`` windows of ``side`` (timing, engine checks)."""
        rng = np.random.default_rng(seed)
        return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in self.crop_shapes(count, side)]

    def centre_crops(
        self, readers: list[Callable[[int, int, int], np.ndarray]], height_width: list[tuple[int, int]], side: int
    ) -> list[np.ndarray]:
        """One window of ``side`` at the centre of each raster (``readers[i](row, col, size)``
        reads mirror padded): what parity checks compare engines on."""
        n = self.read_side(side)
        reads = [read(max(0, h // 2 - n // 2), max(0, w // 2 - n // 2), n) for read, (h, w) in zip(readers, height_width)]
        return self.split(np.stack(reads), side)

    def input_sides(self, side: int) -> tuple[int, ...]:
        """The network's input sides for one window (a context is averaged down to ``side``)."""
        return (side,) * len(self.input_names)

    @classmethod
    def for_network(cls, net: Any, tta: bool = False) -> Geometry:
        """The geometry export writes for a network (its default windows, from here)."""
        raise NotImplementedError

    def smallest_side(self) -> int:
        """The smallest window side this geometry takes."""
        raise NotImplementedError

    def trace_side(self) -> int:
        """A small valid side to trace the network at (export)."""
        raise NotImplementedError

    def program_sides(self) -> tuple[int, int, int, int]:
        """Every side a torch.export program must take, as ``step * k + offset`` for
        ``k >= k_min``, and an example side to export at (not the smallest: export
        specialises sizes of 0 and 1): ``(step, offset, k_min, example)``."""
        raise NotImplementedError

    def side_step(self) -> int:
        """Valid sides are ``smallest_side() + k * side_step()``."""
        raise NotImplementedError

    # ---- plans -----------------------------------------------------------------
    def plan(self, height: int, width: int, window: int, fit: bool = True, overlap: int = DUAL_OVERLAP) -> TilePlan:
        """Windows of ``window`` (fitted to the raster unless ``fit`` is off) covering it."""
        raise NotImplementedError

    def window_for_count(self, length: int, n: int, overlap: int = DUAL_OVERLAP) -> int:
        """About the smallest window covering ``length`` px in ``n`` windows per axis."""
        raise NotImplementedError

    # ---- records ---------------------------------------------------------------
    def info(self, device: str) -> dict[str, int]:
        """What ``ListModels`` says of the windows: margin, stride, default window, context."""
        window = self.default_window(device)
        return {"margin": 0, "stride": 0, "default_window": window, "context": self.context * window}

    def to_manifest(self) -> dict[str, Any]:
        """The manifest's ``geometry`` record (margins, strides and sizes spelled out for readers)."""
        return {
            "mode": self.mode,
            **self._record(),
            "default_window_px": dict(self.default_window_px),
            **({"tta": True} if self.tta else {}),
        }

    def _record(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_record(cls, px: dict[str, int], tta: bool, record: Mapping[str, Any]) -> Geometry:
        raise NotImplementedError

    def tensorrt_sides(self, max_window: int) -> tuple[list[int], int]:
        """Every input side (as the network sees it) a TensorRT engine may be sent,
        ascending, and the side to tune for (the GPU default window). A context, at the
        window side once averaged, must itself fit ``max_window``."""
        top = max_window // (self.context or 1)
        low = self._smallest_engine_side()
        step = self.side_step()
        sides = list(range(low, top + 1, step))
        if not sides:
            raise InputError(f"no window side of this {self.mode} model fits under {max_window} px")
        default = self.default_window("cuda")
        return sides, min(max(default, sides[0]), sides[-1])

    def _smallest_engine_side(self) -> int:
        return self.smallest_side()


@dataclass(frozen=True)
class LargeWindows(Geometry):
    """Valid-convolution windows of a U-Net with ``depth`` poolings."""

    mode: ClassVar[str] = "large"
    plan_fixed: ClassVar[bool] = False
    depth: int = 4

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise InputError("a large-window model needs the depth of its valid U-Net")

    @property
    def valid(self) -> ValidGeometry:
        return ValidGeometry(self.depth)

    @classmethod
    def for_network(cls, net: Any, tta: bool = False) -> LargeWindows:
        g: ValidGeometry = net.geometry
        parity = 572 if g.is_valid(572) else g.smallest_input_for_output(388)
        return cls({**LARGE_WINDOW, "parity": parity}, tta, depth=g.depth)

    def check_side(self, side: int) -> None:
        self.valid.check(side)

    def output_side(self, side: int) -> int:
        return self.valid.output_size(side)

    def smallest_side(self) -> int:
        return self.valid.min_input

    def side_step(self) -> int:
        return self.valid.stride

    def trace_side(self) -> int:
        """A small valid side to trace the network at (export)."""
        return self.valid.smallest_input_for_output(64)

    def program_sides(self) -> tuple[int, int, int, int]:
        g = self.valid
        return g.stride, g.min_input - g.stride, 1, g.min_input + 4 * g.stride

    def plan(self, height: int, width: int, window: int, fit: bool = True, overlap: int = DUAL_OVERLAP) -> TilePlan:
        geo = self.valid
        geo.check(window)
        if height < geo.margin or width < geo.margin:
            raise InputError(
                f"raster is {width}x{height}, smaller than the network's {geo.margin}-px context margin: "
                f"mirror padding would reflect more than the raster holds"
            )
        if fit:
            window = fit_large_window((height, width), window, geo.margin, geo.stride, geo.is_valid)
        large = LargeWindowPlan(window, geo.margin, geo.stride)
        return TilePlan(large.windows(height, width), None, window)

    def window_for_count(self, length: int, n: int, overlap: int = DUAL_OVERLAP) -> int:
        geo = self.valid
        window = geo.smallest_input_for_output(-(-length // n))
        # Offsets are multiples of the stride, so the output may need a little more.
        while len(LargeWindowPlan(window, geo.margin, geo.stride).axis(length)) > n:
            window = geo.smallest_input_for_output(window - 2 * geo.margin + 1)
        return window

    def info(self, device: str) -> dict[str, int]:
        return {**super().info(device), "margin": self.valid.margin, "stride": self.valid.stride}

    def _record(self) -> dict[str, Any]:
        g = self.valid
        return {"depth": self.depth, "margin": g.margin, "stride": g.stride, "min_input": g.min_input}

    @classmethod
    def from_record(cls, px: dict[str, int], tta: bool, record: Mapping[str, Any]) -> LargeWindows:
        return cls(px, tta, depth=int(record["depth"]))


@dataclass(frozen=True)
class _Blended(Geometry):
    """Shared by the blended geometries: sides are multiples of the network's stride."""

    multiple: int = 16

    def smallest_side(self) -> int:
        return 2 * self.multiple

    def side_step(self) -> int:
        return self.multiple

    def trace_side(self) -> int:
        return 64

    def program_sides(self) -> tuple[int, int, int, int]:
        return self.multiple, 0, 2, 4 * self.multiple

    def check_side(self, side: int) -> None:
        if side < self.multiple or side % self.multiple:
            raise InputError(
                f"window side {side} is not valid for this {self.mode} model: sides are multiples of {self.multiple} px"
            )


@dataclass(frozen=True)
class DualWindows(_Blended):
    """NUS windows: an output side and the context crop twice that, blended."""

    mode: ClassVar[str] = "dual"
    context: ClassVar[int] = 2

    @classmethod
    def for_network(cls, net: Any, tta: bool = False) -> DualWindows:
        return cls({"plan": DUAL_PLAN, "parity": DUAL_PLAN}, tta, multiple=net.multiple)

    def _smallest_engine_side(self) -> int:
        return self.multiple * 8

    def plan(self, height: int, width: int, window: int, fit: bool = True, overlap: int = DUAL_OVERLAP) -> TilePlan:
        plan = DualWindowPlan(window, overlap, self.multiple)
        need = plan.context_margin
        if height < need or width < need:
            raise InputError(
                f"raster is {width}x{height}, smaller than the dual-resolution context margin of "
                f"{need} px: mirror padding would reflect more than the raster holds"
            )
        return TilePlan(plan.windows(height, width), plan, plan.window)

    def window_for_count(self, length: int, n: int, overlap: int = DUAL_OVERLAP) -> int:
        side = max(-(-(length + (n - 1) * overlap) // n), self.multiple * 2)
        return side + (-side) % self.multiple

    def _record(self) -> dict[str, Any]:
        window = self.default_window("cpu")
        return {"window": window, "context": 2 * window, "multiple": self.multiple}

    @classmethod
    def from_record(cls, px: dict[str, int], tta: bool, record: Mapping[str, Any]) -> DualWindows:
        return cls(px, tta, multiple=int(record.get("multiple", 16)))


@dataclass(frozen=True)
class OverlapWindows(_Blended):
    """Same-padding windows: ``margin`` px dropped per side, the cores blended over ``overlap`` px."""

    mode: ClassVar[str] = "overlap"
    margin: int = OVERLAP_MARGIN
    overlap: int = OVERLAP_BLEND

    @classmethod
    def for_network(cls, net: Any, tta: bool = False) -> OverlapWindows:
        return cls({"plan": OVERLAP_PLAN, "parity": PARITY_OVERLAP}, tta, multiple=net.multiple)

    def check_side(self, side: int) -> None:
        super().check_side(side)
        if side <= 2 * self.margin:
            raise InputError(f"window side {side} leaves nothing inside the {self.margin}-px margins of this model")

    def kept_side(self, side: int) -> int:
        return side - 2 * self.margin

    def _smallest_engine_side(self) -> int:
        low = 2 * self.margin + self.multiple
        return -(-low // self.multiple) * self.multiple

    def plan(self, height: int, width: int, window: int, fit: bool = True, overlap: int = DUAL_OVERLAP) -> TilePlan:
        blended = OverlapWindowPlan.for_input(window, self.margin, self.overlap, self.multiple)
        if fit:
            blended = fit_overlap_window((height, width), blended)
        return TilePlan(blended.windows(height, width), blended, blended.side)

    def window_for_count(self, length: int, n: int, overlap: int = DUAL_OVERLAP) -> int:
        core = -(-(length + (n - 1) * self.overlap) // n)
        side = max(core + 2 * self.margin, self.multiple * 2)
        return side + (-side) % self.multiple

    def info(self, device: str) -> dict[str, int]:
        return {**super().info(device), "margin": self.margin, "stride": self.multiple}

    def _record(self) -> dict[str, Any]:
        return {"window": self.default_window("cpu"), "margin": self.margin, "overlap": self.overlap, "multiple": self.multiple}

    @classmethod
    def from_record(cls, px: dict[str, int], tta: bool, record: Mapping[str, Any]) -> OverlapWindows:
        return cls(px, tta, multiple=int(record["multiple"]), margin=int(record["margin"]), overlap=int(record["overlap"]))


GEOMETRIES: dict[str, type[Geometry]] = {g.mode: g for g in (LargeWindows, DualWindows, OverlapWindows)}
# The geometry records of manifests written before ``geometry.mode``.
_OLD_KINDS = {"valid_unet": "large", "dual_resolution": "dual", "same_padding": "overlap"}


def geometry_from_record(record: Mapping[str, Any], where: str = "the manifest") -> Geometry:
    """The geometry a manifest's ``geometry`` record describes (older records, which
    named it ``kind``, too)."""
    mode = record.get("mode") or _OLD_KINDS.get(str(record.get("kind")))
    if mode not in GEOMETRIES:
        raise InputError(
            f"{where} has window geometry '{record.get('mode') or record.get('kind')}', which this server does not know"
        )
    px = {k: int(v) for k, v in record.get("default_window_px", {}).items()}
    return GEOMETRIES[mode].from_record(px, bool(record.get("tta", False)), record)


def geometry_class(mode: str) -> type[Geometry]:
    """The class of a geometry by its manifest name (``large``, ``dual``, ``overlap``)."""
    try:
        return GEOMETRIES[mode]
    except KeyError:
        raise InputError(f"unknown window mode '{mode}'; known: {', '.join(GEOMETRIES)}") from None
