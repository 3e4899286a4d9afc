"""``footprints diff``: our buildings against an existing map (an OSM extract, a cadastre),
as a tasking manager needs them.

Buildings are paired one-to-one, best IoU first, among pairs that overlap by at least
``match_iou``. Three layers come out, in our buildings' CRS:

* ``new``: ours with no partner in theirs (to map);
* ``missing``: theirs with no partner in ours (demolished, hidden, or missed by the model);
* ``changed``: ours whose partner overlaps them by less than ``changed_iou`` (to check),
  with the partner's IoU.

Each layer is counted per tile: a building belongs to the tile (a GeoTIFF of ``--tiles``)
that holds its centroid, or to ``-`` when no tile does or none are given.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from rasterio.crs import CRS
from rasterio.warp import transform_geom

from service.errors import InputError

LAYERS = ("new", "missing", "changed")


@dataclass
class Layer:
    """Buildings of one file, in one CRS (None: unknown, taken as ours)."""

    geoms: list[shapely.Geometry]
    crs: str | None


def read_buildings(path: Path) -> Layer:
    """Polygons of a GeoJSON (its ``crs`` member, else WGS 84 as RFC 7946 says) or any
    vector file GDAL reads (GeoPackage, Shapefile; through pyogrio)."""
    if not path.is_file():
        raise InputError(f"{path}: no such buildings file")
    if path.suffix.lower() in (".geojson", ".json"):
        try:
            doc = json.loads(path.read_text())
            geoms = [shapely.geometry.shape(f["geometry"]) for f in doc["features"] if f.get("geometry")]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise InputError(f"{path}: not a GeoJSON FeatureCollection ({type(e).__name__}: {e})") from None
        crs = doc.get("crs", {}).get("properties", {}).get("name") or "EPSG:4326"
    else:
        try:
            from pyogrio.raw import read
        except ImportError:
            raise InputError(f"{path}: reading {path.suffix} files needs pyogrio (pip install 'footprints[batch]')") from None
        try:
            meta, _, wkb, _ = read(str(path))
        except Exception as e:  # GDAL's errors name the file's trouble
            raise InputError(f"{path}: not a vector file GDAL reads ({e})") from None
        geoms = [shapely.from_wkb(g) for g in wkb if g is not None]
        crs = meta.get("crs")
    polys = [p for g in geoms for p in getattr(g, "geoms", [g]) if p.geom_type == "Polygon" and not p.is_empty]
    return Layer([shapely.make_valid(p) if not p.is_valid else p for p in polys], crs)


def _to(layer: Layer, crs: str | None) -> list[shapely.Geometry]:
    if not layer.crs or not crs or CRS.from_user_input(layer.crs) == CRS.from_user_input(crs):
        return layer.geoms
    moved = transform_geom(layer.crs, crs, [shapely.geometry.mapping(g) for g in layer.geoms])
    return [shapely.geometry.shape(g) for g in moved]


@dataclass
class Diff:
    new: list[int] = field(default_factory=list)  # indices into ours
    missing: list[int] = field(default_factory=list)  # indices into theirs
    changed: list[tuple[int, int, float]] = field(default_factory=list)  # ours, theirs, IoU
    unchanged: int = 0


def compare(ours: Sequence[shapely.Geometry], theirs: Sequence[shapely.Geometry], changed_iou: float, match_iou: float) -> Diff:
    """One-to-one pairs, best IoU first, among pairs overlapping by ``match_iou`` or more."""
    tree = shapely.STRtree(list(theirs))
    pairs = []
    for i, g in enumerate(ours):
        for j in tree.query(g, predicate="intersects"):
            union = g.union(theirs[j]).area
            iou = g.intersection(theirs[j]).area / union if union else 0.0
            if iou >= match_iou:
                pairs.append((iou, i, int(j)))
    used_ours: set[int] = set()
    used_theirs: set[int] = set()
    out = Diff()
    for iou, i, j in sorted(pairs, key=lambda p: (-p[0], p[1], p[2])):
        if i in used_ours or j in used_theirs:
            continue
        used_ours.add(i)
        used_theirs.add(j)
        if iou < changed_iou:
            out.changed.append((i, j, iou))
        else:
            out.unchanged += 1
    out.new = [i for i in range(len(ours)) if i not in used_ours]
    out.missing = [j for j in range(len(theirs)) if j not in used_theirs]
    return out


def tile_extents(folder: Path | None, crs: str | None) -> dict[str, shapely.Geometry]:
    """Each GeoTIFF of ``folder`` by name (its stem): its footprint in ``crs``."""
    import rasterio

    if folder is None:
        return {}
    if not folder.is_dir():
        raise InputError(f"{folder}: no such tiles folder")
    out = {}
    for path in sorted(folder.glob("*.tif")):
        with rasterio.open(path) as src:
            box = shapely.box(*src.bounds)
            out[path.stem] = _to(Layer([box], src.crs.to_string() if src.crs else None), crs)[0]
    return out


def _tile_of(geoms: Sequence[shapely.Geometry], tiles: dict[str, shapely.Geometry]) -> list[str]:
    names = list(tiles)
    tree = shapely.STRtree([tiles[n] for n in names]) if names else None
    out = []
    for g in geoms:
        hit = tree.query(g.centroid, predicate="within") if tree is not None else np.array([], int)
        out.append(names[int(min(hit))] if len(hit) else "-")
    return out


def _write(path: Path, geoms: list[shapely.Geometry], props: list[dict], crs: str | None) -> None:
    features = [{"type": "Feature", "properties": p, "geometry": shapely.geometry.mapping(g)} for g, p in zip(geoms, props)]
    doc: dict[str, object] = {"type": "FeatureCollection", "features": features}
    if crs:
        doc["crs"] = {"type": "name", "properties": {"name": crs}}
    path.write_text(json.dumps(doc))


def diff(
    ours_path: Path,
    theirs_path: Path,
    out: Path,
    tiles: Path | None = None,
    changed_iou: float = 0.5,
    match_iou: float = 0.1,
) -> dict:
    """Write ``new``, ``missing`` and ``changed`` GeoJSON layers and ``counts.json``
    under ``out``; returns the counts (overall and per tile)."""
    if not 0 < match_iou <= changed_iou <= 1:
        raise InputError(f"need 0 < match IoU ({match_iou}) <= changed IoU ({changed_iou}) <= 1")
    ours = read_buildings(ours_path)
    theirs = read_buildings(theirs_path)
    crs = ours.crs or theirs.crs
    theirs_here = _to(theirs, crs)
    d = compare(ours.geoms, theirs_here, changed_iou, match_iou)
    extents = tile_extents(tiles, crs)
    layers: dict[str, tuple[list[shapely.Geometry], list[dict[str, object]]]] = {
        "new": ([ours.geoms[i] for i in d.new], [{} for _ in d.new]),
        "missing": ([theirs_here[j] for j in d.missing], [{} for _ in d.missing]),
        "changed": ([ours.geoms[i] for i, _, _ in d.changed], [{"iou": round(iou, 4)} for *_, iou in d.changed]),
    }
    out.mkdir(parents=True, exist_ok=True)
    per_tile: dict[str, Counter] = {}
    for name, (geoms, props) in layers.items():
        where = _tile_of(geoms, extents)
        for p, t in zip(props, where, strict=True):
            p["tile"] = t
            per_tile.setdefault(t, Counter())[name] += 1
        _write(out / f"{name}.geojson", geoms, props, crs)
    counts = {
        "ours": len(ours.geoms),
        "theirs": len(theirs.geoms),
        "unchanged": d.unchanged,
        **{name: len(layers[name][0]) for name in LAYERS},
        "tiles": {t: {name: c[name] for name in LAYERS} for t, c in sorted(per_tile.items())},
        "changed_iou": changed_iou,
        "match_iou": match_iou,
    }
    (out / "counts.json").write_text(json.dumps(counts, indent=2) + "\n")
    return counts
