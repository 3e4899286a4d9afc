"""A store version's ``manifest.json``: its schema, its one reader and its one writer.

Export writes a manifest, ``check-precision`` and ``build-engine`` add their records to
it, and the service reads it; all of them go through :class:`Manifest` (``read``,
``write``, :func:`update`), so a field has one name and one meaning. The reader also
takes manifests written before this schema (format 1: the window mode named twice,
as ``mode`` and as ``geometry.kind``) and the writer writes the current one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.errors import InputError
from service.tiling.geometry import Geometry, geometry_from_record

MANIFEST = "manifest.json"
FORMAT = "footprints.manifest/2"
ONNX = "model.onnx"  # the graph every engine starts from
PROGRAM = "model.pt2"  # the same graph as a torch.export program (the PyTorch engine's)
CHECKPOINT = "model.pt"  # the fp16 training checkpoint they came from
INT8 = "model.int8.xml"  # NNCF's INT8 quantisation of the graph, as OpenVINO IR (its weights: .bin beside it)
INT8_WEIGHTS = "model.int8.bin"


@dataclass(frozen=True)
class WindowMemory:
    """Bytes one window of side ``n`` needs: ``a n^2 + b n + c``.

    Every activation of these networks has sides affine in the window side (valid
    convolutions take a fixed margin, poolings halve), so the total is exactly a
    quadratic in ``n``; export fits it to a meta-device count of the activations at
    three window sides and checks it at a fourth (``training.export``).
    """

    coefficients: tuple[float, float, float]
    fitted_at: tuple[int, ...] = ()
    checked_at: int = 0

    def bytes(self, window: int) -> int:
        a, b, c = self.coefficients
        return int(round(a * window * window + b * window + c))

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None, where: str) -> WindowMemory:
        if not record:
            raise InputError(f"{where} records no window memory; re-export it with `footprints export`")
        a, b, c = record["coefficients"]
        return cls((float(a), float(b), float(c)), tuple(record.get("fitted_at", ())), int(record.get("checked_at", 0)))

    def to_record(self) -> dict[str, Any]:
        return {
            "bytes": "a * n^2 + b * n + c for window side n (large: input side; dual: output side)",
            "coefficients": list(self.coefficients),
            "fitted_at": list(self.fitted_at),
            "checked_at": self.checked_at,
            "source": "activations counted on PyTorch's meta device at export: an upper bound on one window's peak",
        }


@dataclass(frozen=True)
class Parity:
    """Export's check of the graph and the program against PyTorch on real windows."""

    window_px: int = 0
    windows: tuple[str, ...] = ()
    max_abs_diff: float = 0.0  # ONNX Runtime against PyTorch
    program_max_abs_diff: float = 0.0  # the torch.export program against PyTorch
    building_share: float = 0.0  # of the parity windows' pixels, as PyTorch sees them


