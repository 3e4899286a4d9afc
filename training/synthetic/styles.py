"""City styles for synthetic Inria-like tiles.

Each city has its own density, building sizes and shapes, roof palette, vegetation
and sun, so that training on some cities and testing on others measures
generalisation as the benchmark does. Test cities are variations on the train
cities' kinds of place (suburb, dense centre, countryside, industry, alpine
village), never copies of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.errors import InputError

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class CityStyle:
    """Everything that makes one synthetic city look like itself. Lengths in metres."""

    name: str
    split: str  # "train" or "test"
    epsg: int  # UTM zone of the city's projected CRS
    origin_m: tuple[float, float]  # easting, northing of the city's first tile corner
    block_m: tuple[float, float]  # street block edge length range
    road_width_m: tuple[float, float]
    grid_rotation_deg: float  # street grid rotated by up to this much per tile
    parcel_m: tuple[float, float]  # parcel edge length range inside built blocks
    setback_m: float  # gap between road edge and the first parcel
    building_fill: float  # share of parcels that hold a building
    building_scale: tuple[float, float]  # footprint side as a share of its parcel side
    shape_weights: dict[str, float]  # rect / L / U / courtyard
    free_orientation: float  # share of buildings not aligned with the street grid
    gable_share: float  # share of buildings with a two-sided (ridge) roof
    height_m: tuple[float, float]
    roofs: tuple[RGB, ...]
    land_use: dict[str, float]  # built / park / parking / soil blocks
    yard: str  # ground of built blocks: "grass", "dry_grass" or "soil"
    grass: RGB
    dry_grass: RGB
    soil: RGB
    road: RGB
    parking: RGB
    water: RGB
    tree: RGB
    trees_per_ha_park: float
    trees_per_ha_yard: float
    tree_radius_m: tuple[float, float]
    water_chance: float  # chance that a tile has a lake or a river
    sun_azimuth_deg: float  # direction shadows fall towards, clockwise from image up
    shadow_per_m: float  # shadow length per metre of height (1 / tan(sun elevation))
    # Share of roofs (tar, gravel, concrete) coloured like the city's road, parking or
    # soil: colour alone must not give buildings away.
    ground_like_roofs: float = 0.25


_SHAPES_SUBURB = {"rect": 0.6, "L": 0.3, "U": 0.07, "courtyard": 0.03}
_SHAPES_CENTRE = {"rect": 0.35, "L": 0.25, "U": 0.2, "courtyard": 0.2}
_SHAPES_RURAL = {"rect": 0.75, "L": 0.2, "U": 0.05, "courtyard": 0.0}
_SHAPES_INDUSTRY = {"rect": 0.7, "L": 0.2, "U": 0.1, "courtyard": 0.0}

CITY_STYLES: tuple[CityStyle, ...] = (
    # ---- train cities -------------------------------------------------------
    CityStyle(
        name="ashford",
        split="train",
        epsg=32614,
        origin_m=(620_000, 3_350_000),
        block_m=(90, 140),
        road_width_m=(9, 14),
        grid_rotation_deg=12,
        parcel_m=(22, 30),
        setback_m=5,
        building_fill=0.8,
        building_scale=(0.45, 0.7),
        shape_weights=_SHAPES_SUBURB,
        free_orientation=0.05,
        gable_share=0.8,
        height_m=(5, 9),
        roofs=((150, 70, 55), (120, 110, 105), (90, 85, 90), (170, 150, 125), (70, 70, 80)),
        land_use={"built": 0.8, "park": 0.1, "parking": 0.05, "soil": 0.05},
        yard="grass",
        grass=(95, 125, 70),
        dry_grass=(140, 140, 95),
        soil=(150, 130, 105),
        road=(105, 105, 105),
        parking=(85, 85, 90),
        water=(45, 70, 85),
        tree=(45, 75, 40),
        trees_per_ha_park=90,
        trees_per_ha_yard=18,
        tree_radius_m=(2.5, 5.0),
        water_chance=0.2,
        sun_azimuth_deg=320,
        shadow_per_m=0.9,
    ),
    CityStyle(
        name="brookline",
        split="train",
        epsg=32616,
        origin_m=(440_000, 4_630_000),
        block_m=(70, 110),
        road_width_m=(12, 20),
        grid_rotation_deg=4,
        parcel_m=(25, 45),
        setback_m=2,
        building_fill=0.92,
        building_scale=(0.7, 0.92),
        shape_weights=_SHAPES_CENTRE,
        free_orientation=0.0,
        gable_share=0.1,
        height_m=(12, 40),
        roofs=((110, 110, 115), (160, 160, 160), (80, 80, 85), (135, 120, 110), (185, 180, 170)),
        land_use={"built": 0.85, "park": 0.05, "parking": 0.08, "soil": 0.02},
        yard="soil",
        grass=(85, 115, 65),
        dry_grass=(125, 125, 90),
        soil=(125, 120, 110),
        road=(75, 75, 78),
        parking=(95, 95, 98),
        water=(40, 60, 75),
        tree=(40, 70, 40),
        trees_per_ha_park=120,
        trees_per_ha_yard=4,
        tree_radius_m=(2.0, 4.0),
        water_chance=0.3,
        sun_azimuth_deg=330,
        shadow_per_m=0.7,
    ),
    CityStyle(
        name="cedarvale",
        split="train",
        epsg=32610,
        origin_m=(510_000, 5_290_000),
        block_m=(180, 320),
        road_width_m=(6, 9),
        grid_rotation_deg=35,
        parcel_m=(35, 60),
        setback_m=10,
        building_fill=0.35,
        building_scale=(0.25, 0.5),
        shape_weights=_SHAPES_RURAL,
        free_orientation=0.35,
        gable_share=0.7,
        height_m=(4, 8),
        roofs=((100, 100, 100), (140, 60, 50), (60, 70, 60), (170, 170, 165), (110, 85, 60)),
        land_use={"built": 0.45, "park": 0.35, "parking": 0.02, "soil": 0.18},
        yard="grass",
        grass=(80, 110, 60),
        dry_grass=(130, 125, 85),
        soil=(135, 115, 90),
        road=(120, 115, 105),
        parking=(110, 110, 105),
        water=(35, 55, 60),
        tree=(35, 60, 35),
        trees_per_ha_park=160,
        trees_per_ha_yard=30,
        tree_radius_m=(3.0, 6.0),
        water_chance=0.4,
        sun_azimuth_deg=300,
        shadow_per_m=1.2,
    ),
    CityStyle(
        name="dunmore",
        split="train",
        epsg=32617,
        origin_m=(580_000, 4_480_000),
        block_m=(140, 240),
        road_width_m=(12, 18),
        grid_rotation_deg=8,
        parcel_m=(60, 110),
        setback_m=8,
        building_fill=0.75,
        building_scale=(0.5, 0.85),
        shape_weights=_SHAPES_INDUSTRY,
        free_orientation=0.0,
        gable_share=0.05,
        height_m=(8, 15),
        roofs=((190, 190, 190), (150, 155, 160), (100, 105, 110), (210, 205, 195), (90, 110, 130)),
        land_use={"built": 0.6, "park": 0.05, "parking": 0.2, "soil": 0.15},
        yard="soil",
        grass=(100, 120, 75),
        dry_grass=(150, 145, 105),
        soil=(160, 145, 120),
        road=(90, 90, 92),
        parking=(70, 70, 74),
        water=(50, 70, 80),
        tree=(50, 80, 45),
        trees_per_ha_park=60,
        trees_per_ha_yard=3,
        tree_radius_m=(2.0, 4.0),
        water_chance=0.15,
        sun_azimuth_deg=340,
        shadow_per_m=0.8,
    ),
    CityStyle(
        name="elmstead",
        split="train",
        epsg=32632,
        origin_m=(660_000, 5_240_000),
        block_m=(110, 200),
        road_width_m=(5, 8),
        grid_rotation_deg=45,
        parcel_m=(20, 32),
        setback_m=4,
        building_fill=0.55,
        building_scale=(0.45, 0.75),
        shape_weights=_SHAPES_SUBURB,
        free_orientation=0.4,
        gable_share=0.9,
        height_m=(6, 12),
        roofs=((70, 60, 60), (120, 60, 45), (95, 95, 100), (55, 55, 60), (150, 110, 80)),
        land_use={"built": 0.55, "park": 0.3, "parking": 0.03, "soil": 0.12},
        yard="grass",
        grass=(90, 130, 60),
        dry_grass=(135, 145, 85),
        soil=(120, 105, 85),
        road=(115, 115, 110),
        parking=(100, 100, 100),
        water=(45, 80, 90),
        tree=(30, 60, 30),
        trees_per_ha_park=200,
        trees_per_ha_yard=25,
        tree_radius_m=(2.5, 5.5),
        water_chance=0.35,
        sun_azimuth_deg=310,
        shadow_per_m=1.4,
    ),
    # ---- test cities (never trained on) --------------------------------------
    CityStyle(
        name="fairhaven",
        split="test",
        epsg=32610,
        origin_m=(540_000, 5_400_000),
        block_m=(100, 160),
        road_width_m=(8, 12),
        grid_rotation_deg=20,
        parcel_m=(20, 28),
        setback_m=6,
        building_fill=0.75,
        building_scale=(0.45, 0.7),
        shape_weights=_SHAPES_SUBURB,
        free_orientation=0.1,
        gable_share=0.75,
        height_m=(5, 9),
        roofs=((85, 90, 100), (130, 125, 120), (160, 80, 65), (60, 60, 65), (175, 165, 150)),
        land_use={"built": 0.75, "park": 0.15, "parking": 0.05, "soil": 0.05},
        yard="dry_grass",
        grass=(90, 120, 75),
        dry_grass=(125, 135, 90),
        soil=(140, 125, 100),
        road=(100, 100, 102),
        parking=(90, 90, 92),
        water=(40, 65, 80),
        tree=(40, 70, 45),
        trees_per_ha_park=110,
        trees_per_ha_yard=22,
        tree_radius_m=(2.5, 5.0),
        water_chance=0.3,
        sun_azimuth_deg=315,
        shadow_per_m=1.0,
    ),
    CityStyle(
        name="glenwood",
        split="test",
        epsg=32616,
        origin_m=(520_000, 4_340_000),
        block_m=(120, 220),
        road_width_m=(6, 10),
        grid_rotation_deg=30,
        parcel_m=(25, 40),
        setback_m=8,
        building_fill=0.55,
        building_scale=(0.35, 0.6),
        shape_weights=_SHAPES_RURAL,
        free_orientation=0.25,
        gable_share=0.7,
        height_m=(5, 9),
        roofs=((115, 115, 120), (95, 70, 60), (150, 150, 145), (70, 75, 85), (135, 95, 75)),
        land_use={"built": 0.55, "park": 0.35, "parking": 0.03, "soil": 0.07},
        yard="grass",
        grass=(75, 110, 55),
        dry_grass=(120, 130, 80),
        soil=(130, 110, 90),
        road=(110, 108, 105),
        parking=(100, 100, 100),
        water=(35, 60, 65),
        tree=(30, 58, 32),
        trees_per_ha_park=220,
        trees_per_ha_yard=40,
        tree_radius_m=(3.0, 6.0),
        water_chance=0.35,
        sun_azimuth_deg=305,
        shadow_per_m=1.1,
    ),
    CityStyle(
        name="harbourside",
        split="test",
        epsg=32610,
        origin_m=(550_000, 4_180_000),
        block_m=(75, 120),
        road_width_m=(11, 18),
        grid_rotation_deg=6,
        parcel_m=(22, 40),
        setback_m=2,
        building_fill=0.9,
        building_scale=(0.65, 0.9),
        shape_weights=_SHAPES_CENTRE,
        free_orientation=0.0,
        gable_share=0.2,
        height_m=(9, 30),
        roofs=((140, 140, 145), (170, 165, 160), (95, 95, 100), (150, 110, 90), (200, 200, 195)),
        land_use={"built": 0.85, "park": 0.06, "parking": 0.07, "soil": 0.02},
        yard="soil",
        grass=(90, 120, 70),
        dry_grass=(135, 130, 95),
        soil=(135, 130, 120),
        road=(85, 85, 88),
        parking=(100, 100, 104),
        water=(35, 55, 75),
        tree=(45, 75, 45),
        trees_per_ha_park=100,
        trees_per_ha_yard=5,
        tree_radius_m=(2.0, 4.0),
        water_chance=0.6,
        sun_azimuth_deg=325,
        shadow_per_m=0.8,
    ),
    CityStyle(
        name="ironbridge",
        split="test",
        epsg=32617,
        origin_m=(600_000, 4_620_000),
        block_m=(160, 260),
        road_width_m=(12, 16),
        grid_rotation_deg=15,
        parcel_m=(55, 100),
        setback_m=10,
        building_fill=0.7,
        building_scale=(0.5, 0.8),
        shape_weights=_SHAPES_INDUSTRY,
        free_orientation=0.0,
        gable_share=0.1,
        height_m=(7, 14),
        roofs=((175, 180, 185), (130, 135, 140), (200, 195, 185), (80, 90, 100), (160, 100, 80)),
        land_use={"built": 0.55, "park": 0.05, "parking": 0.22, "soil": 0.18},
        yard="soil",
        grass=(95, 115, 70),
        dry_grass=(145, 140, 100),
        soil=(150, 140, 120),
        road=(95, 95, 95),
        parking=(75, 75, 78),
        water=(45, 65, 75),
        tree=(45, 75, 45),
        trees_per_ha_park=70,
        trees_per_ha_yard=3,
        tree_radius_m=(2.0, 4.0),
        water_chance=0.2,
        sun_azimuth_deg=335,
        shadow_per_m=0.9,
    ),
    CityStyle(
        name="juniper",
        split="test",
        epsg=32632,
        origin_m=(690_000, 5_180_000),
        block_m=(120, 220),
        road_width_m=(5, 8),
        grid_rotation_deg=40,
        parcel_m=(22, 34),
        setback_m=5,
        building_fill=0.5,
        building_scale=(0.45, 0.75),
        shape_weights=_SHAPES_SUBURB,
        free_orientation=0.45,
        gable_share=0.85,
        height_m=(6, 12),
        roofs=((80, 65, 60), (105, 105, 110), (140, 70, 50), (60, 62, 70), (165, 125, 90)),
        land_use={"built": 0.5, "park": 0.35, "parking": 0.03, "soil": 0.12},
        yard="grass",
        grass=(85, 125, 65),
        dry_grass=(130, 140, 90),
        soil=(125, 110, 90),
        road=(120, 118, 112),
        parking=(105, 105, 102),
        water=(40, 75, 85),
        tree=(32, 62, 34),
        trees_per_ha_park=190,
        trees_per_ha_yard=28,
        tree_radius_m=(2.5, 5.5),
        water_chance=0.3,
        sun_azimuth_deg=300,
        shadow_per_m=1.5,
    ),
)

STYLES_BY_NAME = {s.name: s for s in CITY_STYLES}


def style(name: str) -> CityStyle:
    """The style of a named city; an unknown name lists the known ones."""
    try:
        return STYLES_BY_NAME[name]
    except KeyError:
        raise InputError(f"unknown synthetic city '{name}'; known: {', '.join(STYLES_BY_NAME)}") from None
