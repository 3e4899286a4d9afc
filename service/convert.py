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

from ._pb import footprints_pb2 as pb
from .errors import InputError
from .registry import LoadedModel

MAX_CHUNK_BYTES = 4 * 2**20  # upload chunks, and GeoTIFF chunks sent back
ROWS_PER_MESSAGE = 256  # mask rows per response message at most (5000 px wide: 1.2 MiB)
MODES = {pb.MODE_LARGE_WINDOW: "large", pb.MODE_DUAL_RESOLUTION: "dual", pb.MODE_OVERLAP: "overlap"}
PB_MODES = {name: mode for mode, name in MODES.items()}


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
    except rasterio.errors.CRSError as e:
        raise InputError(f"georeference CRS {g.crs!r} is not understood ({e})") from None
    return crs, Affine.from_gdal(*g.transform)


def model_info(m: LoadedModel, versions: list[int], default: bool) -> pb.ModelInfo:
    """What ``ListModels`` and ``GetModel`` say of a loaded version; every window figure
    is the manifest's, the default window the one for the device it runs on."""
    e, spec = m.entry, m.backend.spec
    valid = spec.valid
    window = spec.default_window(m.backend.device)
    return pb.ModelInfo(
        name=e.name,
        version=e.version,
        versions=versions,
        network=e.manifest["network"],
        mode=PB_MODES[spec.mode],
        backend=m.backend_kind,
        precision=m.backend.precision,
        loaded=True,
        state="ready",
        margin=valid.margin if valid else spec.margin,
        stride=valid.stride if valid else spec.multiple if spec.mode == "overlap" else 0,
        default_window=window,
        context=2 * window if spec.mode == "dual" else 0,
        metrics_json=json.dumps(e.manifest.get("metrics", {})),
        is_default=default,
        tta=spec.tta,
    )


def requested_mode(header: pb.TileHeader, model: LoadedModel) -> None:
    """Refuse a header whose (known: see upload.check_header) mode the model does not run."""
    want = MODES.get(header.mode, model.entry.mode)
    if want != model.entry.mode:
        raise InputError(f"model {model.entry.name} runs {model.entry.mode} windows; {pb.Mode.Name(header.mode)} was asked")


def window_crops(request: pb.InferWindowsRequest, dual: bool) -> list[np.ndarray]:
    """The uint8 crops of an ``InferWindows`` request: ``(n, 3, s, s)`` and, for dual
    models, the ``(n, 3, 2s, 2s)`` context."""
    n, s = request.count, request.side
    if n == 0 or s == 0 or len(request.rgb) != n * 3 * s * s:
        raise InputError(f"rgb holds {len(request.rgb)} bytes; {n} windows of side {s} need {n * 3 * s * s}")
    crops = [np.frombuffer(request.rgb, np.uint8).reshape(n, 3, s, s)]
    if dual:
        if len(request.context) != n * 3 * 4 * s * s:
            raise InputError(f"context holds {len(request.context)} bytes; need {n * 12 * s * s} (2x side)")
        crops.append(np.frombuffer(request.context, np.uint8).reshape(n, 3, 2 * s, 2 * s))
    return crops


def probabilities_response(m: LoadedModel, probs: list[np.ndarray]) -> pb.InferWindowsResponse:
    out = np.ascontiguousarray(np.stack(probs), dtype="<f4")
    return pb.InferWindowsResponse(
        model=m.entry.name, model_version=m.entry.version, count=len(probs), side=out.shape[-1], probabilities=out.tobytes()
    )


def row_messages(r0: int, mask: np.ndarray, probs: np.ndarray | None) -> Iterator[pb.SegmentTileResponse]:
    """A block of finished rows as messages of at most ``ROWS_PER_MESSAGE`` rows."""
    height, width = mask.shape
    for a in range(0, height, ROWS_PER_MESSAGE):
        b = min(a + ROWS_PER_MESSAGE, height)
        yield pb.SegmentTileResponse(
            rows=pb.MaskRows(
                row_start=r0 + a,
                row_count=b - a,
                width=width,
                mask=mask[a:b].tobytes(),
                probabilities=probs[a:b].tobytes() if probs is not None else b"",
            )
        )


def bytes_messages(data: bytes) -> Iterator[pb.SegmentTileResponse]:
    for i in range(0, len(data), MAX_CHUNK_BYTES):
        yield pb.SegmentTileResponse(mask_geotiff_chunk=data[i : i + MAX_CHUNK_BYTES])
