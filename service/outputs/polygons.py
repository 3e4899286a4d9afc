"""Building polygons of a mask: traced by GDAL, filtered and simplified in metres on
the ground whatever the CRS, as GeoJSON in the mask's CRS with each building's area."""

from __future__ import annotations

import json
from pathlib import Path

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

from service.rasters import row_strips


def traced_polygons(src) -> list[shapely.Geometry]:
    """Every building outline of an open 0/255 mask dataset, in its CRS, as traced:
    neither filtered by area nor simplified (a city layer joins tiles' pieces first)."""
    # Strips keep memory flat. Polygons are traced in pixel coordinates; only those
    # touching a strip edge can continue in the next strip, so only they are
    # unioned (a noisy mask has ~10^5 specks, and one union of all is very slow).
    inner: list[shapely.Geometry] = []
    edge: list[shapely.Geometry] = []
    for r0, r1 in row_strips(src.height, 1024):
        band = src.read(1, window=Window(0, r0, src.width, r1 - r0))
        for geom, _ in shapes(band, mask=band > 0, transform=Affine.translation(0, r0)):
            g = shapely.geometry.shape(geom)
            _, y0, _, y1 = g.bounds
            (edge if (y0 == r0 and r0 > 0) or (y1 == r1 and r1 < src.height) else inner).append(g)
    if edge:
        merged = shapely.union_all(edge)
        inner += list(getattr(merged, "geoms", [merged]))
    t = src.transform
    return [shapely.affinity.affine_transform(g, [t.a, t.b, t.d, t.e, t.c, t.f]) for g in inner]


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


def finish_polygons(
    polys: list[shapely.Geometry], min_area_m2: float = 4.0, simplify_m: float = 0.5, crs: str | None = None
) -> list[shapely.Geometry]:
    """Drop specks under ``min_area_m2`` and simplify outlines by ``simplify_m``, both in
    metres on the ground whatever ``crs`` (geographic and Web Mercator polygons are
    measured in their local UTM zone); the result stays in ``crs``."""
    local = ground_crs(polys, crs)
    metric = _moved(polys, crs, local) if local and crs else polys
    keep = [i for i, g in enumerate(metric) if g.area >= min_area_m2]
    if simplify_m <= 0:
        return [polys[i] for i in keep]
    done = [metric[i].simplify(simplify_m, preserve_topology=True) for i in keep]
    return _moved(done, local, crs) if local and crs and done else done


def ground_areas(polys: list[shapely.Geometry], crs: str | None) -> list[float]:
    """Each polygon's area in m^2 on the ground (see :func:`ground_crs`)."""
    local = ground_crs(polys, crs)
    return [g.area for g in (_moved(polys, crs, local) if local and crs else polys)]


def mask_polygons(mask, min_area_m2: float = 4.0, simplify_m: float = 0.5) -> tuple[list[shapely.Geometry], str | None]:
    """Building polygons of a 0/255 mask GeoTIFF (a path or an open dataset), in its
    CRS, and that CRS as a string."""
    if isinstance(mask, (str, Path)):
        with rasterio.open(mask) as src:
            return mask_polygons(src, min_area_m2, simplify_m)
    crs = mask.crs.to_string() if mask.crs else None
    return finish_polygons(traced_polygons(mask), min_area_m2, simplify_m, crs), crs


def polygons_geojson(mask, min_area_m2: float = 4.0, simplify_m: float = 0.5) -> str:
    """The mask's building polygons as a GeoJSON FeatureCollection string."""
    return to_geojson(*mask_polygons(mask, min_area_m2, simplify_m))


def to_geojson(polys: list[shapely.Geometry], crs: str | None) -> str:
    """Polygons in ``crs`` as a GeoJSON FeatureCollection string, with their areas (m^2
    on the ground)."""
    features = [
        {"type": "Feature", "properties": {"area_m2": round(a, 2)}, "geometry": shapely.geometry.mapping(p)}
        for p, a in zip(polys, ground_areas(polys, crs))
    ]
    collection: dict[str, object] = {"type": "FeatureCollection", "features": features}
    if crs:
        # RFC 7946 GeoJSON assumes WGS 84; polygons here stay in the raster's CRS,
        # so name it the way GDAL and QGIS read it.
        collection["crs"] = {"type": "name", "properties": {"name": crs}}
    return json.dumps(collection)


def geotiff_polygons(tif: bytes) -> str:
    """:func:`polygons_geojson` of a mask GeoTIFF held in memory."""
    with MemoryFile(tif) as mem, mem.open() as ds:
        return polygons_geojson(ds)


def write_polygons(mask_path: str | Path, out: str | Path, min_area_m2: float = 4.0, simplify_m: float = 0.5) -> int:
    """Write the mask's building polygons as GeoJSON; returns the count."""
    text = polygons_geojson(mask_path, min_area_m2, simplify_m)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    return len(json.loads(text)["features"])
