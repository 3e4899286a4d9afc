"""The composition root: builds the store, backends, batchers and servicer, and owns
the lifecycle (health, reflection, metrics endpoint, security, hot model changes,
SIGTERM drain)."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import handlers
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
from .remote import MAX_MESSAGE_BYTES, TORCHSERVE, Link, ModelServers, RemoteBackend
from .security import TokenCheck, read_tokens, server_credentials
from .store import ModelEntry, ModelStore

LOG = logging.getLogger("footprints")

# A version ready to serve: its entry, backend, engine name, model-call threads and window budget.
Opened = tuple[ModelEntry, Backend, str, int, MemoryBudget | None]


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
    link: Link = field(default_factory=Link)  # deadlines, retries, health checks and TLS towards them
    memory_budget_bytes: int | None = None  # all windows in flight, every tile and model (None: half the RAM)
    watch_store_s: float = 0.0  # look for added or removed versions this often (0: on SIGHUP only)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # mutual TLS: clients need a certificate this CA signed
    tokens_file: Path | None = None  # bearer tokens, one per line


class DrainingHealth(health.aio.HealthServicer):
    """grpc.health.v1 whose Watch streams end when the server stops (NOT_SERVING their
    last answer) instead of holding the drain for its whole grace period.

    Watch is written out here rather than wrapped: cancelling the library's Watch while
    it writes leaves the stream stuck until the grace period ends (seen)."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = asyncio.Condition()
        self._closing = False

    async def _set(self, service, status) -> None:  # every status change passes here (set, graceful shutdown)
        await super()._set(service, status)
        async with self._changed:
            self._changed.notify_all()

    async def Watch(self, request, context):
        def now():
            return self._server_status.get(request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)

        last = None
        while True:
            status = now()
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            async with self._changed:
                if self._closing and now() == last:
                    return
                if now() == last:
                    await self._changed.wait()

    async def close(self) -> None:
        self._closing = True
        await self.enter_graceful_shutdown()
        async with self._changed:
            self._changed.notify_all()


