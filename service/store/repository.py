"""The versioned model store, read the way Triton reads a model repository:
``<root>/<name>/<version>/`` folders, each with a ``manifest.json`` that says what
the service needs (network, window geometry, mean RGB, inputs and outputs, file
hashes, metrics). Adding or removing a version folder is a rollout or rollback.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from service.errors import InputError, NotFoundError
from service.store.manifest import CHECKPOINT, MANIFEST, ONNX, PROGRAM, Manifest, WindowMemory
from service.tiling.geometry import Geometry

# The store's default model: one line naming it, read by `serve` and `segment` alike.
DEFAULT_FILE = "DEFAULT"
__all__ = ["CHECKPOINT", "DEFAULT_FILE", "MANIFEST", "ONNX", "PROGRAM", "ModelEntry", "ModelStore", "Unreadable", "file_sha256"]


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelEntry:
    """One version of one model in the store: its folder and its manifest."""

    name: str
    version: int
    folder: Path
    manifest: Manifest

    @property
    def geometry(self) -> Geometry:
        """How it is cut into windows, as its manifest records."""
        return self.manifest.geometry

    @property
    def memory(self) -> WindowMemory:
        """What one window costs, as recorded at export."""
        return self.manifest.window_memory

    def window_bytes(self, window: int) -> int:
        return self.manifest.window_memory.bytes(window)

    def path(self, filename: str) -> Path:
        return self.folder / filename

    def verify(self, filename: str) -> Path:
        """The file's path, after checking its sha256 against the manifest."""
        path = self.path(filename)
        want = self.manifest.files.get(filename)
        if want is None or not path.is_file():
            raise NotFoundError(f"model {self.name} v{self.version} has no {filename}")
        if file_sha256(path) != want:
            raise InputError(f"{path}: sha256 does not match the manifest; the artefact was changed or damaged")
        return path


def next_version(store: Path, name: str) -> int:
    """The version number a new version of ``name`` gets (any numbered folder counts,
    readable or not, so a damaged version's number is never reused)."""
    versions = [int(p.name) for p in (Path(store) / name).glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


@dataclass(frozen=True)
class Unreadable:
    """A version folder whose manifest cannot be used: which file, and why."""

    name: str
    version: int
    path: Path
    reason: str


def read_entry(name: str, folder: Path) -> ModelEntry:
    """A version folder's entry (an :class:`InputError` naming the file and what is wrong)."""
    return ModelEntry(name, int(folder.name), folder, Manifest.read(folder))


class ModelStore:
    """All models and versions under ``root``. A version whose manifest cannot be used
    is left out and listed in ``unreadable``, so one damaged folder costs only itself."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise NotFoundError(f"{self.root}: model store folder does not exist")
        self.entries: dict[str, dict[int, ModelEntry]] = {}
        self.unreadable: list[Unreadable] = []
        for manifest in sorted(self.root.glob(f"*/*/{MANIFEST}")):
            folder = manifest.parent
            if not folder.name.isdigit():
                continue
            try:
                entry = read_entry(folder.parent.name, folder)
            except InputError as e:
                self.unreadable.append(Unreadable(folder.parent.name, int(folder.name), manifest, str(e)))
                continue
            self.entries.setdefault(entry.name, {})[entry.version] = entry

    def names(self) -> list[str]:
        return sorted(self.entries)

    def default_name(self) -> str:
        """The model a request that names none gets: the one in ``DEFAULT``, or the only
        model of a one-model store."""
        path = self.root / DEFAULT_FILE
        if path.is_file():
            name = path.read_text().strip()
            if name not in self.entries:
                raise NotFoundError(
                    f"{path} names model '{name}', which is not in the store; have: {', '.join(self.names()) or 'none'}"
                )
            return name
        if len(self.entries) == 1:
            return self.names()[0]
        raise NotFoundError(
            f"{self.root} names no default model (write its name into {path}); say which: {', '.join(self.names()) or 'none'}"
        )

    def set_default(self, name: str) -> None:
        self.get(name)
        (self.root / DEFAULT_FILE).write_text(name + "\n")

    def find(self, spec: str | None) -> ModelEntry:
        """A version as the command line names it: ``NAME``, ``NAME:VERSION``, or
        nothing (the default model); the newest version when none is given."""
        name, _, version = (spec or "").partition(":")
        if version and not version.isdigit():
            raise InputError(f"model {spec!r}: the version after ':' must be a whole number")
        return self.get(name or None, int(version) if version else None)

    def get(self, name: str | None = None, version: int | None = None) -> ModelEntry:
        """A version of a model, the newest when ``version`` is None or 0; the default
        model when ``name`` is empty."""
        name = name or self.default_name()
        versions = self.entries.get(name)
        if not versions:
            raise NotFoundError(f"no model '{name}' in {self.root}; have: {', '.join(self.names()) or 'none'}")
        if not version:
            return versions[max(versions)]
        if version not in versions:
            raise NotFoundError(f"model '{name}' has no version {version}; have: {sorted(versions)}")
        return versions[version]
