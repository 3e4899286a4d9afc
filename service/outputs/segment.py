"""``footprints segment`` in-process: one GeoTIFF through the tile pipeline into its
outputs (mask and probability GeoTIFFs, polygons, an overlay). Every output keeps the
input's CRS and transform, whatever resolution the model saw it at; polygons are in the
input's CRS."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import rasterio
import shapely

from service.outputs.overlay import write_overlay
from service.outputs.polygons import PolygonOptions, Source, mask_outlines, outlines_geojson
from service.outputs.sinks import GeoTiffRows, MaskPlane
from service.rasters import RGBRaster
from service.tiling.engine import TilingEngine
from service.tiling.pipeline import RowSink, TileRun
from service.tiling.resample import raster_resolution


@dataclass(frozen=True)
class SegmentOptions:
    threshold: float | None = None  # None: the model version's (its manifest)
    gsd_m: float | None = None  # metres per pixel, where the georeference lacks or misstates it
    probabilities: Path | None = None  # uint8 0-255 probability GeoTIFF
    polygons: Path | None = None  # GeoJSON buildings (the input's CRS, or WGS 84)
    overlay: Path | None = None  # PNG for people
    polygon: PolygonOptions = PolygonOptions()


def _source(engine_name: str) -> Source:
    """The model version an engine serves: engines are named ``NAME/VERSION`` after
    their store version (a checkpoint's engine has no version: 0)."""
    name, sep, version = engine_name.rpartition("/")
    return Source(name, int(version)) if sep and version.isdigit() else Source(engine_name, 0)


def segment_file(
    engine: TilingEngine,
    image: str | Path,
    out: str | Path,
    opts: SegmentOptions = SegmentOptions(),
    progress: bool = True,
    outlines: list[shapely.Geometry] | None = None,
) -> dict:
    """Segment one GeoTIFF into a 0/255 mask GeoTIFF (and the optional outputs).

    Returns a summary: size, building share, the paths written. With ``opts.polygons``,
    ``outlines`` (if given) receives the buildings' outlines as traced, before they are
    finished (a batch's city layer joins the pieces at tile edges first).
    """
    out = Path(out)
    with RGBRaster(image) as src:
        grid = dict(width=src.width, height=src.height, crs=src.crs, transform=src.transform)
        ground = raster_resolution(src.crs, src.transform, src.width, src.height, opts.gsd_m)
        sinks: list[RowSink] = []  # opened once the plan stands: bad windows fail before any file is
        run = TileRun(engine, src, sinks, opts.threshold, ground)
        # Creating the output files is part of encoding them (a busy disk stalls it), so
        # the tile's stages still add up to its time.
        with run.stages("encode"):
            sinks.append(GeoTiffRows(out, **grid))
            if opts.probabilities:
                sinks.append(GeoTiffRows(opts.probabilities, **grid, probabilities=True))
            plane = MaskPlane(src.width, src.height, probabilities=True) if opts.polygons else None
            if plane is not None:
                sinks.append(plane)  # buildings and their confidence come from the whole tile
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
        "tta_passes": engine.tta_passes,
        "seconds": run.seconds,
        "width": grid["width"],
        "height": grid["height"],
        "building_share": run.building_share,
        "mask": str(out),
    }
    if opts.polygons and plane is not None:
        source = _source(getattr(model, "name", ""))
        # Traced from the mask just written: no second GeoTIFF encoded in memory to read back.
        with run.stages("polygons"), rasterio.open(out) as mask:
            traced = mask_outlines(mask, plane.probabilities, opts.polygon, run.ground_m or None)
            text = outlines_geojson(traced, mask, plane.probabilities, opts.polygon, source)
            opts.polygons.parent.mkdir(parents=True, exist_ok=True)
            opts.polygons.write_text(text)
        if outlines is not None:
            outlines.extend(traced)
        summary.update(polygons=str(opts.polygons), polygon_count=len(json.loads(text)["features"]))
    overlay_s = 0.0
    if opts.overlay:
        t = time.perf_counter()
        summary["overlay"] = str(write_overlay(image, out, opts.overlay))
        overlay_s = time.perf_counter() - t
    if opts.probabilities:
        summary["probabilities"] = str(opts.probabilities)
    # The tile's time, overlay aside, and where it went (service/tiling/stages.py).
    summary.update(seconds=run.seconds - overlay_s, stages=run.stages.as_dict())
    return summary
