"""The model manager: store -> engine -> batcher -> registry, in the background, and hot
reload.

* **Loading** runs off the event loop, one version at a time, the default model first,
  while the server already answers (health ``NOT_SERVING``, a model not yet loaded
  ``UNAVAILABLE``). Each model's readiness is a grpc.health.v1 service of its own
  (``footprints.v1.Segmentation/<name>``); the server's overall status turns
  ``SERVING`` once the default model is ready.
* **Faults stay with their version**: a version whose manifest cannot be read, whose
  files fail their sha256 check or whose engine will not load is skipped with one log
  line naming the file and the reason (and counted, and listed by ``ListModels``);
  the model's next older version serves instead. A skipped version is tried again
  when its folder changes.
* **Hot reload** (SIGHUP, ``--watch-store``) serves the newest version that loads and
  retires the others only once it has loaded: a half-copied new version never takes
  the working one down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from service._pb import footprints_pb2 as pb
from service._pb import footprints_pb2_grpc as pb_grpc
from service.engines import open_engine
from service.engines.base import Engine
from service.engines.timings import cached_seconds, needs_measuring
from service.errors import InputError, NotFoundError
from service.metrics import Metrics
from service.models.batcher import FAIR_EVERY, Batcher
from service.models.budget import MemoryBudget
from service.models.registry import LoadedModel, ModelRegistry
from service.remote.servers import TORCHSERVE, ModelServers, RemoteEngine
from service.store.repository import MANIFEST, ModelEntry, ModelStore

if TYPE_CHECKING:
    from service.api.server import ServerConfig

LOG = logging.getLogger("footprints")

# A version ready to serve: its entry, engine, model-call threads and window budget.
Opened = tuple[ModelEntry, Engine, int, MemoryBudget | None]
# How long a front end waits for its model servers to have a model loaded.
REMOTE_READY_S = 120.0
SERVICE = pb.DESCRIPTOR.services_by_name["Segmentation"].full_name


def model_service(name: str) -> str:
    """The grpc.health.v1 service name of one model's readiness."""
    return f"{SERVICE}/{name}"


def _signature(folder: Path) -> tuple:
    """What changes when a version folder's files do (a skipped version is retried then)."""
    try:
        return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()))
    except OSError:
        return ()


@dataclass
class _Skip:
    signature: tuple
    reason: str


def _reason(e: BaseException, entry: ModelEntry) -> str:
    """One line that names the file (or folder) and what was wrong."""
    text = " ".join(str(e).split()) or type(e).__name__
    if len(text) > 300:
        text = text[:300] + "..."
    return text if str(entry.folder) in text else f"{entry.folder}: {text}"


