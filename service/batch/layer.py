"""The city's buildings as one layer: each tile's finished polygons, and the pieces
that touch tile edges joined across them first (a building cut by two tiles becomes
one polygon), written as a GeoPackage through GDAL (pyogrio)."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import shapely

from service.outputs.polygons import PolygonOptions, finish_polygons, ground_areas

JOIN_M = 0.01  # edges closer than this (1 cm: float rounding of shared tile edges) are one edge


def join_edges(pieces: list[tuple[shapely.Geometry, str]]) -> list[tuple[shapely.Geometry, set[str]]]:
    """Join the pieces of tiles that share a stretch of a tile edge with a piece of
    another tile, as one building; pieces that only meet at a corner stay apart, as
    GDAL's 4-connected tracing keeps them apart inside a tile. A piece joins, in each
    other tile, only the piece it shares the longest stretch with: two touching houses
    that both tiles separated stay two, even where the tiles put the wall between them
    a little apart on the edge (each house would otherwise also reach the other's
    piece across it, and all four would become one)."""
    grown = [p.buffer(JOIN_M, join_style="mitre") for p, _ in pieces]
    parent = list(range(len(pieces)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    best: dict[tuple[int, str], tuple[float, int]] = {}  # (piece, other tile) -> (shared, its piece)
    tree = shapely.STRtree(grown)
    for i, g in enumerate(grown):
        for j in map(int, tree.query(g, predicate="intersects")):
            if j <= i or pieces[i][1] == pieces[j][1]:
                continue
            # A shared stretch overlaps the grown pieces over 2 cm x its length; a shared
            # corner over about (2 cm)^2: a stretch of 4 cm (less than any pixel) tells them apart.
            shared = g.intersection(grown[j]).area
            if shared <= 8 * JOIN_M**2:
                continue
            for a, b in ((i, j), (j, i)):
                if shared > best.get((a, pieces[b][1]), (0.0, -1))[0]:
                    best[(a, pieces[b][1])] = (shared, b)
    for (i, _), (_, j) in best.items():
        parent[root(j)] = root(i)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(pieces)):
        groups[root(i)].append(i)
    joined = []
    for members in groups.values():
        tiles = {pieces[i][1] for i in members}
        if len(members) == 1:
            joined.append((pieces[members[0]][0], tiles))
            continue
        back = shapely.union_all([grown[i] for i in members]).buffer(-JOIN_M, join_style="mitre")
        joined += [(p, tiles) for p in getattr(back, "geoms", [back]) if not p.is_empty]
    return joined


def city_layer(results: list[dict], opts: PolygonOptions) -> dict[str | None, tuple[list, list[str]]]:
    """Per CRS: the buildings and, for each, the tiles it comes from."""
    by_crs: dict[str | None, tuple[list, list[str]]] = defaultdict(lambda: ([], []))
    edges: dict[str | None, list[tuple[shapely.Geometry, str]]] = defaultdict(list)
    for r in results:
        geoms, tiles = by_crs[r["crs"]]
        for wkb in r["inner"]:
            geoms.append(shapely.from_wkb(wkb))
            tiles.append(r["name"])
        edges[r["crs"]] += [(shapely.from_wkb(w), r["name"]) for w in r["edge"]]
    for crs, pieces in edges.items():
        geoms, tiles = by_crs[crs]
        for building, names in join_edges(pieces):
            for finished in finish_polygons([building], opts, crs):
                geoms.append(finished)
                tiles.append(",".join(sorted(names)))
    return dict(by_crs)


def _named_layers(layers: dict[str | None, tuple[list, list[str]]]):
    """Per CRS, in a stable order: the layer's name (``buildings``, or ``buildings_<crs>``
    when tiles differ), the CRS, its polygons and each one's tiles."""
    for crs, (geoms, tiles) in sorted(layers.items(), key=lambda kv: str(kv[0])):
        name = "buildings" if len(layers) == 1 else f"buildings_{str(crs).replace(':', '_')}"
        polys: list[shapely.Geometry] = []
        owners: list[str] = []
        for g, t in zip(geoms, tiles):  # a building simplified into several parts: each a polygon
            parts = [g] if g.geom_type == "Polygon" else list(g.geoms) if g.geom_type == "MultiPolygon" else []
            polys += parts
            owners += [t] * len(parts)
        yield name, crs, polys, owners


def write_geoparquet(folder: Path, layers: dict[str | None, tuple[list, list[str]]]) -> list[Path]:
    """The same layers as GeoParquet 1.1 files (``<layer>.parquet``: WKB geometry, its CRS
    as PROJJSON, the bbox; ``tiles`` and ``area_m2``), written through pyarrow, which GDAL,
    DuckDB and geopandas read. Returns the files written."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from rasterio.crs import CRS

    paths = []
    for name, crs, polys, owners in _named_layers(layers):
        column: dict[str, object] = {"encoding": "WKB", "geometry_types": ["Polygon"]}
        if crs is not None:
            column["crs"] = CRS.from_user_input(crs).to_dict(projjson=True)
        if polys:
            column["bbox"] = [float(v) for v in shapely.total_bounds(polys)]
        geo = {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}
        table = pa.table(
            {
                "tiles": pa.array(owners, pa.string()),
                "area_m2": pa.array(np.round(np.array(ground_areas(polys, crs), dtype=np.float64), 2)),
                "geometry": pa.array([p.wkb for p in polys], pa.binary()),
            }
        ).replace_schema_metadata({"geo": json.dumps(geo)})
        path = folder / f"{name}.parquet"
        partial = path.with_name(f".partial.{path.name}")
        pq.write_table(table, partial)
        os.replace(partial, path)
        paths.append(path)
    return paths


def write_gpkg(path: Path, layers: dict[str | None, tuple[list, list[str]]]) -> int:
    """One GeoPackage layer per CRS (``buildings``, or ``buildings_<crs>`` when tiles
    differ), written to a temporary name and renamed; returns the building count."""
    from pyogrio.raw import write

    partial = path.with_name(f".partial.{path.name}")  # GDAL picks the driver by extension
    partial.unlink(missing_ok=True)
    count = 0
    for i, (name, crs, polys, owners) in enumerate(_named_layers(layers)):
        write(
            str(partial),
            geometry=np.array([p.wkb for p in polys], dtype=object),
            field_data=[np.array(owners, dtype=object), np.round(np.array(ground_areas(polys, crs), dtype=np.float64), 2)],
            fields=["tiles", "area_m2"],
            crs=crs,
            geometry_type="Polygon",
            driver="GPKG",
            layer=name,
            append=i > 0,
        )
        count += len(polys)
    os.replace(partial, path)
    return count
