"""Remote GeoTIFFs: ``https://`` and ``s3://`` rasters read through GDAL's virtual file
systems (``/vsicurl/``, ``/vsis3/``), which fetch the header and then only the byte
ranges of the tiles a window needs, never the whole file.

A server fetches only URLs under its allow-list of prefixes, so that no client can make
it reach anything else (SSRF): the URL is parsed and normalised first, and userinfo,
dot segments and unknown schemes are refused whatever the list says.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from urllib.parse import urlsplit

from service.errors import InputError, NotAllowed

SCHEMES = ("https", "http", "s3")


def is_url(text: object) -> bool:
    """Whether ``text`` names a remote raster (``https://``, ``http://`` or ``s3://``)."""
    return isinstance(text, str) and text.split("://", 1)[0].lower() in SCHEMES and "://" in text


def normalised(url: str) -> str:
    """``url`` in the one form prefixes are compared in: scheme and host lower-case, no
    default port, the path free of dot segments. Refused: other schemes, userinfo
    (``user@host`` can hide another host), and paths that climb (``..``)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES or not parts.hostname:
        raise InputError(f"{url!r}: not an https://, http:// or s3:// URL with a host")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise NotAllowed(f"{url!r}: URLs with user information are not fetched")
    if any(seg in ("..", ".") for seg in parts.path.split("/")) or "\\" in parts.path:
        raise NotAllowed(f"{url!r}: URLs with dot segments are not fetched")
    port = parts.port
    default = {"https": 443, "http": 80}.get(scheme)
    host = parts.hostname + (f":{port}" if port is not None and port != default else "")
    path = posixpath.normpath(parts.path) if parts.path else "/"
    if parts.path.endswith("/") and not path.endswith("/"):
        path += "/"
    return f"{scheme}://{host}{path}" + (f"?{parts.query}" if parts.query else "")


def check_allowed(url: str, prefixes: Sequence[str]) -> str:
    """The normalised ``url`` if it lies under one of ``prefixes`` (each normalised the
    same way); :class:`NotAllowed` otherwise, naming nothing of the list."""
    if not prefixes:
        raise NotAllowed("this server fetches no URLs (it was started without --allow-url-prefix); stream the bytes")
    target = normalised(url)
    for prefix in prefixes:
        p = normalised(prefix)
        # A prefix is a folder or an exact file: "https://h/data/" allows "https://h/data/x.tif"
        # but "https://h/data" must not allow "https://h/database.tif".
        if target == p or target.startswith(p if p.endswith("/") else p + "/"):
            return target
    raise NotAllowed(f"{url!r} is not under any prefix this server may fetch from")


def remote_reads() -> None:
    """GDAL settings for reading remote rasters by range requests, unless the user set
    them: no listing of the file's folder on open (a request saved per file, and folders
    that cannot be listed are the rule on object stores)."""
    os.environ.setdefault("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
