"""The tiles of a batch: a folder, a glob, or a manifest file listing paths."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from service.errors import InputError
from service.urls import is_url


@dataclass(frozen=True)
class TileInput:
    name: str  # output stem: "austin1"
    path: Path | str  # a file, or an https:// or s3:// URL (read by range requests)

    def fingerprint(self) -> str:
        """Size and modification time: a changed input makes its outputs stale (cheap:
        hashing thousands of 75 MB inputs on every run would cost more than it saves).
        A URL is its own fingerprint: a remote file changed in place is not noticed."""
        if isinstance(self.path, str):
            return f"url:{self.path}"
        st = self.path.stat()
        return f"{st.st_size}:{st.st_mtime_ns}"


def _stem(p: Path | str) -> str:
    return PurePosixPath(urlsplit(p).path).stem if isinstance(p, str) else p.stem


def resolve(spec: str) -> list[TileInput]:
    """``DIR`` (its ``*.tif``, or ``images/*.tif`` of an Inria-style root), a glob, a URL,
    or a text file of paths and URLs (one per line, paths relative to the file)."""
    path = Path(spec)
    found: list[Path | str]
    if is_url(spec):
        found = [spec]
    elif path.is_dir():
        found = [*(sorted(path.glob("*.tif")) or sorted((path / "images").glob("*.tif")))]
    elif path.is_file() and path.suffix.lower() not in (".tif", ".tiff"):
        lines = [x.strip() for x in path.read_text().splitlines() if x.strip() and not x.startswith("#")]
        found = [x if is_url(x) else (Path(x) if Path(x).is_absolute() else path.parent / x) for x in lines]
    else:
        found = [*sorted(Path(p) for p in glob.glob(os.path.expanduser(spec)))]
    if not found:
        raise InputError(f"--input {spec}: no tiles found (a folder of .tif, a glob, a URL, or a file listing them)")
    names = [_stem(p) for p in found]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"--input {spec}: tiles share names {dupes[:5]}; their outputs would overwrite each other")
    return [TileInput(_stem(p), p) for p in found]
