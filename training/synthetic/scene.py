"""Vector scene of one synthetic tile: streets, blocks, buildings, trees, water, shadows.

Geometry is built in pixel coordinates (x = column, y = row) so that
:mod:`training.synthetic.render` can burn it straight into rasters. A tile is a
street grid rotated about the tile centre; each block between streets is a park,
a parking lot, bare soil, or parcels that may each hold one building, so
buildings never overlap. Buildings are unions of rectangles (rectangles, L and U
shapes, courtyards), which keeps their cast shadows convex hulls of rectangles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
import shapely
from numpy.typing import ArrayLike

from .styles import CityStyle

PIXEL_M = 0.3  # Inria's ground sampling distance


class Ground(IntEnum):
    """Land-cover classes of the ground layer; cars are ground too (never buildings)."""

    GRASS = 0
    DRY_GRASS = 1
    SOIL = 2
    ROAD = 3
    PARKING = 4
    WATER = 5
    TREE = 6
    CAR_WHITE = 7
    CAR_BLACK = 8
    CAR_RED = 9
    CAR_BLUE = 10
    CAR_SILVER = 11


CAR_CLASSES = [Ground.CAR_WHITE, Ground.CAR_BLACK, Ground.CAR_RED, Ground.CAR_BLUE, Ground.CAR_SILVER]
_YARD = {"grass": Ground.GRASS, "dry_grass": Ground.DRY_GRASS, "soil": Ground.SOIL}
_SHADED_ROOF = 0.78  # brightness of the sun-facing-away half of a ridge roof
_RING = np.linspace(0, 2 * np.pi, 10, endpoint=False)  # tree shadow outline


@dataclass
class Scene:
    """Polygons of a tile in draw order, and the roof colour of each roof id."""

    height: int
    width: int
    ground: list[tuple[shapely.Geometry, int]] = field(default_factory=list)
    roofs: list[tuple[shapely.Geometry, int]] = field(default_factory=list)
    shadows: list[shapely.Geometry] = field(default_factory=list)
    roof_colours: np.ndarray = field(default_factory=lambda: np.zeros((1, 3), np.uint8))
    n_buildings: int = 0


def rect_corners(centres: np.ndarray, sizes: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Corners ``(N, 4, 2)`` of rectangles given centre ``(N, 2)``, size ``(N, 2)``, angle ``(N,)``."""
    unit = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    pts = unit[None] * sizes[:, None, :]
    c, s = np.cos(angles)[:, None], np.sin(angles)[:, None]
    x = pts[..., 0] * c - pts[..., 1] * s + centres[:, :1]
    y = pts[..., 0] * s + pts[..., 1] * c + centres[:, 1:]
    return np.stack([x, y], axis=-1)


def rect_polygons(centres: np.ndarray, sizes: np.ndarray, angles: np.ndarray) -> np.ndarray:
    return shapely.polygons(rect_corners(centres, sizes, angles))


def footprint_parts(kind: str, a: float, b: float, rng: np.random.Generator) -> np.ndarray:
    """Rectangles ``(k, 4)`` of (cx, cy, w, h), centred on 0, that make a footprint a x b."""
    parts: list[tuple[float, float, float, float]]
    if kind == "rect":
        parts = [(0, 0, a, b)]
    elif kind == "L":
        ta, tb = a * rng.uniform(0.35, 0.6), b * rng.uniform(0.35, 0.6)
        parts = [(0, -b / 2 + tb / 2, a, tb), (-a / 2 + ta / 2, tb / 2, ta, b - tb)]
    elif kind == "U":
        s, t = a * rng.uniform(0.25, 0.35), b * rng.uniform(0.3, 0.45)
        parts = [
            (0, -b / 2 + t / 2, a, t),
            (-a / 2 + s / 2, t / 2, s, b - t),
            (a / 2 - s / 2, t / 2, s, b - t),
        ]
    elif kind == "courtyard":
        t = min(a, b) * rng.uniform(0.22, 0.32)
        parts = [
            (0, -b / 2 + t / 2, a, t),
            (0, b / 2 - t / 2, a, t),
            (-a / 2 + t / 2, 0, t, b - 2 * t),
            (a / 2 - t / 2, 0, t, b - 2 * t),
        ]
    else:
        raise ValueError(f"unknown footprint kind {kind!r}")
    out = np.asarray(parts, dtype=np.float64)
    # Mirror at random so L and U shapes open every way.
    out[:, 0] *= rng.choice([-1.0, 1.0])
    out[:, 1] *= rng.choice([-1.0, 1.0])
    return out


