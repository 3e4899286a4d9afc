"""``footprints segment`` in-process: one GeoTIFF through the tile pipeline into its
outputs (mask and probability GeoTIFFs, polygons, an overlay). Every output keeps the
input's CRS and transform, whatever resolution the model saw it at; polygons are in the
input's CRS."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from service.outputs.overlay import write_overlay
from service.outputs.polygons import write_polygons
from service.outputs.sinks import GeoTiffRows
from service.rasters import RGBRaster
from service.tiling.engine import TilingEngine
from service.tiling.pipeline import RowSink, TileRun
from service.tiling.resample import raster_resolution


@dataclass(frozen=True)
class SegmentOptions:
    threshold: float | None = None  # None: the model version's (its manifest)
    gsd_m: float | None = None  # metres per pixel, where the georeference lacks or misstates it
    probabilities: Path | None = None  # uint8 0-255 probability GeoTIFF
    polygons: Path | None = None  # GeoJSON in the input's CRS
    overlay: Path | None = None  # PNG for people
    min_area_m2: float = 4.0  # smaller blobs are noise, not buildings
    simplify_m: float = 0.5  # Douglas-Peucker tolerance for polygon outlines


def segment_file(
    engine: TilingEngine, image: str | Path, out: str | Path, opts: SegmentOptions = SegmentOptions(), progress: bool = True
) -> dict:
    """Segment one GeoTIFF into a 0/255 mask GeoTIFF (and the optional outputs).

    Returns a summary: size, building share, the paths written.
    """
    out = Path(out)
    with RGBRaster(image) as src:
        grid = dict(width=src.width, height=src.height, crs=src.crs, transform=src.transform)
        ground = raster_resolution(src.crs, src.transform, src.width, src.height, opts.gsd_m)
        sinks: list[RowSink] = []  # opened once the plan stands: bad windows fail before any file is
        run = TileRun(engine, src, sinks, opts.threshold, ground)
        sinks.append(GeoTiffRows(out, **grid))
        if opts.probabilities:
            sinks.append(GeoTiffRows(opts.probabilities, **grid, probabilities=True))
        run.sinks = sinks
        run.run(progress)
        plan = run.plan
    model = engine.model
    summary = {
        "model": getattr(model, "name", "?"),
        "engine": f"{getattr(model, 'engine', '?')} {getattr(model, 'precision', '?')}",
        "windows": len(plan.windows),
        "window": plan.window,
        "ground_resolution_m": run.ground_m,
        "resample_factor": run.factor,
        "threshold": run.threshold,
        "seconds": run.seconds,
        "width": grid["width"],
        "height": grid["height"],
        "building_share": run.building_share,
        "mask": str(out),
    }
    if opts.polygons:
        n = write_polygons(out, opts.polygons, opts.min_area_m2, opts.simplify_m)
        summary.update(polygons=str(opts.polygons), polygon_count=n)
    if opts.overlay:
        summary["overlay"] = str(write_overlay(image, out, opts.overlay))
    if opts.probabilities:
        summary["probabilities"] = str(opts.probabilities)
    return summary
