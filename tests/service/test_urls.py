"""Remote GeoTIFFs: ``segment`` reads an https:// (here http://) URL by range requests and
gets the local file's mask; a server fetches only URLs under its allow-list, and refuses
every other with PERMISSION_DENIED before fetching anything."""

from __future__ import annotations

import http.server
import re
import shutil
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import rasterio

from service._pb import footprints_pb2 as pb
from service.api.admission import Limits
from service.client import FootprintsClient
from service.engines import open_engine
from service.errors import NotAllowed
from service.outputs.segment import segment_file
from service.store.repository import ModelStore
from service.tiling.engine import TilingEngine
from service.urls import check_allowed

from .servers import RunningServer, config


class RangeFiles(http.server.SimpleHTTPRequestHandler):
    """Files of a folder, with HTTP range requests (which http.server lacks), as object
    stores and CDNs answer them. Every request is logged on the server object."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.server.seen.append((self.command, self.path, self.headers.get("Range")))  # type: ignore[attr-defined]
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        found = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if found:
            start = int(found[1])
            end = min(int(found[2]) if found[2] else len(data) - 1, len(data) - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            body = data[start : end + 1]
        else:
            self.send_response(200)
            body = data
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()


@pytest.fixture(scope="module")
def http_files(tmp_path_factory, real_oam):
    root = tmp_path_factory.mktemp("http")
    (root / "ok").mkdir()
    (root / "secret").mkdir()
    shutil.copy(real_oam / "images" / "kampala2.tif", root / "ok" / "kampala2.tif")
    shutil.copy(real_oam / "images" / "kampala2.tif", root / "secret" / "kampala2.tif")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: RangeFiles(*a, directory=str(root)))
    httpd.seen = []  # type: ignore[attr-defined]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}", httpd, root
    httpd.shutdown()


def test_a_url_segments_to_the_local_files_mask_by_range_requests(store, http_files, tmp_path):
    base, httpd, root = http_files
    engine = TilingEngine(open_engine(ModelStore(store).get("amll"), "onnxruntime"))
    httpd.seen.clear()
    segment_file(engine, f"{base}/ok/kampala2.tif", tmp_path / "remote.tif", progress=False)
    gets = [s for s in httpd.seen if s[0] == "GET"]
    assert gets and all(r is not None for _, _, r in gets), "every read is a range request"
    segment_file(engine, root / "ok" / "kampala2.tif", tmp_path / "local.tif", progress=False)
    with rasterio.open(tmp_path / "remote.tif") as a, rasterio.open(tmp_path / "local.tif") as b:
        assert np.array_equal(a.read(1), b.read(1)) and a.transform == b.transform and a.crs == b.crs


def test_a_server_fetches_only_urls_under_its_allow_list(store, http_files, tmp_path):
    base, httpd, root = http_files
    limits = Limits(max_tiles_in_flight=4, max_raster_side=6000, max_tiles_per_client=4, allow_url_prefixes=(f"{base}/ok/",))
    s = RunningServer(config(store, limits=limits))
    try:
        with FootprintsClient(s.address) as client:
            r = client.segment_file(f"{base}/ok/kampala2.tif", tmp_path / "served.tif", model="amll", progress=False)
            assert (r.summary.width, r.summary.height) == (768, 512)
            for url in (
                f"{base}/secret/kampala2.tif",  # outside the list
                f"{base}/ok/../secret/kampala2.tif",  # climbs out of it
                f"{base}/okay/kampala2.tif",  # a sibling that shares the prefix's letters
                f"http://user@127.0.0.1:{base.rsplit(':', 1)[1]}/ok/kampala2.tif",  # userinfo
                "http://169.254.169.254/latest/meta-data/x.tif",  # the classic SSRF target
            ):
                httpd.seen.clear()
                with pytest.raises(grpc.RpcError) as refused:  # the header alone: the client reads nothing itself
                    client.stream(pb.TileHeader(model="amll", url=url), iter(()), lambda rows: None)
                assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, url
                assert httpd.seen == [], "the server fetched nothing"
    finally:
        s.stop()
    engine = TilingEngine(open_engine(ModelStore(store).get("amll"), "onnxruntime"))
    segment_file(engine, root / "ok" / "kampala2.tif", tmp_path / "local.tif", progress=False)
    with rasterio.open(tmp_path / "served.tif") as a, rasterio.open(tmp_path / "local.tif") as b:
        assert np.array_equal(a.read(1), b.read(1))


def test_the_allow_list_compares_normalised_urls():
    allowed = ("https://Data.Example.com:443/tiles/",)
    assert check_allowed("https://data.example.com/tiles/a/b.tif", allowed) == "https://data.example.com/tiles/a/b.tif"
    for url in (
        "https://data.example.com.evil.net/tiles/b.tif",
        "https://data.example.com/tilesx/b.tif",
        "ftp://data.example.com/tiles/b.tif",
    ):
        with pytest.raises((NotAllowed, ValueError)):
            check_allowed(url, allowed)
    with pytest.raises(NotAllowed, match="started without --allow-url-prefix"):
        check_allowed("https://data.example.com/tiles/b.tif", ())
