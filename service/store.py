"""The versioned model store, read the way Triton reads a model repository:
``<root>/<name>/<version>/`` folders, each with a ``manifest.json`` that says what
the service needs (network, window geometry, mean RGB, inputs and outputs, file
hashes, metrics). Adding or removing a version folder is a rollout or rollback.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError, NotFoundError

MANIFEST = "manifest.json"


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_geometry(model) -> dict[str, Any]:
    """The window rules a manifest records for a :class:`SegmentationModel`."""
    from .tiler import DEFAULT_WINDOW, DUAL_WINDOW

    if model.mode == "large":
        g = model.geometry
        parity = 572 if g.is_valid(572) else g.smallest_input_for_output(388)
        return {
            "kind": "valid_unet", "depth": g.depth, "margin": g.margin, "stride": g.stride, "min_input": g.min_input,
            "default_window_px": {**DEFAULT_WINDOW, "parity": parity},
        }
    return {
        "kind": "dual_resolution", "window": DUAL_WINDOW, "context": 2 * DUAL_WINDOW, "multiple": model.net.multiple,
        "default_window_px": {"cpu": DUAL_WINDOW, "cuda": DUAL_WINDOW, "parity": DUAL_WINDOW},
    }


@dataclass(frozen=True)
class ModelEntry:
    """One version of one model in the store."""

    name: str
    version: int
    folder: Path
    manifest: dict[str, Any]

    @property
    def mode(self) -> str:
        return self.manifest["mode"]

    def path(self, filename: str) -> Path:
        return self.folder / filename

    def has(self, filename: str) -> bool:
        return (self.folder / filename).is_file()

    def geometry(self):
        """ValidGeometry of a large-window model (None for dual)."""
        if self.mode != "large":
            return None
        from training.networks.unet_valid import ValidGeometry

        return ValidGeometry(depth=self.manifest["geometry"]["depth"])

    def verify(self, filename: str) -> Path:
        """The file's path, after checking its sha256 against the manifest."""
        path = self.path(filename)
        want = self.manifest.get("files", {}).get(filename)
        if want is None or not path.is_file():
            raise NotFoundError(f"model {self.name} v{self.version} has no {filename}")
        if file_sha256(path) != want:
            raise InputError(f"{path}: sha256 does not match the manifest; the artefact was changed or damaged")
        return path


class ModelStore:
    """All models and versions under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise NotFoundError(f"{self.root}: model store folder does not exist")
        self.entries: dict[str, dict[int, ModelEntry]] = {}
        for manifest in sorted(self.root.glob(f"*/*/{MANIFEST}")):
            folder = manifest.parent
            if not folder.name.isdigit():
                continue
            data = json.loads(manifest.read_text())
            entry = ModelEntry(folder.parent.name, int(folder.name), folder, data)
            self.entries.setdefault(entry.name, {})[entry.version] = entry

    def names(self) -> list[str]:
        return sorted(self.entries)

    def get(self, name: str, version: int | None = None) -> ModelEntry:
        """A version of a model, the newest when ``version`` is None or 0."""
        versions = self.entries.get(name)
        if not versions:
            raise NotFoundError(f"no model '{name}' in {self.root}; have: {', '.join(self.names()) or 'none'}")
        if not version:
            return versions[max(versions)]
        if version not in versions:
            raise NotFoundError(f"model '{name}' has no version {version}; have: {sorted(versions)}")
        return versions[version]