class Server:
    """A running footprints gRPC server (``await Server.start(cfg)``)."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self.health = DrainingHealth()
        interceptors = []
        if cfg.tokens_file is not None:
            tokens = read_tokens(cfg.tokens_file)
            interceptors.append(TokenCheck(tokens, self._refused))
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # One cap for every method (see Limits.receive_bytes): a 500 MiB message is
            # refused from its length prefix, before it is read.
            ("grpc.max_receive_message_length", cfg.limits.receive_bytes()),
            # No SO_REUSEPORT: a second server on a port in use must fail, not split the traffic.
            ("grpc.so_reuseport", 0),
        ]
        self.grpc = grpc.aio.server(options=options, interceptors=interceptors)
        self.registry = ModelRegistry(close=self._close_later)
        self.budget = MemoryBudget(cfg.memory_budget_bytes)
        self.metrics.memory_budget.set(self.budget.total)
        self.servers: ModelServers | None = None
        self.port = 0
        self.metrics_port: int | None = None
        self._stopped = asyncio.Event()
        self._reloading = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()

    @property
    def models(self) -> dict[tuple[str, int], LoadedModel]:
        return self.registry.models

    def _refused(self, method: str) -> None:
        name = method.rsplit("/", 1)[-1]
        self.metrics.requests.labels(name, "UNAUTHENTICATED").inc()
        LOG.warning("%s refused: UNAUTHENTICATED (no known bearer token)", name)

    # ---- models -------------------------------------------------------------
    def _wanted(self) -> tuple[dict[str, int], str | None]:
        """The newest version of each model to serve, and the default model."""
        store = ModelStore(self.cfg.store)
        names = self.cfg.models or store.names()
        newest = {n: store.get(n).version for n in names}
        try:
            default: str | None = store.default_name()
        except NotFoundError:
            default = None
        # A server without the store's default serves its only model, or asks for names.
        return newest, default if default in names else (names[0] if len(names) == 1 else None)

    def _open(self, name: str, version: int) -> Opened:
        """A version's backend (blocking: engines are measured and compiled here)."""
        cfg = self.cfg
        entry = ModelStore(cfg.store).get(name, version)
        if self.servers is not None:
            # Memory of remote windows is the model servers' business (their own budgets).
            info = self._remote_info(name)
            remote = RemoteBackend(self.servers, name, entry.version, info, entry.spec, entry.memory.bytes)
            return entry, remote, "remote", len(self.servers.addresses), None
        backend = open_backend(entry, cfg.backend, precision=cfg.precision)
        return entry, backend, backend.engine, 1, self.budget

    def _add(self, opened: Opened) -> None:
        """Put an opened version in service (on the event loop: the batcher lives there)."""
        entry, backend, kind, threads, budget = opened
        cfg = self.cfg
        batcher = Batcher(
            backend,
            min(cfg.max_batch, backend.best_batch or cfg.max_batch),
            cfg.max_queue_delay_ms / 1000,
            cfg.max_queued_windows,
            self.metrics,
            label=f"{entry.name}/{entry.version}",
            threads=threads,
            budget=budget,
        )
        self.registry.add(LoadedModel(entry, backend, batcher, kind))
        self.metrics.model_loaded.labels(entry.name, str(entry.version), kind, entry.mode).set(1)

    def _close_later(self, model: LoadedModel) -> None:
        task = asyncio.get_running_loop().create_task(self._close(model))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close(self, model: LoadedModel) -> None:
        await model.batcher.close()
        model.backend.close()
        e = model.entry
        self.metrics.model_loaded.remove(e.name, str(e.version), model.backend_kind, e.mode)
        LOG.warning("model %s v%d unloaded", e.name, e.version)

    def _remote_info(self, name: str) -> pb.ModelInfo:
        """What the first of our own model servers to answer says of the model; with
        TorchServe alone, the store's manifest (TorchServe runs the exported program, in fp32)."""
        ours = [a for a in self.cfg.model_servers if not a.startswith(TORCHSERVE)]
        if not ours:
            entry = ModelStore(self.cfg.store).get(name)
            return pb.ModelInfo(name=name, version=entry.version, backend="torchserve", precision="fp32",
                                default_window=entry.spec.default_window("cpu"))  # fmt: skip
        assert self.servers is not None
        problems = []
        for address in ours:
            try:
                stub = pb_grpc.SegmentationStub(self.servers.channels[address])
                # A short deadline: an unreachable model server is said at once.
                return stub.GetModel(pb.GetModelRequest(name=name), timeout=10, metadata=self.cfg.link.security.metadata())
            except grpc.RpcError as e:
                problems.append(f"{address}: {e.code().name} ({e.details()})")
        raise InputError(f"no model server answered for {name}: {'; '.join(problems)}")

    def _load(self) -> None:
        newest, self.registry.default = self._wanted()
        for name, version in newest.items():
            self._add(self._open(name, version))

    async def reload(self) -> None:
        """Serve what the store holds now: a version folder added is loaded (and takes
        the requests that name no version), one removed is retired (tiles running on it
        finish there). A version that fails to load is logged and the old one kept."""
        async with self._reloading:
            try:
                newest, default = await asyncio.to_thread(self._wanted)
            except Exception as e:  # a store caught mid-copy: try again next time
                LOG.warning("store reload skipped: %s", e)
                return
            have = {n: v for n, v in self.registry.latest.items()}
            for name, version in newest.items():
                if have.get(name) == version:
                    continue
                try:
                    opened = await asyncio.to_thread(self._open, name, version)
                except Exception as e:
                    LOG.warning("model %s v%d not loaded: %s", name, version, e)
                    continue
                self._add(opened)
                LOG.warning("model %s v%d loaded", name, version)
            for key in [k for k in self.registry.models if newest.get(k[0]) != k[1]]:
                self.registry.retire(key)
            self.registry.default = default

    async def _watch_store(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.watch_store_s)
            await self.reload()

    # ---- lifecycle ----------------------------------------------------------
    @classmethod
    async def start(cls, cfg: ServerConfig) -> Server:
        self = cls(cfg)
        if cfg.model_servers:
            self.servers = ModelServers(
                cfg.model_servers, cfg.link, lambda a, up: self.metrics.model_servers_up.labels(a).set(int(up))
            )
            await asyncio.to_thread(self.servers.check_all)
        try:
            self._load()
        except BaseException:
            if self.servers is not None:
                self.servers.close()
            raise
        servicer = SegmentationServicer(self.registry, cfg.limits, self.metrics, self.budget)
        handlers.register(servicer, self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        names = (handlers.SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.grpc)
        address = f"{cfg.host}:{cfg.port}"
        try:
            if cfg.tls_cert or cfg.tls_key:
                if not (cfg.tls_cert and cfg.tls_key):
                    raise InputError("TLS needs both --tls-cert and --tls-key")
                self.port = self.grpc.add_secure_port(address, server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca))
            elif cfg.tls_client_ca:
                raise InputError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
            else:
                self.port = self.grpc.add_insecure_port(address)
        except RuntimeError as e:  # grpc's bind failure
            raise InputError(f"cannot listen on {address} ({e}); is another server using that port?") from None
        await self.grpc.start()
        for service in ("", handlers.SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if cfg.metrics_port is not None:
            try:
                self.metrics_port = self.metrics.serve(cfg.metrics_port, cfg.host).server_port
            except OSError as e:
                await self.grpc.stop(0)
                raise InputError(
                    f"cannot serve metrics on {cfg.host}:{cfg.metrics_port} ({e.strerror}); use --metrics-port 0 or -1"
                ) from None
        if cfg.watch_store_s > 0:
            self._tasks.add(asyncio.get_running_loop().create_task(self._watch_store()))
        return self

    async def stop(self) -> None:
        """Drain: health goes NOT_SERVING and Watch streams end, new calls are refused,
        in-flight tiles get up to ``grace_s`` to finish, then the server stops."""
        for task in list(self._tasks):
            task.cancel()
        await self.health.close()
        await self.grpc.stop(self.cfg.grace_s)
        for m in self.registry:
            await m.batcher.close()
            m.backend.close()
        if self.servers is not None:
            self.servers.close()
        self._stopped.set()

    async def wait(self) -> None:
        await self._stopped.wait()


async def serve_forever(cfg: ServerConfig) -> None:
    """``footprints serve``: run until SIGTERM or SIGINT, then drain; SIGHUP reloads the store."""
    server = await Server.start(cfg)
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stopping.append(asyncio.ensure_future(server.stop())) if not stopping else None)
    reloads: set[asyncio.Task] = set()

    def hangup() -> None:
        task = asyncio.ensure_future(server.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, hangup)
    models = ", ".join(f"{n} v{v}" + (" (default)" if n == server.registry.default else "") for n, v in server.models)
    metrics = f", metrics on http://{cfg.host}:{server.metrics_port}/metrics" if server.metrics_port else ""
    tls = " (mutual TLS)" if cfg.tls_client_ca else " (TLS)" if cfg.tls_cert else ""
    print(f"footprints serving {models} on {cfg.host}:{server.port}{tls}{metrics}", flush=True)
    await server.wait()
    print("footprints server stopped", flush=True)
