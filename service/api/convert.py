"""Messages <-> the service's own values: georeferences, model descriptions, mask
rows, tile summaries and the arrays of ``InferWindows``. No I/O, no state."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine

from service._pb import footprints_pb2 as pb
from service.errors import InputError
from service.models.registry import LoadedModel
from service.outputs.polygons import PolygonOptions
from service.tiling.geometry import Geometry
from service.tiling.pipeline import RowBlock

MAX_CHUNK_BYTES = 4 * 2**20  # upload chunks, and GeoTIFF chunks sent back
ROWS_PER_MESSAGE = 256  # mask rows per response message at most (5000 px wide: 1.2 MiB)
# The proto's names of the geometries (service.tiling.geometry).
PB_MODES = {"large": pb.MODE_LARGE_WINDOW, "dual": pb.MODE_DUAL_RESOLUTION, "overlap": pb.MODE_OVERLAP}


def georef_to_pb(crs: CRS | None, transform: Affine) -> pb.Georeference:
    return pb.Georeference(crs=crs.to_string() if crs else "", transform=list(transform.to_gdal()))


def georef_from_pb(g: pb.Georeference) -> tuple[CRS | None, Affine]:
    """The CRS and transform of a raw upload, refused unless the transform places pixels:
    six finite coefficients whose pixel axes span an area (an all-zero transform would
    drop the georeference of every output without a word)."""
    if len(g.transform) != 6:
        raise InputError(f"georeference transform needs 6 GDAL coefficients, got {len(g.transform)}")
    if not all(math.isfinite(v) for v in g.transform):
        raise InputError(f"georeference transform {list(g.transform)} has a coefficient that is not a finite number")
    _, dx, rx, _, ry, dy = g.transform
    if dx * dy - rx * ry == 0:
        raise InputError(
            f"georeference transform {list(g.transform)} is degenerate (its pixel size is 0); "
            "send GDAL's (x0, dx, rx, y0, ry, dy), e.g. (500000, 0.3, 0, 4600000, 0, -0.3)"
        )
    try:
        crs = CRS.from_user_input(g.crs) if g.crs else None
    except (rasterio.errors.CRSError, ValueError) as e:  # ValueError: "EPSG:nope"
        raise InputError(f"georeference CRS {g.crs!r} is not understood ({e})") from None
    return crs, Affine.from_gdal(*g.transform)


def model_info(m: LoadedModel, versions: list[int], default: bool) -> pb.ModelInfo:
    """What ``ListModels`` and ``GetModel`` say of a loaded version; every window figure
    is the manifest's, the default window the one for the device it runs on."""
    e, geometry = m.entry, m.engine.geometry
    return pb.ModelInfo(
        name=e.name,
        version=e.version,
        versions=versions,
        network=e.manifest.network,
        mode=PB_MODES[geometry.mode],
        backend=m.kind,
        precision=m.engine.precision,
        loaded=True,
        state="ready",
        metrics_json=json.dumps(dict(e.manifest.metrics)),
        is_default=default,
        tta=geometry.tta,
        resolution_m=e.manifest.resolution_m,
        threshold=e.manifest.threshold,
        members=[f"{x['name']}:{x['version']}" for x in e.manifest.members],
        **geometry.info(m.engine.device),  # type: ignore[arg-type]
    )


def polygon_options(o: pb.PolygonOptions) -> PolygonOptions:
    """A request's polygon controls, its unset fields at the CLI's defaults; negative or
    non-finite sizes are refused."""
    d = PolygonOptions()
    opts = PolygonOptions(
        min_area_m2=o.min_area_m2 if o.HasField("min_area_m2") else d.min_area_m2,
        simplify_m=o.simplify_m if o.HasField("simplify_m") else d.simplify_m,
        regularize=not o.no_regularize,
        wgs84=o.wgs84,
        separate=not o.no_separate,
    )
    for name in ("min_area_m2", "simplify_m"):
        value = getattr(opts, name)
        if not (math.isfinite(value) and value >= 0):
            raise InputError(f"polygon_options.{name} must be a finite number >= 0, got {value}")
    return opts


def requested_mode(header: pb.TileHeader, model: LoadedModel) -> None:
    """Refuse a header whose (known: see upload.check_header) mode the model does not run."""
    if header.mode != pb.MODE_UNSPECIFIED and PB_MODES[model.entry.geometry.mode] != header.mode:
        raise InputError(
            f"model {model.entry.name} runs {model.entry.geometry.mode} windows; {pb.Mode.Name(header.mode)} was asked"
        )


def window_crops(request: pb.InferWindowsRequest, geometry: Geometry) -> list[np.ndarray]:
    """The uint8 crops of an ``InferWindows`` request, as the model's geometry reads
    them: ``(n, 3, s, s)`` and, for dual models, the ``(n, 3, 2s, 2s)`` context."""
    n, s = request.count, request.side
    if n == 0 or s == 0:
        raise InputError(f"count {n} and side {s}: a request carries at least one window of a positive side")
    crops = []
    for data, shape, what in zip((request.rgb, request.context), geometry.crop_shapes(n, s), ("rgb", "context")):
        need = int(np.prod(shape))
        if len(data) != need:
            raise InputError(f"{what} holds {len(data)} bytes; {n} windows of side {s} need {need}")
        crops.append(np.frombuffer(data, np.uint8).reshape(shape))
    return crops


def probabilities_response(m: LoadedModel, probs: list[np.ndarray]) -> pb.InferWindowsResponse:
    out = np.ascontiguousarray(np.stack(probs), dtype="<f4")
    return pb.InferWindowsResponse(
        model=m.entry.name, model_version=m.entry.version, count=len(probs), side=out.shape[-1], probabilities=out.tobytes()
    )


class RowMessages:
    """A row sink (:mod:`service.tiling.pipeline`): each block as messages of at most
    ``ROWS_PER_MESSAGE`` rows (with 0-255 probabilities when asked), drained by the
    servicer into its response stream."""

    def __init__(self, probabilities: bool = False) -> None:
        self.probabilities = probabilities
        self._pending: list[pb.SegmentTileResponse] = []

    def write(self, block: RowBlock) -> None:
        mask = block.mask
        probs = block.probabilities_u8 if self.probabilities else None
        height, width = mask.shape
        for a in range(0, height, ROWS_PER_MESSAGE):
            b = min(a + ROWS_PER_MESSAGE, height)
            self._pending.append(
                pb.SegmentTileResponse(
                    rows=pb.MaskRows(
                        row_start=block.r0 + a,
                        row_count=b - a,
                        width=width,
                        mask=mask[a:b].tobytes(),
                        probabilities=probs[a:b].tobytes() if probs is not None else b"",
                    )
                )
            )

    def drain(self) -> list[pb.SegmentTileResponse]:
        out, self._pending = self._pending, []
        return out

    def close(self) -> None:
        pass


def bytes_messages(data: bytes) -> Iterator[pb.SegmentTileResponse]:
    for i in range(0, len(data), MAX_CHUNK_BYTES):
        yield pb.SegmentTileResponse(mask_geotiff_chunk=data[i : i + MAX_CHUNK_BYTES])
