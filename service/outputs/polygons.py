"""Building polygons of a mask: traced by GDAL; filtered, simplified and regularised in
metres on the ground whatever the CRS (:mod:`service.outputs.regularize`); valid; as
GeoJSON in the mask's CRS (or RFC 7946 WGS 84) with each building's area, confidence
(mean probability inside it) and the model version that found it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import shapely
import shapely.affinity
from rasterio.crs import CRS
from rasterio.features import shapes
from rasterio.io import MemoryFile
from rasterio.transform import Affine
from rasterio.warp import transform as warp_points
from rasterio.warp import transform_geom
from rasterio.windows import Window

from service.outputs.instances import separate
from service.outputs.regularize import regularize
from service.rasters import ground_resolution, row_strips

DEFAULT_GSD_M = 0.3  # the resolution every model here is trained at: an ungeoreferenced mask's guess


@dataclass(frozen=True)
class PolygonOptions:
    """How a mask becomes buildings (the CLI's and the request's polygon controls)."""

    min_area_m2: float = 4.0  # smaller blobs are noise, not buildings
    simplify_m: float = 0.5  # Douglas-Peucker tolerance before regularising
    regularize: bool = True  # right angles and rectangles, as mappers draw
    wgs84: bool = False  # GeoJSON in RFC 7946 WGS 84 (lon, lat) instead of the raster's CRS
    separate: bool = True  # touching buildings apart (service.outputs.instances), where probabilities are known


def traced_polygons(src, instances: np.ndarray | None = None) -> list[shapely.Geometry]:
    """Every building outline of an open 0/255 mask dataset, in its CRS, as traced:
    neither filtered by area nor simplified (a city layer joins tiles' pieces first).
    With ``instances`` (a label image on the mask's grid: :func:`building_instances`)
    each instance is an outline of its own, however closely it touches the next."""
    # Strips keep memory flat. Polygons are traced in pixel coordinates; only those
    # touching a strip edge can continue in the next strip, so only they are unioned,
    # each with the pieces of its own value (a noisy mask has ~10^5 specks, and one
    # union of all is very slow).
    inner: list[shapely.Geometry] = []
    edge: dict[float, list[shapely.Geometry]] = {}
    for r0, r1 in row_strips(src.height, 1024):
        band = instances[r0:r1] if instances is not None else src.read(1, window=Window(0, r0, src.width, r1 - r0))
        if not band.any():  # GDAL scans an empty strip as slowly as a full one (0.07 s per 5000 x 1024)
            continue
        for geom, value in shapes(band, mask=band > 0, transform=Affine.translation(0, r0)):
            g = shapely.geometry.shape(geom)
            _, y0, _, y1 = g.bounds
            if (y0 == r0 and r0 > 0) or (y1 == r1 and r1 < src.height):
                edge.setdefault(value, []).append(g)
            else:
                inner.append(g)
    for pieces in edge.values():
        merged = shapely.union_all(pieces)
        inner += list(getattr(merged, "geoms", [merged]))
    t = src.transform
    return [shapely.affinity.affine_transform(g, [t.a, t.b, t.d, t.e, t.c, t.f]) for g in inner]


def building_instances(src, probabilities: np.ndarray, gsd_m: float | None = None) -> np.ndarray:
    """The instance labels of an open mask dataset (:func:`service.outputs.instances.separate`),
    from its probabilities (uint8 0-255 on its grid); ``gsd_m`` where the grid has no
    ground resolution of its own (unknown: the models' 0.3 m)."""
    ground = ground_resolution(src.crs, src.transform, src.width, src.height)
    gsd = sum(ground) / 2 if ground else gsd_m or DEFAULT_GSD_M
    return separate(src.read(1), probabilities, gsd)[0]


def ground_crs(polys: list[shapely.Geometry], crs: str | None) -> str | None:
    """A CRS in which ``polys`` (in ``crs``) measure in metres on the ground: None when
    ``crs`` already does (projected, in metres, not Web Mercator, whose metres stretch
    with latitude) or is unknown; else the UTM zone of their centre."""
    if not crs or not polys:
        return None
    c = CRS.from_user_input(crs)
    if c.is_projected and c.linear_units.lower().startswith("met") and c.to_epsg() != 3857:
        return None
    x0, y0, x1, y1 = shapely.total_bounds(polys)
    [lon], [lat] = warp_points(c, "EPSG:4326", [(x0 + x1) / 2], [(y0 + y1) / 2])
    zone = min(60, max(1, int((lon + 180) // 6) + 1))
    return f"EPSG:{32600 + zone if lat >= 0 else 32700 + zone}"


def _moved(polys: list[shapely.Geometry], src: str, dst: str) -> list[shapely.Geometry]:
    moved = transform_geom(src, dst, [shapely.geometry.mapping(g) for g in polys])
    return [shapely.geometry.shape(g) for g in moved]


def _polygonal(g: shapely.Geometry) -> list[shapely.Polygon]:
    """The valid polygons of ``g`` (``make_valid`` where needed; lines and points dropped)."""
    if not g.is_valid:
        g = shapely.make_valid(g)
    return [p for p in getattr(g, "geoms", [g]) if p.geom_type == "Polygon" and not p.is_empty] + [
        q for p in getattr(g, "geoms", []) if p.geom_type == "MultiPolygon" for q in p.geoms
    ]


def finish_polygons(polys: list[shapely.Geometry], opts: PolygonOptions, crs: str | None = None) -> list[shapely.Geometry]:
    """Drop specks under ``opts.min_area_m2``, simplify outlines by ``opts.simplify_m``
    and regularise them, all in metres on the ground whatever ``crs`` (geographic and Web
    Mercator polygons are worked on in their local UTM zone); the result stays in
    ``crs``, every geometry a valid polygon."""
    local = ground_crs(polys, crs)
    metric = _moved(polys, crs, local) if local and crs else polys
    keep = [i for i, g in enumerate(metric) if g.area >= opts.min_area_m2]
    if opts.simplify_m <= 0 and not opts.regularize:
        return [p for i in keep for p in _polygonal(polys[i])]
    done = [metric[i].simplify(opts.simplify_m, preserve_topology=True) if opts.simplify_m > 0 else metric[i] for i in keep]
    parts = [p for g in done for p in _polygonal(g)]
    if opts.regularize:
        parts = [q for p in parts for q in _polygonal(regularize(p))]
    return [p for g in (_moved(parts, local, crs) if local and crs and parts else parts) for p in _polygonal(g)]


def ground_areas(polys: list[shapely.Geometry], crs: str | None) -> list[float]:
    """Each polygon's area in m^2 on the ground (see :func:`ground_crs`)."""
    local = ground_crs(polys, crs)
    return [g.area for g in (_moved(polys, crs, local) if local and crs else polys)]


def confidences(polys: list[shapely.Geometry], probabilities: np.ndarray, transform: Affine) -> list[float]:
    """The mean probability (0-1) inside each polygon, from a uint8 0-255 probability
    plane on the grid ``transform`` describes (polygons in its CRS). A polygon too small
    to cover a pixel centre gets the pixel under its centroid."""
    from rasterio.features import rasterize

    if not polys:
        return []
    ids = rasterize(((g, i + 1) for i, g in enumerate(polys)), out_shape=probabilities.shape, transform=transform, dtype="int32")
    n = len(polys) + 1
    # Only building pixels are summed: a 5000^2 tile's float64 copy and full bincounts
    # took 1.3 s, its ~15 % of building pixels take a tenth of that.
    flat = ids.ravel()
    inside = np.flatnonzero(flat)
    owners = flat[inside]
    sums = np.bincount(owners, weights=probabilities.ravel()[inside], minlength=n)
    counts = np.bincount(owners, minlength=n)
    out = []
    inverse = ~transform
    for i, g in enumerate(polys, start=1):
        if counts[i]:
            out.append(float(sums[i] / counts[i] / 255.0))
            continue
        col, row = inverse * (g.centroid.x, g.centroid.y)
        r = min(max(int(row), 0), probabilities.shape[0] - 1)
        c = min(max(int(col), 0), probabilities.shape[1] - 1)
        out.append(float(probabilities[r, c]) / 255.0)
    return out


@dataclass(frozen=True)
class Source:
    """What the buildings' properties name: the model version that found them."""

    model: str = ""
    version: int = 0


def to_geojson(
    polys: list[shapely.Geometry],
    crs: str | None,
    confidence: list[float] | None = None,
    source: Source | None = None,
    wgs84: bool = False,
) -> str:
    """Polygons in ``crs`` as a GeoJSON FeatureCollection string. Each building carries
    its area (m^2 on the ground), its confidence where known, and the model version; in
    ``crs`` (named in a ``crs`` member, as GDAL and QGIS read it) or, with ``wgs84``,
    in RFC 7946 WGS 84 longitude and latitude."""
    areas = ground_areas(polys, crs)
    shown = _moved(polys, crs, "EPSG:4326") if wgs84 and crs and polys else polys
    features = []
    for i, (p, a) in enumerate(zip(shown, areas, strict=True)):
        props: dict[str, object] = {"area_m2": round(a, 2)}
        if confidence is not None:
            props["confidence"] = round(confidence[i], 4)
        if source is not None and source.model:
            props.update(model=source.model, model_version=source.version)
        features.append({"type": "Feature", "properties": props, "geometry": shapely.geometry.mapping(p)})
    collection: dict[str, object] = {"type": "FeatureCollection", "features": features}
    if crs and not wgs84:
        collection["crs"] = {"type": "name", "properties": {"name": crs}}
    return json.dumps(collection)


def mask_outlines(
    src, probabilities: np.ndarray | None, opts: PolygonOptions, gsd_m: float | None = None
) -> list[shapely.Geometry]:
    """A mask's outlines as traced: its instances where ``opts.separate`` and the
    probabilities are known, else its components."""
    instances = building_instances(src, probabilities, gsd_m) if opts.separate and probabilities is not None else None
    return traced_polygons(src, instances)


def buildings_geojson(
    mask,
    probabilities: np.ndarray | None,
    opts: PolygonOptions = PolygonOptions(),
    source: Source | None = None,
    gsd_m: float | None = None,
) -> str:
    """The buildings of a 0/255 mask GeoTIFF (a path or an open dataset) as GeoJSON, each
    with its confidence from ``probabilities`` (uint8 0-255 on the mask's grid) if given,
    touching buildings separated (``opts.separate``) where they are."""
    if isinstance(mask, (str, Path)):
        with rasterio.open(mask) as src:
            return buildings_geojson(src, probabilities, opts, source, gsd_m)
    return outlines_geojson(mask_outlines(mask, probabilities, opts, gsd_m), mask, probabilities, opts, source)


def outlines_geojson(
    traced: list[shapely.Geometry], mask, probabilities: np.ndarray | None, opts: PolygonOptions, source: Source | None
) -> str:
    """Traced outlines of the open ``mask`` finished (:func:`finish_polygons`) as GeoJSON."""
    crs = mask.crs.to_string() if mask.crs else None
    polys = finish_polygons(traced, opts, crs)
    conf = confidences(polys, probabilities, mask.transform) if probabilities is not None else None
    return to_geojson(polys, crs, conf, source, opts.wgs84)


def plane_buildings(
    plane,
    crs,
    transform: Affine,
    opts: PolygonOptions = PolygonOptions(),
    source: Source | None = None,
    gsd_m: float | None = None,
) -> str:
    """:func:`buildings_geojson` of a whole mask plane held in memory (``MaskPlane``),
    through an uncompressed in-memory GeoTIFF (GDAL traces datasets, not arrays)."""
    mask = plane.plane
    profile = dict(
        driver="GTiff", width=mask.shape[1], height=mask.shape[0], count=1, dtype="uint8", crs=crs, transform=transform
    )
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(mask, 1)
        with mem.open() as ds:
            return buildings_geojson(ds, plane.probabilities, opts, source, gsd_m)


def write_buildings(
    mask_path: str | Path,
    out: str | Path,
    probabilities: np.ndarray | None,
    opts: PolygonOptions = PolygonOptions(),
    source: Source | None = None,
) -> int:
    """Write the mask's buildings as GeoJSON; returns the count."""
    text = buildings_geojson(mask_path, probabilities, opts, source)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    return len(json.loads(text)["features"])
