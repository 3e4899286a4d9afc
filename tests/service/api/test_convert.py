"""Messages <-> values (service/api/convert.py), on their own."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service._pb import footprints_pb2 as pb
from service.api.convert import (
    MAX_CHUNK_BYTES,
    ROWS_PER_MESSAGE,
    RowMessages,
    bytes_messages,
    georef_from_pb,
    georef_to_pb,
    window_crops,
)
from service.errors import InputError
from service.tiling.geometry import DualWindows, OverlapWindows
from service.tiling.pipeline import RowBlock


def test_a_georeference_round_trips_and_bad_ones_say_what_is_wrong():
    from rasterio.transform import from_origin

    t = from_origin(500_000.0, 4_600_000.0, 0.3, 0.3)
    crs, back = georef_from_pb(georef_to_pb(__import__("rasterio").crs.CRS.from_epsg(32616), t))
    assert crs.to_epsg() == 32616 and back == t
    for transform, words in (
        ([1.0] * 5, "needs 6 GDAL coefficients"),
        ([math.inf, 0.3, 0, 0, 0, -0.3], "not a finite number"),
        ([0, 0.3, 0, 0, 0.6, 0], "degenerate"),
    ):
        with pytest.raises(InputError, match=words):
            georef_from_pb(pb.Georeference(crs="EPSG:32616", transform=transform))
    with pytest.raises(InputError, match="CRS 'EPSG:nope' is not understood"):
        georef_from_pb(pb.Georeference(crs="EPSG:nope", transform=list(t.to_gdal())))
    assert georef_from_pb(pb.Georeference(transform=list(t.to_gdal())))[0] is None  # no CRS: kept as none


def test_window_crops_follow_the_geometry_and_refuse_wrong_byte_counts():
    rgb = np.arange(2 * 3 * 64 * 64, dtype=np.uint8).tobytes()
    overlap = window_crops(pb.InferWindowsRequest(count=2, side=64, rgb=rgb), OverlapWindows(multiple=32))
    assert [c.shape for c in overlap] == [(2, 3, 64, 64)]
    context = np.zeros(2 * 3 * 128 * 128, np.uint8).tobytes()
    dual = window_crops(pb.InferWindowsRequest(count=2, side=64, rgb=rgb, context=context), DualWindows())
    assert [c.shape for c in dual] == [(2, 3, 64, 64), (2, 3, 128, 128)]
    with pytest.raises(InputError, match="rgb holds 12288 bytes; 2 windows of side 64 need 24576"):
        window_crops(pb.InferWindowsRequest(count=2, side=64, rgb=rgb[: len(rgb) // 2]), OverlapWindows())
    with pytest.raises(InputError, match="context holds 0 bytes"):
        window_crops(pb.InferWindowsRequest(count=2, side=64, rgb=rgb), DualWindows())


def test_row_messages_split_blocks_and_carry_probabilities_only_when_asked():
    h, w = ROWS_PER_MESSAGE + 10, 7
    prob = np.linspace(0, 1, h * w, dtype=np.float32).reshape(h, w)
    block = RowBlock(40, np.where(prob >= 0.5, 255, 0).astype(np.uint8), prob)
    plain, rich = RowMessages(), RowMessages(probabilities=True)
    plain.write(block)
    rich.write(block)
    sent = plain.drain()
    assert [(m.rows.row_start, m.rows.row_count) for m in sent] == [(40, ROWS_PER_MESSAGE), (40 + ROWS_PER_MESSAGE, 10)]
    assert all(m.rows.width == w and not m.rows.probabilities for m in sent) and plain.drain() == []
    again = np.concatenate([np.frombuffer(m.rows.mask, np.uint8).reshape(m.rows.row_count, w) for m in sent])
    assert np.array_equal(again, block.mask)
    u8 = np.concatenate([np.frombuffer(m.rows.probabilities, np.uint8).reshape(m.rows.row_count, w) for m in rich.drain()])
    assert u8[0, 0] == 0 and u8[-1, -1] == 255


def test_geotiff_bytes_go_back_in_chunks_of_at_most_4_mib():
    data = bytes(range(256)) * (MAX_CHUNK_BYTES // 256 * 2 + 3)
    parts = [m.mask_geotiff_chunk for m in bytes_messages(data)]
    assert len(parts) == 3 and all(len(p) <= MAX_CHUNK_BYTES for p in parts) and b"".join(parts) == data
