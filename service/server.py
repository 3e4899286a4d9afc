"""The composition root: builds the store, backends, batchers and servicer, and owns
the lifecycle (health, reflection, metrics endpoint, SIGTERM drain)."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ._pb import footprints_pb2 as pb
from ._pb import footprints_pb2_grpc as pb_grpc
from .api import Limits, SegmentationServicer
from .backends import open_backend
from .backends.base import Backend
from .batcher import Batcher
from .budget import MemoryBudget
from .errors import InputError, NotFoundError
from .metrics import Metrics
from .registry import LoadedModel, ModelRegistry
from .remote import MESSAGE_OPTIONS, TORCHSERVE, RemoteBackend
from .store import ModelStore


@dataclass
class ServerConfig:
    store: Path = Path("model_store")
    host: str = "127.0.0.1"
    port: int = 50051  # 0: any free port
    metrics_port: int | None = 9100  # 0: any free port, None: no endpoint
    models: list[str] | None = None  # None: every model in the store, newest version
    backend: str = "auto"  # the fastest engine measured on this machine (service.tuning)
    precision: str = "auto"  # bf16 where the CPU has it and the model passed its check
    max_batch: int = 4
    max_queue_delay_ms: float = 5.0
    max_queued_windows: int = 64
    limits: Limits = field(default_factory=Limits)
    grace_s: float = 30.0
    model_servers: list[str] = field(default_factory=list)  # remote InferWindows servers
    memory_budget_bytes: int | None = None  # all windows in flight, every tile and model (None: half the RAM)


class Server:
    """A running footprints gRPC server (``await Server.start(cfg)``)."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        # No SO_REUSEPORT: a second server on a port in use must fail, not split the traffic.
        self.grpc = grpc.aio.server(options=[*MESSAGE_OPTIONS, ("grpc.so_reuseport", 0)])
        self.registry = ModelRegistry()
        self.budget = MemoryBudget(cfg.memory_budget_bytes)
        self.port = 0
        self.metrics_port: int | None = None
        self._stopped = asyncio.Event()

    @property
    def models(self) -> dict[tuple[str, int], LoadedModel]:
        return self.registry.models

    def _load(self) -> None:
        cfg = self.cfg
        store = ModelStore(cfg.store)
        names = cfg.models or store.names()
        try:
            default: str | None = store.default_name()
        except NotFoundError:
            default = None
        # A server without the store's default serves its only model, or asks for names.
        self.registry.default = default if default in names else (names[0] if len(names) == 1 else None)
        self.metrics.memory_budget.set(self.budget.total)
        for name in names:
            entry = store.get(name)
            backend: Backend
            if cfg.model_servers:
                # Memory of remote windows is the model servers' business (their own budgets).
                info = self._remote_info(name)
                backend, kind, threads, budget = (
                    RemoteBackend(cfg.model_servers, name, entry.version, info, entry.spec, entry.memory.bytes),
                    "remote",
                    len(cfg.model_servers),
                    None,
                )
            else:
                backend = open_backend(entry, cfg.backend, precision=cfg.precision)
                kind, threads, budget = backend.engine, 1, self.budget
            batcher = Batcher(
                backend,
                min(cfg.max_batch, backend.best_batch or cfg.max_batch),
                cfg.max_queue_delay_ms / 1000,
                cfg.max_queued_windows,
                self.metrics,
                label=f"{name}/{entry.version}",
                threads=threads,
                budget=budget,
            )
            self.registry.add(LoadedModel(entry, backend, batcher, kind))
            self.metrics.model_loaded.labels(name, str(entry.version), kind, entry.mode).set(1)

    def _remote_info(self, name: str) -> pb.ModelInfo:
        """What the first of our own model servers says of the model; with TorchServe
        alone, the store's manifest (TorchServe runs the exported program, in fp32)."""
        ours = [a for a in self.cfg.model_servers if not a.startswith(TORCHSERVE)]
        if not ours:
            entry = ModelStore(self.cfg.store).get(name)
            return pb.ModelInfo(name=name, version=entry.version, backend="torchserve", precision="fp32",
                                default_window=entry.spec.default_window("cpu"))  # fmt: skip
        try:
            with grpc.insecure_channel(ours[0]) as channel:
                # A short deadline: an unreachable model server is a start-up error, said at once.
                return pb_grpc.SegmentationStub(channel).GetModel(pb.GetModelRequest(name=name), timeout=10)
        except grpc.RpcError as e:
            raise InputError(f"model server {ours[0]} did not answer for {name}: {e.code().name} ({e.details()})") from None

    @classmethod
    async def start(cls, cfg: ServerConfig) -> Server:
        self = cls(cfg)
        self._load()
        servicer = SegmentationServicer(self.registry, cfg.limits, self.metrics, self.budget)
        pb_grpc.add_SegmentationServicer_to_server(servicer, self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        names = (pb.DESCRIPTOR.services_by_name["Segmentation"].full_name, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.grpc)
        try:
            self.port = self.grpc.add_insecure_port(f"{cfg.host}:{cfg.port}")
        except RuntimeError as e:  # grpc's bind failure
            raise InputError(f"cannot listen on {cfg.host}:{cfg.port} ({e}); is another server using that port?") from None
        await self.grpc.start()
        for service in ("", pb.DESCRIPTOR.services_by_name["Segmentation"].full_name):
            await _set_health(self.health, service, health_pb2.HealthCheckResponse.SERVING)
        if cfg.metrics_port is not None:
            try:
                self.metrics_port = self.metrics.serve(cfg.metrics_port, cfg.host).server_port
            except OSError as e:
                await self.grpc.stop(0)
                raise InputError(
                    f"cannot serve metrics on {cfg.host}:{cfg.metrics_port} ({e.strerror}); use --metrics-port 0 or -1"
                ) from None
        return self

    async def stop(self) -> None:
        """Drain: health goes NOT_SERVING, new calls are refused, in-flight tiles get
        up to ``grace_s`` to finish, then the server stops."""
        for service in ("", pb.DESCRIPTOR.services_by_name["Segmentation"].full_name):
            await _set_health(self.health, service, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.grpc.stop(self.cfg.grace_s)
        for m in self.registry:
            await m.batcher.close()
            m.backend.close()
        self._stopped.set()

    async def wait(self) -> None:
        await self._stopped.wait()


async def _set_health(servicer, service: str, status) -> None:
    result = servicer.set(service, status)
    if asyncio.iscoroutine(result):
        await result


async def serve_forever(cfg: ServerConfig) -> None:
    """``footprints serve``: run until SIGTERM or SIGINT, then drain."""
    server = await Server.start(cfg)
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stopping.append(asyncio.ensure_future(server.stop())) if not stopping else None)
    models = ", ".join(f"{n} v{v}" + (" (default)" if n == server.registry.default else "") for n, v in server.models)
    metrics = f", metrics on http://{cfg.host}:{server.metrics_port}/metrics" if server.metrics_port else ""
    print(f"footprints serving {models} on {cfg.host}:{server.port}{metrics}", flush=True)
    await server.wait()
    print("footprints server stopped", flush=True)