def split_ridge(parts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cut each rectangle along its long axis into a lit and a shaded roof half."""
    cx, cy, w, h = parts.T
    along_x = w >= h
    off_x = np.where(along_x, 0.0, w / 4)
    off_y = np.where(along_x, h / 4, 0.0)
    hw = np.where(along_x, w, w / 2)
    hh = np.where(along_x, h / 2, h)
    lit = np.stack([cx - off_x, cy - off_y, hw, hh], axis=1)
    shaded = np.stack([cx + off_x, cy + off_y, hw, hh], axis=1)
    return lit, shaded


class _Builder:
    """Accumulates one tile's geometry; one method per kind of block."""

    def __init__(self, st: CityStyle, rng: np.random.Generator, height: int, width: int) -> None:
        self.st, self.rng, self.h, self.w = st, rng, height, width
        self.px = 1.0 / PIXEL_M
        self.theta = np.radians(rng.uniform(-st.grid_rotation_deg, st.grid_rotation_deg))
        az = np.radians(st.sun_azimuth_deg)
        # Shadow direction in pixels per metre of height: azimuth clockwise from up (-y).
        self.shadow_dir = np.array([np.sin(az), -np.cos(az)]) * st.shadow_per_m * self.px
        self.ground: list[tuple[shapely.Geometry, int]] = []
        self.parts: list[np.ndarray] = []  # per building: (k, 4) in its local frame
        self.placements: list[tuple[float, float, float]] = []  # per building: x, y, angle
        self.trees: list[np.ndarray] = []  # (n, 3): x, y, radius (px)
        self.cars: list[np.ndarray] = []  # (n, 3): x, y, angle

    def to_px(self, u: ArrayLike, v: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Street-grid frame (metres, centred on the tile) -> pixel coordinates."""
        c, s = np.cos(self.theta), np.sin(self.theta)
        u, v = np.asarray(u) * self.px, np.asarray(v) * self.px
        return self.w / 2 + u * c - v * s, self.h / 2 + u * s + v * c

    def grid_rect(self, u: float, v: float, su: float, sv: float) -> shapely.Geometry:
        x, y = self.to_px(u, v)
        return rect_polygons(np.array([[x, y]]), np.array([[su, sv]]) * self.px, np.array([self.theta]))[0]

    def road_lines(self, half_m: float) -> list[tuple[float, float]]:
        """Road centre positions and widths along one grid axis, covering +-half_m."""
        st, rng = self.st, self.rng
        roads = []
        pos = -half_m - rng.uniform(0, st.block_m[1])
        while pos < half_m + st.block_m[1]:
            width = rng.uniform(*st.road_width_m)
            roads.append((pos, width))
            pos += width / 2 + rng.uniform(*st.block_m) + st.road_width_m[1] / 2
        return roads

    def build(self) -> Scene:
        st, rng = self.st, self.rng
        half_m = 0.5 * np.hypot(self.h, self.w) * PIXEL_M
        u_roads, v_roads = self.road_lines(half_m), self.road_lines(half_m)
        uses = list(st.land_use)
        weights = np.array([st.land_use[k] for k in uses])
        reach = 0.5 * np.hypot(self.h, self.w) + np.hypot(st.block_m[1], st.block_m[1]) * self.px
        for (u0, wu0), (u1, wu1) in zip(u_roads, u_roads[1:]):
            for (v0, wv0), (v1, wv1) in zip(v_roads, v_roads[1:]):
                ua, ub = u0 + wu0 / 2, u1 - wu1 / 2
                va, vb = v0 + wv0 / 2, v1 - wv1 / 2
                bu, bv, su, sv = (ua + ub) / 2, (va + vb) / 2, ub - ua, vb - va
                x, y = self.to_px(bu, bv)
                if np.hypot(x - self.w / 2, y - self.h / 2) > reach:
                    continue
                use = uses[rng.choice(len(uses), p=weights / weights.sum())]
                getattr(self, f"_block_{use}")(bu, bv, su, sv)
        water = self._water()
        for u, width in u_roads:
            self.ground.append((self.grid_rect(u, 0, width, 2 * half_m), Ground.ROAD))
        for v, width in v_roads:
            self.ground.append((self.grid_rect(0, v, 2 * half_m, width), Ground.ROAD))
        return self._finish(water)

    # ---- blocks -------------------------------------------------------------
    def _scatter_trees(self, bu: float, bv: float, su: float, sv: float, per_ha: float) -> None:
        n = self.rng.poisson(per_ha * su * sv / 10_000)
        if n == 0:
            return
        u = bu + self.rng.uniform(-su / 2, su / 2, n)
        v = bv + self.rng.uniform(-sv / 2, sv / 2, n)
        x, y = self.to_px(u, v)
        r = self.rng.uniform(*self.st.tree_radius_m, n) * self.px
        self.trees.append(np.stack([x, y, r], axis=1))

    def _block_park(self, bu: float, bv: float, su: float, sv: float) -> None:
        self.ground.append((self.grid_rect(bu, bv, su, sv), Ground.GRASS))
        self._scatter_trees(bu, bv, su, sv, self.st.trees_per_ha_park)

    def _block_soil(self, bu: float, bv: float, su: float, sv: float) -> None:
        self.ground.append((self.grid_rect(bu, bv, su, sv), Ground.SOIL))
        self._scatter_trees(bu, bv, su, sv, self.st.trees_per_ha_yard / 2)

    def _block_parking(self, bu: float, bv: float, su: float, sv: float) -> None:
        self.ground.append((self.grid_rect(bu, bv, su, sv), Ground.PARKING))
        # Rows of 2.6 m bays, cars 1.9 x 4.5 m parked across the row, 45 % occupied.
        rows = np.arange(bv - sv / 2 + 4, bv + sv / 2 - 4, 7.0)
        bays = np.arange(bu - su / 2 + 2, bu + su / 2 - 2, 2.6)
        if len(rows) == 0 or len(bays) == 0:
            return
        uu, vv = np.meshgrid(bays, rows)
        keep = self.rng.random(uu.shape) < 0.45
        x, y = self.to_px(uu[keep], vv[keep])
        angle = np.full(x.shape, self.theta + np.pi / 2)
        self.cars.append(np.stack([x, y, angle], axis=1))

    def _block_built(self, bu: float, bv: float, su: float, sv: float) -> None:
        st, rng = self.st, self.rng
        self.ground.append((self.grid_rect(bu, bv, su, sv), _YARD[st.yard]))
        self._scatter_trees(bu, bv, su, sv, st.trees_per_ha_yard)
        inner_u, inner_v = su - 2 * st.setback_m, sv - 2 * st.setback_m
        if inner_u < 8 or inner_v < 8:
            return
        parcel = rng.uniform(*st.parcel_m)
        nu, nv = max(1, round(inner_u / parcel)), max(1, round(inner_v / parcel))
        cu, cv = inner_u / nu, inner_v / nv
        kinds = list(st.shape_weights)
        kind_p = np.array([st.shape_weights[k] for k in kinds])
        kind_p = kind_p / kind_p.sum()
        for i in range(nu):
            for j in range(nv):
                if rng.random() > st.building_fill:
                    continue
                a = cu * rng.uniform(*st.building_scale)
                b = cv * rng.uniform(*st.building_scale)
                if min(a, b) < 5:  # smaller than a shed: leave the parcel empty
                    continue
                kind = kinds[rng.choice(len(kinds), p=kind_p)]
                if kind == "courtyard" and min(a, b) < 20:
                    kind = "U"
                phi = 0.0
                if rng.random() < st.free_orientation:
                    phi = rng.uniform(-np.pi / 2, np.pi / 2)
                    c, s = abs(np.cos(phi)), abs(np.sin(phi))
                    # Shrink so the rotated footprint still fits its parcel.
                    fit = min(1.0, cu / (a * c + b * s), cv / (a * s + b * c))
                    a, b = a * fit, b * fit
                # Jitter the footprint inside whatever room the parcel leaves.
                room_u, room_v = max(0.0, (cu - a) / 2) * 0.5, max(0.0, (cv - b) / 2) * 0.5
                u = bu - inner_u / 2 + (i + 0.5) * cu + rng.uniform(-room_u, room_u)
                v = bv - inner_v / 2 + (j + 0.5) * cv + rng.uniform(-room_v, room_v)
                x, y = self.to_px(u, v)
                self.parts.append(footprint_parts(kind, a, b, rng) * self.px)
                self.placements.append((float(x), float(y), self.theta + phi))

    def _water(self) -> shapely.Geometry | None:
        st, rng = self.st, self.rng
        if rng.random() >= st.water_chance:
            return None
        if rng.random() < 0.5:  # a lake: a wobbly disc
            cx, cy = rng.uniform(0.2, 0.8) * self.w, rng.uniform(0.2, 0.8) * self.h
            radius = rng.uniform(0.08, 0.2) * min(self.h, self.w)
            t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
            wobble = sum(rng.uniform(0.05, 0.15) * np.sin(k * t + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
            r = radius * (1 + wobble)
            water = shapely.Polygon(np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1))
        else:  # a river crossing the tile
            n = 6
            along = np.linspace(-0.1, 1.1, n)
            across = rng.uniform(0.2, 0.8) + np.cumsum(rng.normal(0, 0.06, n))
            pts = np.stack([along * self.w, across * self.h], axis=1)
            if rng.random() < 0.5:
                pts = pts[:, ::-1]
            water = shapely.LineString(pts).buffer(rng.uniform(25, 60) * self.px / 2)
        self.ground.append((water, Ground.WATER))
        return water

    # ---- assembly -----------------------------------------------------------
    def _finish(self, water: shapely.Geometry | None) -> Scene:
        rng = self.rng
        scene = Scene(self.h, self.w, ground=self.ground)
        trees = np.concatenate(self.trees) if self.trees else np.zeros((0, 3))
        cars = np.concatenate(self.cars) if self.cars else np.zeros((0, 3))
        if water is not None:
            shapely.prepare(water)
        if len(cars):
            car_sizes = np.tile([4.5 * self.px, 1.9 * self.px], (len(cars), 1))
            car_polys = rect_polygons(cars[:, :2], car_sizes, cars[:, 2])
            if water is not None:
                car_polys = car_polys[~shapely.intersects(water, car_polys)]
            colours = rng.choice(len(CAR_CLASSES), len(car_polys), p=[0.3, 0.25, 0.1, 0.1, 0.25])
            scene.ground += [(p, CAR_CLASSES[c]) for p, c in zip(car_polys, colours)]
        if len(trees):
            crowns = shapely.buffer(shapely.points(trees[:, :2]), trees[:, 2], quad_segs=3)
            tree_height = rng.uniform(6, 14, len(trees))
            if water is not None:
                dry = ~shapely.intersects(water, crowns)
                crowns, trees, tree_height = crowns[dry], trees[dry], tree_height[dry]
            scene.ground += [(p, Ground.TREE) for p in crowns]
            # A crown's shadow starts at the trunk and ends one tree height away:
            # the hull of the crown outline at the trunk's foot and at the far end.
            offsets = tree_height[:, None] * self.shadow_dir[None]
            ring = np.stack([np.cos(_RING), np.sin(_RING)], axis=1)  # (k, 2)
            outline = trees[:, None, :2] + trees[:, None, 2:3] * ring[None]
            swept = np.concatenate([outline + 0.25 * offsets[:, None], outline + offsets[:, None]], axis=1)
            scene.shadows += list(shapely.convex_hull(shapely.multipoints(swept)))
        self._add_buildings(scene, water)
        return scene

    def _add_buildings(self, scene: Scene, water: shapely.Geometry | None) -> None:
        st, rng = self.st, self.rng
        if not self.parts:
            return
        counts = np.array([len(p) for p in self.parts])
        owner = np.repeat(np.arange(len(self.parts)), counts)
        local = np.concatenate(self.parts)
        place = np.asarray(self.placements)[owner]
        c, s = np.cos(place[:, 2]), np.sin(place[:, 2])
        centres = np.stack(
            [place[:, 0] + local[:, 0] * c - local[:, 1] * s, place[:, 1] + local[:, 0] * s + local[:, 1] * c],
            axis=1,
        )
        world = np.concatenate([centres, local[:, 2:]], axis=1)  # cx, cy, w, h in pixels
        keep_building = np.ones(len(self.parts), bool)
        if water is not None:
            wet = shapely.intersects(water, rect_polygons(world[:, :2], world[:, 2:], place[:, 2]))
            keep_building[np.unique(owner[wet])] = False
        # Keep only buildings that touch the tile at all.
        inside = (
            (world[:, 0] > -world[:, 2:].max(1))
            & (world[:, 0] < self.w + world[:, 2:].max(1))
            & (world[:, 1] > -world[:, 2:].max(1))
            & (world[:, 1] < self.h + world[:, 2:].max(1))
        )
        touches = np.bincount(owner, weights=inside, minlength=len(self.parts)) > 0
        keep_building &= touches
        new_id = np.cumsum(keep_building) - 1  # compact building numbering
        keep = keep_building[owner]
        owner, world, angles = new_id[owner[keep]], world[keep], place[keep, 2]
        n = int(keep_building.sum())
        scene.n_buildings = n
        if n == 0:
            return
        if 2 * n + 1 > np.iinfo(np.uint16).max:
            raise ValueError(f"{n} buildings exceed the uint16 roof-id raster; use a smaller tile")

        # Roof colours: id 2b+1 lit, 2b+2 the shaded half of a ridge roof.
        base = np.asarray(st.roofs, np.float64)[rng.integers(0, len(st.roofs), n)]
        ground_like = rng.random(n) < st.ground_like_roofs
        lookalikes = np.asarray([st.road, st.parking, st.soil], np.float64)
        base[ground_like] = lookalikes[rng.integers(0, 3, int(ground_like.sum()))]
        # Brightness varies more than hue: a shared jitter plus a small tint.
        base = np.clip(base + rng.normal(0, 12, (n, 1)) + rng.normal(0, 4, (n, 3)), 0, 255)
        colours = np.zeros((2 * n + 1, 3))
        colours[1::2] = base
        colours[2::2] = base * _SHADED_ROOF
        scene.roof_colours = colours.round().astype(np.uint8)

        # Ridge roofs: every part of a gabled building is cut into two halves
        # (in the part's own frame, so the halves rotate with it).
        gabled = (rng.random(n) < st.gable_share)[owner]
        local_parts = np.concatenate([np.zeros((len(world), 2)), world[:, 2:]], axis=1)
        lit, shaded = split_ridge(local_parts)
        roof_list: list[tuple[shapely.Geometry, int]] = []
        flat = ~gabled
        roof_list += zip(rect_polygons(world[flat, :2], world[flat, 2:], angles[flat]), 2 * owner[flat] + 1)
        for half, shade in ((lit, 1), (shaded, 2)):
            c, s = np.cos(angles[gabled]), np.sin(angles[gabled])
            off = half[gabled, :2]
            centre = world[gabled, :2] + np.stack([off[:, 0] * c - off[:, 1] * s, off[:, 0] * s + off[:, 1] * c], 1)
            roof_list += zip(rect_polygons(centre, half[gabled, 2:], angles[gabled]), 2 * owner[gabled] + shade)
        scene.roofs = [(g, int(v)) for g, v in roof_list]

        # Cast shadows: each convex part swept along the sun direction by its height.
        height = rng.uniform(*st.height_m, n)[owner]
        corners = rect_corners(world[:, :2], world[:, 2:], angles)
        swept = np.concatenate([corners, corners + (height[:, None] * self.shadow_dir[None])[:, None, :]], axis=1)
        scene.shadows += list(shapely.convex_hull(shapely.multipoints(swept)))


def make_scene(st: CityStyle, rng: np.random.Generator, height: int, width: int) -> Scene:
    """The vector scene of one ``height`` x ``width`` tile of city ``st``."""
    return _Builder(st, rng, height, width).build()
