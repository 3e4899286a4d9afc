"""The city layer's join across tile edges (``service.batch.layer.join_edges``), on
hand-made pieces in metres: tile ``a`` ends and tile ``b`` begins at x = 10."""

from __future__ import annotations

import shapely

from service.batch.layer import join_edges


def _joined(pieces):
    return sorted((round(g.area, 3), sorted(tiles)) for g, tiles in join_edges(pieces))


def test_a_building_cut_by_the_edge_is_joined_whole():
    pieces = [(shapely.box(4, 0, 10, 8), "a"), (shapely.box(10, 0, 14, 8), "b")]
    assert _joined(pieces) == [(80.0, ["a", "b"])]


def test_two_houses_both_tiles_separated_stay_two_though_their_wall_meets_the_edge_apart():
    # Each tile split the pair at its own wall: y = 10 in a, y = 11 in b. The upper house
    # of a shares 1 m of the edge with the lower house of b, but 9 m with b's upper one.
    pieces = [
        (shapely.box(0, 10, 10, 20), "a"),
        (shapely.box(0, 0, 10, 10), "a"),
        (shapely.box(10, 11, 20, 20), "b"),
        (shapely.box(10, 0, 20, 11), "b"),
    ]
    assert _joined(pieces) == [(190.0, ["a", "b"]), (210.0, ["a", "b"])]


def test_where_only_one_tile_separated_them_the_building_is_one():
    # a saw two houses, b one: nothing on b's side says where the wall runs, so one.
    pieces = [(shapely.box(0, 10, 10, 20), "a"), (shapely.box(0, 0, 10, 10), "a"), (shapely.box(10, 0, 20, 20), "b")]
    assert _joined(pieces) == [(400.0, ["a", "b"])]


def test_a_building_on_a_corner_of_four_tiles_is_one_and_corner_contacts_join_nothing():
    corner = [
        (shapely.box(5, 5, 10, 10), "a"),
        (shapely.box(10, 5, 15, 10), "b"),
        (shapely.box(5, 10, 10, 15), "c"),
        (shapely.box(10, 10, 15, 15), "d"),
    ]
    assert _joined(corner) == [(100.0, ["a", "b", "c", "d"])]
    # Two houses of a and d meeting at one point only stay apart.
    assert _joined([(shapely.box(0, 0, 10, 10), "a"), (shapely.box(10, 10, 20, 20), "d")]) == [(100.0, ["a"]), (100.0, ["d"])]
