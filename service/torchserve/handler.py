"""The TorchServe handler of a footprints archive: window inference by our own PyTorch
engine (``TorchEngine``: ``model_inputs``, uint8 crops in, building probabilities out).

TorchServe imports this file by itself, so it names one class (its rule) and reaches
our code through the installed ``footprints`` package. The archive holds the version's
exported program (``model.pt2``) and its ``manifest.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from service.engines.pytorch import TorchEngine
from service.store.manifest import Manifest
from service.store.repository import ModelEntry
from service.torchserve.wire import decode_windows, encode_probabilities


class FootprintsWindowHandler:
    def __init__(self) -> None:
        self.engine: TorchEngine | None = None
        self.initialized = False

    def initialize(self, context: Any) -> None:
        folder = Path(context.system_properties["model_dir"])
        manifest = Manifest.read(folder)
        # The archive's folder is a store version: the program is sha256-checked on load.
        self.engine = TorchEngine.load(ModelEntry(manifest.name, manifest.version, folder, manifest), "cpu")
        self.initialized = True

    def handle(self, data: list[dict], context: Any) -> list[bytes]:
        """One answer per request of TorchServe's batch; requests whose windows share a
        shape run in one call (TorchServe's batching, then ours within it)."""
        requests = [decode_windows(bytes(row.get("data") or row["body"])) for row in data]
        answers: list[bytes] = [b""] * len(requests)
        by_shape: dict[tuple, list[int]] = {}
        for i, crops in enumerate(requests):
            by_shape.setdefault(tuple(c.shape[1:] for c in crops), []).append(i)
        assert self.engine is not None, "TorchServe calls initialize first"
        for members in by_shape.values():
            stacked = [np.concatenate([requests[i][k] for i in members]) for k in range(len(requests[members[0]]))]
            probs = self.engine.infer(stacked)
            start = 0
            for i in members:
                n = len(requests[i][0])
                answers[i] = encode_probabilities(probs[start : start + n])
                start += n
        return answers
