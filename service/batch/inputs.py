"""The tiles of a batch: a folder, a glob, or a manifest file listing paths."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from service.errors import InputError


@dataclass(frozen=True)
class TileInput:
    name: str  # output stem: "austin1"
    path: Path

    def fingerprint(self) -> str:
        """Size and modification time: a changed input makes its outputs stale (cheap:
        hashing thousands of 75 MB inputs on every run would cost more than it saves)."""
        st = self.path.stat()
        return f"{st.st_size}:{st.st_mtime_ns}"


def resolve(spec: str) -> list[TileInput]:
    """``DIR`` (its ``*.tif``, or ``images/*.tif`` of an Inria-style root), a glob, or a
    text file of paths (one per line, relative to the file)."""
    path = Path(spec)
    if path.is_dir():
        found = sorted(path.glob("*.tif")) or sorted((path / "images").glob("*.tif"))
    elif path.is_file() and path.suffix.lower() not in (".tif", ".tiff"):
        lines = [x.strip() for x in path.read_text().splitlines() if x.strip() and not x.startswith("#")]
        found = [p if p.is_absolute() else path.parent / p for p in map(Path, lines)]
    else:
        found = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec)))
    if not found:
        raise InputError(f"--input {spec}: no tiles found (a folder of .tif, a glob, or a file listing them)")
    names = [p.stem for p in found]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"--input {spec}: tiles share names {dupes[:5]}; their outputs would overwrite each other")
    return [TileInput(p.stem, p) for p in found]
