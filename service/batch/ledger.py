"""The batch's record of finished tiles (``<out>/batch-manifest.json``): per tile, the
model version, the input's fingerprint and a sha256 of each output. A rerun skips a
tile whose record matches and whose outputs are still there, whole; it redoes those
that are missing, stale (another model version, a changed input) or damaged.

Outputs are written to temporary names and renamed when complete, and a tile is
recorded only after that, so a killed run never leaves a half-written mask that looks
finished. The record itself is replaced atomically after every tile."""

from __future__ import annotations

import json
import os
from pathlib import Path

from service.store.repository import file_sha256

NAME = "batch-manifest.json"


class Ledger:
    def __init__(self, out: Path) -> None:
        self.path = out / NAME
        self.tiles: dict[str, dict] = json.loads(self.path.read_text())["tiles"] if self.path.exists() else {}

    def done(self, name: str, model: str, fingerprint: str, out: Path) -> bool:
        """Finished with this model version and input, and every output intact."""
        r = self.tiles.get(name)
        if r is None or r.get("model") != model or r.get("input") != fingerprint:
            return False
        return all((out / f).is_file() and file_sha256(out / f) == h for f, h in r["outputs"].items())

    def record(self, name: str, model: str, fingerprint: str, outputs: dict[str, str], extra: dict) -> None:
        self.tiles[name] = {"model": model, "input": fingerprint, "outputs": outputs, **extra}
        self.save()

    def forget(self, names: list[str]) -> None:
        """No longer count these as done (one write for all of them)."""
        if [self.tiles.pop(n) for n in names if n in self.tiles]:
            self.save()

    def save(self) -> None:
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps({"tiles": self.tiles}, indent=1, sort_keys=True))
        os.replace(partial, self.path)
