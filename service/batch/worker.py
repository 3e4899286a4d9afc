"""One tile of a batch, in a worker that loaded its model once: the mask (and
probabilities) as georeferenced GeoTIFFs, the tile's building polygons as GeoJSON,
and its outlines for the city layer (those touching the tile's edge unfinished, to be
joined with their neighbours' pieces first)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import rasterio
import shapely

from service.batch.inputs import TileInput
from service.engines import open_engine
from service.outputs.polygons import PolygonOptions, finish_polygons
from service.outputs.segment import SegmentOptions, segment_file
from service.store.repository import ModelEntry, ModelStore, file_sha256
from service.tiling.engine import EngineConfig, TilingEngine, tta_setting


@dataclass(frozen=True)
class Job:
    """What every tile of a run is done with."""

    store: str
    model: str  # NAME or NAME:VERSION ("": the store's default)
    backend: str = "auto"
    precision: str = "auto"
    window: int | None = None
    memory_budget_bytes: int | None = None  # this worker's share
    probabilities: bool = False
    polygon: PolygonOptions = PolygonOptions()
    gsd_m: float | None = None  # metres per pixel of tiles without (or with a wrong) georeference
    threshold: float | None = None  # None: the model version's
    tta: bool | None = None  # None: the model's own setting
    tta_passes: int | None = None  # 2, 4 or 8 (None: TTA_DEFAULT_PASSES where TTA is on)
    cores: list[int] | None = None  # pin the worker to these cores (one machine, workers <= cores)

    def __post_init__(self) -> None:
        tta_setting(self.tta, self.tta_passes)  # refused before any worker starts

    def made_by(self, entry: ModelEntry) -> str:
        """What the ledger records a finished tile was made with: the model version and,
        where not the default, every setting that changes a tile's outputs, so that a rerun
        with other settings redoes the tiles instead of keeping the old ones."""
        settings = {
            "threshold": self.threshold,
            "gsd_m": self.gsd_m,
            "tta": self.tta,
            "tta_passes": self.tta_passes,
            "probabilities": self.probabilities or None,
            "polygon": asdict(self.polygon) if self.polygon != PolygonOptions() else None,
        }
        changed = {k: v for k, v in settings.items() if v is not None}
        model = f"{entry.name}:{entry.version}"
        return f"{model} {json.dumps(changed, sort_keys=True)}" if changed else model


def mask_frame(mask: Path) -> tuple[str | None, shapely.Geometry]:
    """A mask's CRS, and the frame inside which an outline cannot continue in a
    neighbouring tile (half a pixel in from the tile's edge)."""
    with rasterio.open(mask) as src:
        crs = src.crs.to_string() if src.crs else None
        left, bottom, right, top = src.bounds
        px = abs(src.transform.a)
    return crs, shapely.box(left + px / 2, bottom + px / 2, right - px / 2, top - px / 2)


def tile_outlines(traced: list[shapely.Geometry], crs: str | None, frame: shapely.Geometry, opts: PolygonOptions) -> dict:
    """A tile's outlines for the city layer (WKB): finished where they lie inside the
    tile, as traced where they touch its edge and may continue in a neighbour (the
    layer joins those first, then finishes them)."""
    inside = [frame.contains(g) for g in traced]
    inner = finish_polygons([g for g, i in zip(traced, inside) if i], opts, crs)
    return {"crs": crs, "inner": [g.wkb for g in inner], "edge": [g.wkb for g, i in zip(traced, inside) if not i]}


def write_outlines(outlines: dict, path: Path) -> None:
    """A tile's city-layer pieces on disk (WKB as hex), so that a resumed run joins
    the same pieces as the run that made them."""
    path.write_text(json.dumps({"crs": outlines["crs"], **{k: [g.hex() for g in outlines[k]] for k in ("inner", "edge")}}))


def read_outlines(path: Path) -> dict:
    raw = json.loads(path.read_text())
    return {"crs": raw["crs"], **{k: [bytes.fromhex(h) for h in raw[k]] for k in ("inner", "edge")}}


def _replace(partial: Path, final: Path) -> str:
    os.replace(partial, final)
    return file_sha256(final)


class TileSegmenter:
    """A worker's model and engine; :meth:`segment` does one tile."""

    def __init__(self, job: Job) -> None:
        if job.cores:
            # Engines start a thread per core they see: pinned, each worker's engine
            # sees its own cores and workers do not fight over them.
            os.sched_setaffinity(0, job.cores)
        self.entry = ModelStore(job.store).find(job.model)
        self.job = job
        backend = open_engine(self.entry, job.backend, precision=job.precision)
        config = EngineConfig(
            window=job.window, memory_budget_bytes=job.memory_budget_bytes, tta=job.tta, tta_passes=job.tta_passes
        )
        self.engine = TilingEngine(backend, config)

    def pid(self) -> int:
        return os.getpid()

    def segment(self, tile: TileInput, out: Path) -> dict:
        """Outputs of ``tile`` under ``out`` (written whole or not at all); a tile that
        cannot be read comes back as ``{"error": ...}``, not an exception."""
        try:
            return self._segment(tile, out)
        except Exception as e:  # one bad tile is reported, the batch goes on
            return {"name": tile.name, "error": f"{type(e).__name__}: {e}"}

    def _segment(self, tile: TileInput, out: Path) -> dict:
        t0 = time.perf_counter()
        job = self.job
        for sub in ("masks", "polygons", "probabilities", "outlines"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        mask = out / "masks" / f"{tile.name}.tif"
        pid = os.getpid()
        partial = mask.with_name(f".{tile.name}.{pid}.partial.tif")
        probs = out / "probabilities" / f"{tile.name}.tif"
        probs_partial = probs.with_name(f".{tile.name}.{pid}.partial.tif") if job.probabilities else None
        geojson = out / "polygons" / f"{tile.name}.geojson"
        geojson_partial = geojson.with_name(f".{tile.name}.{pid}.partial.geojson")
        opts = SegmentOptions(job.threshold, job.gsd_m, probs_partial, polygons=geojson_partial, polygon=job.polygon)
        traced: list[shapely.Geometry] = []  # the buildings as traced once: the tile's GeoJSON and the city layer's pieces
        summary = segment_file(self.engine, tile.path, partial, opts, progress=False, outlines=traced)
        outlines = tile_outlines(traced, *mask_frame(partial), job.polygon)
        pieces = out / "outlines" / f"{tile.name}.json"
        pieces_partial = pieces.with_name(f".{tile.name}.{pid}.partial.json")
        write_outlines(outlines, pieces_partial)
        outputs = {
            f"masks/{tile.name}.tif": _replace(partial, mask),
            f"polygons/{tile.name}.geojson": _replace(geojson_partial, geojson),
            f"outlines/{tile.name}.json": _replace(pieces_partial, pieces),
        }
        if probs_partial is not None:
            outputs[f"probabilities/{tile.name}.tif"] = _replace(probs_partial, probs)
        return {
            "name": tile.name,
            "outputs": outputs,
            **outlines,
            "pixels": summary["width"] * summary["height"],
            "windows": summary["windows"],
            "seconds": time.perf_counter() - t0,
            "worker_pid": pid,
        }
