"""Provenance of a batch run as STAC (pystac): one Collection, an Item per tile, and an
Item for the model that made them.

Each tile's Item says where its outputs came from: the input GeoTIFF (asset ``source``),
the mask and probability COGs, the buildings GeoJSON; its footprint in WGS 84, its grid
(the projection extension, written through pystac's ``ProjectionExtension``) and ground
resolution (``gsd``), and a ``derived_from`` link to the model's Item. The model's Item
describes the model version with the Machine Learning Model extension (MLM: its network,
task, inputs with their normalisation, output classes, the ONNX graph as an
``mlm:model`` asset, the card), the way the MLM specification asks predictions to point
at their model rather than repeat it.

Validation works offline: pystac checks every document against the STAC core schemas it
ships, and the MLM fields are checked by ``stac-model``, the MLM extension's own pydantic
models. The projection extension's JSON schema lives only online; its fields are
pystac's typed ones.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import rasterio
import shapely
from rasterio.warp import transform_geom

from service.batch.inputs import TileInput
from service.rasters import ground_resolution
from service.store.repository import ModelEntry

COG = "image/tiff; application=geotiff; profile=cloud-optimized"
ONNX = "application/octet-stream; application=onnx"
FOLDER = "stac"
TASK = "semantic-segmentation"


def _model_id(entry: ModelEntry) -> str:
    return f"model-{entry.name}-{entry.version}"


def mlm_properties(entry: ModelEntry) -> dict[str, Any]:
    """The MLM extension's fields of a store version, built and checked by stac-model:
    one RGB input per graph input (batch, bands, height, width; any window the plan cuts)
    with its per-band normalisation, and the building probability with its two classes."""
    from stac_model.input import InputStructure, ModelInput, ValueScalingZScore
    from stac_model.output import MLMClassification, ModelOutput, ModelResult
    from stac_model.schema import MLModelProperties

    m = entry.manifest
    std = m.std_rgb or (1.0, 1.0, 1.0)
    scaling = [ValueScalingZScore(mean=float(a), stddev=float(b)) for a, b in zip(m.mean_rgb, std, strict=True)]
    inputs = [
        ModelInput(
            name=name,
            bands=["red", "green", "blue"],
            input=InputStructure(shape=[-1, 3, -1, -1], dim_order=["batch", "bands", "height", "width"], data_type="float32"),
            value_scaling=scaling,
        )
        for name in m.inputs or ("image",)
    ]
    output = ModelOutput(
        name=m.output or "probability",
        tasks={TASK},
        result=ModelResult(shape=[-1, 1, -1, -1], dim_order=["batch", "channel", "height", "width"], data_type="float32"),
        classes=[MLMClassification(0, name="background"), MLMClassification(1, name="building")],
    )
    props = MLModelProperties(
        name=f"{entry.name}:{entry.version}",
        architecture=m.network,
        tasks={TASK},
        framework="ONNX",
        accelerator="amd64",
        accelerator_constrained=False,
        input=inputs,
        output=[output],
    )
    return json.loads(props.model_dump_json(by_alias=True))


def _graphs(entry: ModelEntry) -> list[tuple[str, Path]]:
    """The ONNX graphs the version runs: its own, or each member's for an ensemble."""
    if not entry.manifest.members:
        return [("model", entry.path("model.onnx"))]
    store = entry.folder.parent.parent
    return [
        (f"model-{m['name']}-{m['version']}", store / m["name"] / str(m["version"]) / "model.onnx")
        for m in entry.manifest.members
    ]


def _model_item(entry: ModelEntry, when: dt.datetime):
    import pystac
    from stac_model.schema import MLModelExtension

    item = pystac.Item(id=_model_id(entry), geometry=None, bbox=None, datetime=when, properties={})
    MLModelExtension.ext(item, add_if_missing=True).apply(mlm_properties(entry))
    item.properties.update(
        {"footprints:threshold": entry.manifest.threshold, "footprints:model_resolution_m": entry.manifest.resolution_m}
    )
    for key, graph in _graphs(entry):
        item.add_asset(
            key,
            pystac.Asset(
                str(graph.resolve()),
                "ONNX graph",
                media_type=ONNX,
                roles=["mlm:model"],
                extra_fields={"mlm:artifact_type": "onnx"},
            ),
        )
    card = entry.folder / "MODEL_CARD.md"
    if card.is_file():
        item.add_asset(
            "model-card", pystac.Asset(str(card.resolve()), "model card", media_type="text/markdown", roles=["metadata"])
        )
    return item