class ModelManager:
    """Keeps the registry serving what the store holds (see the module)."""

    def __init__(
        self,
        cfg: ServerConfig,
        registry: ModelRegistry,
        metrics: Metrics,
        budget: MemoryBudget,
        set_health: Callable[[str, bool], Awaitable[None]],
        servers: ModelServers | None = None,
    ) -> None:
        self.cfg, self.registry, self.metrics, self.budget = cfg, registry, metrics, budget
        self.servers = servers
        self._set_health = set_health
        self._skips: dict[tuple[str, int], _Skip] = {}
        self._lock = asyncio.Lock()
        self.ready = asyncio.Event()  # the server's overall status is SERVING
        self.settled = asyncio.Event()  # the first pass over the store is done

    # ---- one version ----------------------------------------------------------
    def _open(self, entry: ModelEntry) -> Opened:
        """A version's engine (blocking: files are verified, engines load here)."""
        if self.servers is not None:
            # Memory of remote windows is the model servers' business (their own budgets).
            info = self._remote_info(entry.name)
            return entry, RemoteEngine(self.servers, entry, info), len(self.servers.addresses), None
        return entry, open_engine(entry, self.cfg.backend, precision=self.cfg.precision), 1, self.budget

    def _add(self, opened: Opened) -> LoadedModel:
        """Put an opened version in service (on the event loop: the batcher lives there)."""
        entry, engine, threads, budget = opened
        cfg = self.cfg
        batcher = Batcher(
            engine,
            cfg.limits.max_batch,
            cfg.max_queue_delay_ms / 1000,
            cfg.max_queued_windows,
            self.metrics,
            label=f"{entry.name}/{entry.version}",
            threads=threads,
            budget=budget,
            fair_every=1 if cfg.window_order == "arrival" else FAIR_EVERY,
        )
        model = LoadedModel(entry, engine, batcher)
        if needs_measuring(entry) and cfg.backend == "auto" and self.servers is None:
            model.window_seconds = cached_seconds(entry, engine.engine, engine.precision)
        self.registry.add(model)
        self.metrics.model_loaded.labels(entry.name, str(entry.version), model.kind, entry.geometry.mode).set(1)
        return model

    async def close(self, model: LoadedModel) -> None:
        await model.batcher.close()
        model.engine.close()
        e = model.entry
        self.metrics.model_loaded.remove(e.name, str(e.version), model.kind, e.geometry.mode)
        LOG.warning("model %s v%d unloaded", e.name, e.version)

    def _remote_info(self, name: str) -> pb.ModelInfo:
        """What the first of our own model servers to answer says of the model; with
        TorchServe alone, the store's manifest (TorchServe runs the exported program, in
        fp32). Model servers still loading it are waited for."""
        ours = [a for a in self.cfg.model_servers if not a.startswith(TORCHSERVE)]
        if not ours:
            entry = ModelStore(self.cfg.store).get(name)
            return pb.ModelInfo(name=name, version=entry.version, backend="torchserve", precision="fp32",
                                default_window=entry.geometry.default_window("cpu"))  # fmt: skip
        assert self.servers is not None
        import time

        deadline = time.monotonic() + REMOTE_READY_S
        while True:
            problems = []
            for address in ours:
                try:
                    stub = pb_grpc.SegmentationStub(self.servers.channels[address])
                    # A short deadline: an unreachable model server is said at once.
                    return stub.GetModel(pb.GetModelRequest(name=name), timeout=10, metadata=self.cfg.link.security.metadata())
                except grpc.RpcError as e:
                    problems.append((e.code(), f"{address}: {e.code().name} ({e.details()})"))
            loading = any(code == grpc.StatusCode.UNAVAILABLE and "still loading" in text for code, text in problems)
            if not loading or time.monotonic() > deadline:
                raise InputError(f"no model server answered for {name}: {'; '.join(p for _, p in problems)}")
            time.sleep(0.5)  # a model server still loading it

    # ---- the store --------------------------------------------------------------
    def _skip(self, name: str, version: int, signature: tuple, reason: str) -> None:
        self._skips[(name, version)] = _Skip(signature, reason)
        self.registry.skipped.setdefault(name, {})[version] = reason
        self.metrics.versions_skipped.labels(name).inc()
        LOG.warning("model %s v%d skipped: %s", name, version, reason)

    def _unskip(self, name: str, version: int) -> None:
        self._skips.pop((name, version), None)
        self.registry.skipped.get(name, {}).pop(version, None)

    def _wanted(self, store: ModelStore) -> tuple[list[str], str | None]:
        """The models to serve (the default first) and the default model."""
        present = set(store.names()) | {u.name for u in store.unreadable}
        names = list(self.cfg.models) if self.cfg.models else sorted(present)
        try:
            default: str | None = store.default_name()
        except NotFoundError:
            default = None
        # A server without the store's default serves its only model, or asks for names.
        if default not in names:
            default = names[0] if len(names) == 1 else None
        return sorted(names, key=lambda n: n != default), default

    async def _settle(self, name: str, store: ModelStore) -> None:
        """Serve the newest version of ``name`` that loads; retire the others once it has."""
        for u in store.unreadable:  # a manifest that cannot be read is a skipped version too
            sig = _signature(u.path.parent)
            if u.name == name and self._skips.get((name, u.version), _Skip((), "")).signature != sig:
                self._skip(name, u.version, sig, u.reason)
        versions = store.entries.get(name, {})
        loaded = set(self.registry.versions(name))
        target: int | None = None
        for version in sorted(versions, reverse=True):
            if version in loaded:
                target = version
                break
            entry = versions[version]
            sig = _signature(entry.folder)
            known = self._skips.get((name, version))
            if known is not None and known.signature == sig:
                continue  # failed before, unchanged since
            try:
                opened = await asyncio.to_thread(self._open, entry)
            except Exception as e:
                self._skip(name, version, sig, _reason(e, entry))
                continue
            self._unskip(name, version)
            loaded_model = self._add(opened)
            LOG.warning("model %s v%d loaded (%s)", name, version, loaded_model.kind)
            target = version
            break
        if target is None and loaded:
            target = max(loaded)  # nothing on disk loads: what serves keeps serving
        for version in loaded - {target}:
            self.registry.retire((name, version))
        for version in list(self.registry.skipped.get(name, {})):
            if version not in versions and not (store.root / name / str(version) / MANIFEST).exists():
                self._unskip(name, version)  # the folder is gone: nothing to report
        ready = target is not None
        self.registry.states[name] = "ready" if ready else "failed"
        await self._set_health(model_service(name), ready)

    def expect(self, store: ModelStore) -> None:
        """Mark the models to serve as loading (before the first pass starts)."""
        names, self.registry.default = self._wanted(store)
        for name in names:
            self.registry.states.setdefault(name, "loading")

    async def reload(self) -> None:
        """Serve what the store holds now (see the module). The first call loads the
        store; later ones are SIGHUP and ``--watch-store``."""
        async with self._lock:
            try:
                store = await asyncio.to_thread(ModelStore, self.cfg.store)
            except Exception as e:  # the store folder itself is gone or unreadable: try again next time
                LOG.warning("store reload skipped: %s", e)
                return
            names, default = self._wanted(store)
            self.registry.default = default
            for name in names:
                self.registry.states.setdefault(name, "loading")
            for name in names:
                await self._settle(name, store)
                if name == default and self.registry.states[name] == "ready":
                    await self._serving()
            for key in [k for k in self.registry.models if k[0] not in names]:
                self.registry.retire(key)
            for name in [n for n in self.registry.states if n not in names]:
                del self.registry.states[name]
                self.registry.skipped.pop(name, None)
            if any(s == "ready" for s in self.registry.states.values()):
                await self._serving()  # the default failed, or there is none: serve what loaded
            self.settled.set()

    async def _serving(self) -> None:
        if not self.ready.is_set():
            await self._set_health("", True)
            await self._set_health(SERVICE, True)
            self.ready.set()

    def servable(self) -> bool:
        return bool(self.registry.models)

    def problems(self) -> str:
        """Every skipped version and why, for a server that has nothing to serve."""
        lines = [f"{n} v{v}: {why}" for n, vs in sorted(self.registry.skipped.items()) for v, why in sorted(vs.items())]
        return "; ".join(lines) or f"no model versions in {self.cfg.store}"
