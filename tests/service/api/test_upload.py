"""Uploads on their own (service/api/upload.py): header checks, chunk assembly, the idle and
total deadlines, and decoding."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service._pb import footprints_pb2 as pb
from service.api.upload import UPLOAD_TIMEOUT_PER_BYTES, check_header, decode, receive, upload_seconds
from service.errors import InputError, UploadStalled

from ...conftest import write_image
from ..servers import raw_header


def _geotiff(size: int) -> pb.TileHeader:
    return pb.TileHeader(geotiff=pb.GeoTiffInput(size_bytes=size))


def test_headers_are_checked_before_any_byte_is_taken():
    assert check_header(_geotiff(1000), 5000) == 1000
    assert check_header(raw_header(30, 20), 5000) == 30 * 20 * 3
    for header, words in (
        (pb.TileHeader(threshold=1.5, geotiff=pb.GeoTiffInput(size_bytes=10)), "threshold must be in"),
        (pb.TileHeader(mode=9, geotiff=pb.GeoTiffInput(size_bytes=10)), "unknown mode 9"),
        (pb.TileHeader(tta_passes=3, geotiff=pb.GeoTiffInput(size_bytes=10)), "tta_passes must be one of 2, 4, 8"),
        (pb.TileHeader(tta=False, tta_passes=4, geotiff=pb.GeoTiffInput(size_bytes=10)), "with TTA turned off"),
        (_geotiff(0), "declared GeoTIFF size is 0"),
        (_geotiff(10**12), "exceeds the limit"),
        (raw_header(6000, 10), "exceeds the maximum side of 5000"),
        (pb.TileHeader(), "names no raster"),
    ):
        with pytest.raises(InputError, match=words):
            check_header(header, 5000)


async def _stream(messages, gap: float = 0.0):
    for m in messages:
        if gap:
            await asyncio.sleep(gap)
        yield m


def _run(messages, idle=None, total=None, gap=0.0):
    return asyncio.run(receive(_stream(messages, gap), lambda h: check_header(h, 5000), idle, total))


def test_chunks_are_assembled_and_every_misordering_is_refused():
    header = pb.SegmentTileRequest(header=raw_header(2, 2))
    chunk = pb.SegmentTileRequest(chunk=b"\x01" * 6)
    got_header, data = _run([header, chunk, chunk])
    assert got_header.raw.width == 2 and data == b"\x01" * 12
    for messages, words in (
        ([chunk], "before the header"),
        ([header, header], "a second header"),
        ([header, chunk, chunk, chunk], "exceed the declared raster size of 12"),
        ([header, pb.SegmentTileRequest()], "empty message"),
        ([header, chunk], "stream ended after 6 of the 12 declared raster bytes"),
        ([], "no header"),
    ):
        with pytest.raises(InputError, match=words):
            _run(messages)


def test_an_upload_is_given_up_when_silent_or_too_slow():
    header = pb.SegmentTileRequest(header=raw_header(100, 100))
    drips = [pb.SegmentTileRequest(chunk=b"\0")] * 50

    async def silent():
        yield header
        await asyncio.sleep(10)
        yield drips[0]

    with pytest.raises(UploadStalled, match="no message for 0.2 s"):
        asyncio.run(receive(silent(), lambda h: check_header(h, 5000), 0.2, None))
    with pytest.raises(UploadStalled, match="upload too slow: not complete 0.3 s after its header"):
        _run([header, *drips], idle=5.0, total=0.3, gap=0.05)  # a byte every 50 ms: never idle, never done
    # The total time grows with the declared size.
    assert upload_seconds(60.0, 1000) == 60.0 and upload_seconds(60.0, 3 * UPLOAD_TIMEOUT_PER_BYTES) == 180.0
    assert upload_seconds(None, 10) is None


def test_decoding_takes_raw_rows_and_geotiff_bytes_and_refuses_what_is_neither(tmp_path):
    rgb = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    raw = decode(raw_header(5, 4), np.ascontiguousarray(rgb.transpose(1, 2, 0)).tobytes(), 5000)
    assert (raw.height, raw.width) == (4, 5) and np.array_equal(raw.source.read(0, 0, 4), rgb[:, :4, :4])
    path = write_image(tmp_path / "t.tif", np.stack([rgb[0]] * 3))
    data = path.read_bytes()
    with decode(_geotiff(len(data)), data, 5000) as tif:
        assert (tif.height, tif.width) == (4, 5) and tif.crs is not None
    with pytest.raises(InputError, match="cannot be decoded"):
        decode(_geotiff(9), b"not a tif", 5000)
    with pytest.raises(InputError, match="exceeds the maximum side of 4"):
        decode(_geotiff(len(data)), data, 4)