def _item(tile: TileInput, out: Path, entry: ModelEntry, when: dt.datetime):
    import pystac
    from pystac.extensions.projection import ProjectionExtension

    mask = out / "masks" / f"{tile.name}.tif"
    here = out / FOLDER / tile.name  # where the item is saved: the run's outputs are linked relative to it

    def rel(p: Path) -> str:
        return os.path.relpath(p.resolve(), here.resolve())

    with rasterio.open(mask) as src:
        crs = src.crs.to_string() if src.crs else None
        box = shapely.box(*src.bounds)
        footprint = shapely.geometry.shape(transform_geom(crs, "EPSG:4326", shapely.geometry.mapping(box))) if crs else box
        gsd = ground_resolution(src.crs, src.transform, src.width, src.height) if crs else None
        shape, transform = [src.height, src.width], list(src.transform)[:6]
    properties: dict[str, Any] = {"footprints:model": f"{entry.name}:{entry.version}"}
    if gsd:
        properties["gsd"] = round(float(sum(gsd) / 2), 4)
    item = pystac.Item(
        id=tile.name,
        geometry=shapely.geometry.mapping(footprint),
        bbox=list(footprint.bounds),
        datetime=when,
        properties=properties,
    )
    ProjectionExtension.ext(item, add_if_missing=True).apply(code=crs, shape=shape, transform=transform)
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
    return item


def write_stac(out: Path, tiles: Sequence[TileInput], entry: ModelEntry) -> Path:
    """``out/stac/collection.json``, an Item per tile and the model's Item beside it (a
    self-contained catalogue: the run's outputs linked relatively, so the folder moves as
    one; the inputs, the graph and the card by absolute path or URL); returns the
    collection's path."""
    import pystac

    when = dt.datetime.now(dt.UTC)
    items = [_item(t, out, entry, when) for t in tiles if (out / "masks" / f"{t.name}.tif").is_file()]
    bounds = shapely.total_bounds([shapely.box(*i.bbox) for i in items]).tolist() if items else [-180.0, -90.0, 180.0, 90.0]
    collection = pystac.Collection(
        id=f"footprints-{out.resolve().name}",
        description=f"Building masks and footprints by {entry.name} v{entry.version} ({entry.manifest.network})",
        extent=pystac.Extent(pystac.SpatialExtent([bounds]), pystac.TemporalExtent([[when, when]])),
        license="other",
    )
    model = _model_item(entry, when)
    collection.add_item(model)
    for item in items:
        item.add_link(pystac.Link("derived_from", model, media_type="application/json", title="the model that made it"))
        collection.add_item(item)
    folder = out / FOLDER
    collection.normalize_hrefs(str(folder))
    collection.save(pystac.CatalogType.SELF_CONTAINED)
    return folder / "collection.json"


def validate_offline(collection: Path) -> int:
    """Validate the collection and each item against the STAC core schemas pystac ships
    and, where an item uses the MLM extension, its fields with stac-model's models and its
    ``mlm:model`` asset; returns the documents validated (raises
    ``pystac.STACValidationError`` or pydantic's ``ValidationError``)."""
    import pystac
    from pystac.validation import validate_dict
    from stac_model.schema import MLModelExtension, MLModelProperties

    col = pystac.Collection.from_file(str(collection))
    count = 0
    for obj in [col, *col.get_items(recursive=True)]:
        href = obj.get_self_href()
        assert href is not None, "a saved catalogue's objects know their files"
        doc = json.loads(Path(href).read_text())
        validate_dict(doc, extensions=[])
        if MLModelExtension.get_schema_uri() in doc.get("stac_extensions", []):
            MLModelProperties.model_validate(doc["properties"])
            if not any("mlm:model" in a.get("roles", []) for a in doc.get("assets", {}).values()):
                raise pystac.STACValidationError(f"{href}: an MLM item needs an asset with the role mlm:model")
        count += 1
    return count