@dataclass(frozen=True)
class Manifest:
    """What a version says of itself (see the module). ``files``: sha256 by file name;
    ``precision_checks``: per ``engine-precision``, the agreement with fp32 PyTorch
    (:mod:`training.precision`); ``tensorrt_engines``: per engine tag, the build record."""

    name: str
    version: int
    network: str
    geometry: Geometry
    window_memory: WindowMemory
    mean_rgb: tuple[float, ...]
    inputs: tuple[str, ...]
    output: str
    files: Mapping[str, str]
    network_args: Mapping[str, Any] = field(default_factory=dict)
    std_rgb: tuple[float, ...] | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    parity: Parity = Parity()
    precision_checks: Mapping[str, Any] = field(default_factory=dict)
    tensorrt_engines: Mapping[str, Any] = field(default_factory=dict)
    # Metres on the ground per pixel of the imagery the model was trained at: every path
    # brings a raster to it before the model sees it (service.tiling.resample).
    resolution_m: float = 0.3
    # The probability above which a pixel is a building, chosen on held-out validation
    # (a request may still say otherwise).
    threshold: float = 0.5
    # An ensemble: the versions whose probabilities it averages, with their weights
    # ([{"name", "version", "weight"}]); empty for a model with a graph of its own.
    members: tuple[Mapping[str, Any], ...] = ()

    # ---- reading ----------------------------------------------------------------
    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = MANIFEST) -> Manifest:
        """Parse and check a manifest (formats 1 and 2); an :class:`InputError` names what is wrong."""
        if not isinstance(data, Mapping):
            raise InputError(f"{where}: the manifest is not a JSON object")
        missing = [k for k in ("name", "version", "network", "geometry", "inputs", "outputs", "files") if k not in data]
        if missing:
            raise InputError(f"{where}: lacks {', '.join(repr(k) for k in missing)}")
        try:
            return cls(
                name=str(data["name"]),
                version=int(data["version"]),
                network=str(data["network"]),
                network_args=dict(data.get("network_args") or {}),
                geometry=geometry_from_record(data["geometry"], where),
                window_memory=WindowMemory.from_record(data.get("window_memory"), where),
                mean_rgb=tuple(float(v) for v in data.get("mean_rgb", (0.0, 0.0, 0.0))),
                std_rgb=tuple(float(v) for v in data["std_rgb"]) if data.get("std_rgb") else None,
                inputs=tuple(str(i["name"]) for i in data["inputs"]),
                output=str(data["outputs"][0]["name"]),
                files={str(k): str(v) for k, v in data["files"].items()},
                metrics=dict(data.get("metrics") or {}),
                training=dict(data.get("training") or {}),
                parity=Parity(
                    window_px=int(data.get("parity_window_px", 0)),
                    windows=tuple(data.get("parity_windows", ())),
                    max_abs_diff=float(data.get("parity_max_abs_diff", 0.0)),
                    program_max_abs_diff=float(data.get("program_parity_max_abs_diff", 0.0)),
                    building_share=float(data.get("parity_building_share", 0.0)),
                ),
                precision_checks=dict(data.get("precision_checks") or {}),
                tensorrt_engines=dict(data.get("tensorrt_engines") or {}),
                resolution_m=float(data.get("resolution_m", 0.3)),
                threshold=float(data.get("threshold", 0.5)),
                members=tuple(dict(m) for m in data.get("members", ())),
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise InputError(f"{where}: {type(e).__name__} {e}") from None

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"{path}: not a readable JSON manifest ({e})") from None
        return cls.from_json(data, str(path))

    # ---- writing ----------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "network": self.network,
            "network_args": dict(self.network_args),
            "mean_rgb": list(self.mean_rgb),
            "std_rgb": list(self.std_rgb) if self.std_rgb is not None else None,
            "geometry": self.geometry.to_manifest(),
            "window_memory": self.window_memory.to_record(),
            "inputs": [
                {"name": n, "dtype": "float32", "shape": [-1, 3, -1, -1], "meaning": "raw RGB 0-255"} for n in self.inputs
            ],
            "outputs": [{"name": self.output, "dtype": "float32", "shape": [-1, 1, -1, -1], "meaning": "building probability"}],
            "metrics": dict(self.metrics),
            "training": dict(self.training),
            "parity_window_px": self.parity.window_px,
            "parity_windows": list(self.parity.windows),
            "parity_max_abs_diff": self.parity.max_abs_diff,
            "program_parity_max_abs_diff": self.parity.program_max_abs_diff,
            "parity_building_share": self.parity.building_share,
            "files": dict(self.files),
            "precision_checks": dict(self.precision_checks),
        }
        if self.tensorrt_engines:
            doc["tensorrt_engines"] = dict(self.tensorrt_engines)
        doc["resolution_m"] = self.resolution_m
        doc["threshold"] = self.threshold
        if self.members:
            doc["members"] = [dict(m) for m in self.members]
        return doc

    def write(self, folder: Path) -> Path:
        """Write atomically: a reader never sees half a manifest."""
        path = folder / MANIFEST
        tmp = folder / f".{MANIFEST}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(path)
        return path

    def replace(self, **changes: Any) -> Manifest:
        return dataclasses.replace(self, **changes)


def update(folder: Path, **changes: Any) -> Manifest:
    """Read a version's manifest, change fields (``precision_checks=...``), write it back."""
    manifest = Manifest.read(folder).replace(**changes)
    manifest.write(folder)
    return manifest
