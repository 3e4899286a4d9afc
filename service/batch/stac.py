"""Provenance of a batch run as STAC (pystac): one Collection, one Item per tile.

Each Item says where its outputs came from: the input GeoTIFF (asset ``source``), the
mask and probability COGs, the buildings GeoJSON, the model version and its card; its
footprint in WGS 84, its grid (projection extension fields) and ground resolution
(``gsd``), and the machine-learning model (MLM extension fields). pystac validates the
documents against the STAC core schemas, which it ships; the extensions' schemas live
online, so offline the extension fields are written but checked only by their names.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from pathlib import Path

import rasterio
import shapely
from rasterio.warp import transform_geom

from service.batch.inputs import TileInput
from service.rasters import ground_resolution
from service.store.repository import ModelEntry

COG = "image/tiff; application=geotiff; profile=cloud-optimized"
PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
MLM = "https://stac-extensions.github.io/mlm/v1.4.0/schema.json"
FOLDER = "stac"


def _item(tile: TileInput, out: Path, entry: ModelEntry, when: dt.datetime):
    import pystac

    mask = out / "masks" / f"{tile.name}.tif"
    here = out / FOLDER / tile.name  # where the item is saved: the run's outputs are linked relative to it

    def rel(p: Path) -> str:
        return os.path.relpath(p.resolve(), here.resolve())

    with rasterio.open(mask) as src:
        crs = src.crs.to_string() if src.crs else None
        box = shapely.box(*src.bounds)
        footprint = shapely.geometry.shape(transform_geom(crs, "EPSG:4326", shapely.geometry.mapping(box))) if crs else box
        gsd = ground_resolution(src.crs, src.transform, src.width, src.height) if crs else None
        grid = {"proj:code": crs, "proj:shape": [src.height, src.width], "proj:transform": list(src.transform)[:6]}
    properties = {
        **grid,
        "mlm:name": f"{entry.name}:{entry.version}",
        "mlm:architecture": entry.manifest.network,
        "mlm:tasks": ["semantic-segmentation"],
        "mlm:framework": "ONNX",
        "footprints:threshold": entry.manifest.threshold,
        "footprints:model_resolution_m": entry.manifest.resolution_m,
    }
    if gsd:
        properties["gsd"] = round(float(sum(gsd) / 2), 4)
    item = pystac.Item(
        id=tile.name,
        geometry=shapely.geometry.mapping(footprint),
        bbox=list(footprint.bounds),
        datetime=when,
        properties=properties,
        stac_extensions=[PROJECTION, MLM],
    )
    source = tile.path if isinstance(tile.path, str) else str(Path(tile.path).resolve())
    item.add_asset(
        "source", pystac.Asset(source, "input imagery", media_type="image/tiff; application=geotiff", roles=["source"])
    )
    item.add_asset("mask", pystac.Asset(rel(mask), "building mask (0/255)", media_type=COG, roles=["data"]))
    probs = out / "probabilities" / f"{tile.name}.tif"
    if probs.is_file():
        item.add_asset("probabilities", pystac.Asset(rel(probs), "building probability (0-255)", media_type=COG, roles=["data"]))
    buildings = out / "polygons" / f"{tile.name}.geojson"
    if buildings.is_file():
        item.add_asset("buildings", pystac.Asset(rel(buildings), "buildings", media_type="application/geo+json", roles=["data"]))
    card = entry.folder / "MODEL_CARD.md"
    if card.is_file():
        item.add_asset(
            "model-card", pystac.Asset(str(card.resolve()), "model card", media_type="text/markdown", roles=["metadata"])
        )
    return item


def write_stac(out: Path, tiles: Sequence[TileInput], entry: ModelEntry) -> Path:
    """``out/stac/collection.json`` and an Item per tile beside it (a self-contained
    catalogue: the run's outputs linked relatively, so the folder moves as one; the
    inputs and the model card by absolute path or URL); returns the collection's path."""
    import pystac

    when = dt.datetime.now(dt.UTC)
    items = [_item(t, out, entry, when) for t in tiles if (out / "masks" / f"{t.name}.tif").is_file()]
    bounds = shapely.total_bounds([shapely.box(*i.bbox) for i in items]).tolist() if items else [-180.0, -90.0, 180.0, 90.0]
    collection = pystac.Collection(
        id=f"footprints-{out.resolve().name}",
        description=f"Building masks and footprints by {entry.name} v{entry.version} ({entry.manifest.network})",
        extent=pystac.Extent(pystac.SpatialExtent([bounds]), pystac.TemporalExtent([[when, when]])),
        license="other",
        stac_extensions=[MLM],
    )
    for item in items:
        collection.add_item(item)
    folder = out / FOLDER
    collection.normalize_hrefs(str(folder))
    collection.save(pystac.CatalogType.SELF_CONTAINED)
    return folder / "collection.json"


def validate_offline(collection: Path) -> int:
    """Validate the collection and each item against the STAC core schemas pystac ships;
    returns the documents validated (raises ``pystac.STACValidationError``)."""
    import json

    import pystac
    from pystac.validation import validate_dict

    col = pystac.Collection.from_file(str(collection))
    count = 0
    for obj in [col, *col.get_items(recursive=True)]:
        href = obj.get_self_href()
        assert href is not None, "a saved catalogue's objects know their files"
        validate_dict(json.loads(Path(href).read_text()), extensions=[])
        count += 1
    return count
