"""An ensemble version on any engine: each batch of windows runs through every member
(each loaded on the engine asked for) and their probabilities are averaged with the
manifest's weights (:mod:`service.store.ensemble`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from service.engines.base import Bundle, Engine
from service.store.ensemble import members_of
from service.store.repository import ModelEntry, ModelStore


class EnsembleEngine(Engine):
    def __init__(self, members: list[tuple[Engine, float]], **described: Any) -> None:
        """``members``: open engines and their weights; ``described``: :class:`Engine`'s
        arguments (a store version's, from :meth:`Engine.describe`)."""
        super().__init__(**described)
        self.members = members
        self.engine = members[0][0].engine  # what ListModels reports: the members' engine

    @classmethod
    def of(cls, engines: list[Engine], name: str = "ensemble") -> EnsembleEngine:
        """Equal-weight members already open (e.g. training runs, not store versions).
        They must agree on geometry and resolution; the threshold is the first member's."""
        first = engines[0]
        if any(e.geometry != first.geometry or e.resolution_m != first.resolution_m for e in engines[1:]):
            raise ValueError(f"{name}: members differ in window geometry or resolution; their probabilities do not align")
        return cls(
            [(e, 1.0 / len(engines)) for e in engines],
            name=name, device=first.device, geometry=first.geometry,
            window_bytes=lambda n: max(e.window_bytes(n) for e in engines),  # members run one after another
            precision=first.precision, resolution_m=first.resolution_m, threshold=first.threshold,
        )  # fmt: skip

    def infer(self, inputs: list[np.ndarray]) -> np.ndarray:
        out: np.ndarray | None = None
        for engine, weight in self.members:
            p = engine.infer(inputs) * np.float32(weight)
            out = p if out is None else out + p
        assert out is not None
        return out

    def close(self) -> None:
        for engine, _ in self.members:
            engine.close()


def open_ensemble(bundle: Bundle, open_member: Callable[[ModelEntry], Engine]) -> EnsembleEngine:
    """``bundle``'s members from the store it lies in, each opened by ``open_member``
    (the engine the ensemble was asked for)."""
    assert isinstance(bundle, ModelEntry)
    store = ModelStore(bundle.folder.parent.parent)
    members = [(open_member(entry), w) for entry, w in members_of(bundle, store)]
    first = members[0][0]
    return EnsembleEngine(members, **Engine.describe(bundle, first.device, first.precision))
