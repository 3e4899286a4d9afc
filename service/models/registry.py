"""The model versions one server runs, and the lookups every RPC makes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from service.engines.base import Engine
from service.errors import NotFoundError, NotReady
from service.models.batcher import Batcher
from service.store.repository import ModelEntry


@dataclass
class LoadedModel:
    """A model version the server runs: its engine (or the remote model tier) and its
    batcher, and the seconds per window size measured here (which plans of valid-
    convolution windows follow)."""

    entry: ModelEntry
    engine: Engine
    batcher: Batcher
    window_seconds: dict[int, float] = field(default_factory=dict)
    users: int = 0  # RPCs running on it now
    retired: bool = False  # taken out of the registry; closed when its last user is done

    @property
    def kind(self) -> str:
        """What ListModels and tile summaries call its engine: "openvino", "torch", "remote"..."""
        return "remote" if self.engine.device == "remote" else self.engine.engine


class ModelRegistry:
    """Loaded versions by ``(name, version)``, the newest of each, and the default model;
    and, for every model the server means to serve, its state (``loading``, ``ready``,
    ``failed``) and the versions skipped with their reasons."""

    def __init__(self, default: str | None = None, close: Callable[[LoadedModel], None] | None = None) -> None:
        self.models: dict[tuple[str, int], LoadedModel] = {}
        self.latest: dict[str, int] = {}
        self.default = default
        self.close = close  # called for a retired model once no RPC uses it
        self.states: dict[str, str] = {}
        self.skipped: dict[str, dict[int, str]] = {}

    def add(self, model: LoadedModel) -> None:
        e = model.entry
        self.models[(e.name, e.version)] = model
        self.latest[e.name] = max(self.latest.get(e.name, 0), e.version)

    def retire(self, key: tuple[str, int]) -> LoadedModel:
        """Take a version out: new requests no longer find it; the ones running on it
        finish there, and it is closed after the last."""
        model = self.models.pop(key)
        model.retired = True
        self.latest = {}
        for n, v in self.models:
            self.latest[n] = max(self.latest.get(n, 0), v)
        if model.users == 0 and self.close:
            self.close(model)
        return model

    @contextlib.contextmanager
    def use(self, name: str, version: int = 0) -> Iterator[LoadedModel]:
        """:meth:`get`, held for the length of an RPC (a retired version stays open until then)."""
        model = self.get(name, version)
        model.users += 1
        try:
            yield model
        finally:
            model.users -= 1
            if model.retired and model.users == 0 and self.close:
                self.close(model)

    def get(self, name: str, version: int = 0) -> LoadedModel:
        """A loaded version (the newest when ``version`` is 0); the default model when ``name`` is empty."""
        if not name:
            if self.default is None:
                raise NotFoundError(
                    f"the request names no model and this server has no default; have: {', '.join(sorted(self.latest)) or 'none'}"
                )
            name = self.default
        if name not in self.latest:
            if self.states.get(name) == "loading":
                raise NotReady(f"model '{name}' is still loading; retry in a few seconds")
            if self.states.get(name) == "failed":
                reasons = "; ".join(f"v{v}: {why}" for v, why in sorted(self.skipped.get(name, {}).items()))
                raise NotFoundError(f"model '{name}' has no version that loads ({reasons or 'none in the store'})")
            raise NotFoundError(f"no model '{name}' loaded; have: {', '.join(sorted(self.latest)) or 'none'}")
        key = (name, version or self.latest[name])
        if key not in self.models:
            raise NotFoundError(f"model '{name}' has no version {version} loaded; have: {self.versions(name)}")
        return self.models[key]

    def versions(self, name: str) -> list[int]:
        return sorted(v for n, v in self.models if n == name)

    def newest(self) -> list[LoadedModel]:
        return [self.models[(n, v)] for n, v in sorted(self.latest.items())]

    def __iter__(self) -> Iterator[LoadedModel]:
        return iter(self.models.values())
