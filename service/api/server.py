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

from service.api import handlers, logs
from service.api.security import REFUSAL, TokenCheck, server_credentials
from service.api.servicer import Limits, SegmentationServicer
from service.api.status import request_id
from service.errors import InputError
from service.metrics import Metrics
from service.models.budget import MemoryBudget
from service.models.manager import ModelManager
from service.models.registry import LoadedModel, ModelRegistry
from service.remote.servers import Link, ModelServers
from service.store.repository import ModelStore
from service.transport import MAX_MESSAGE_BYTES, read_tokens

LOG = logging.getLogger("footprints")


@dataclass
class ServerConfig:
    store: Path = Path("model_store")
    host: str = "127.0.0.1"
    port: int = 50051  # 0: any free port
    metrics_port: int | None = 9100  # 0: any free port, None: no endpoint
    models: list[str] | None = None  # None: every model in the store, newest version
    backend: str = "auto"  # the engine this machine's facts predict (service.tuning)
    tune: str = "background"  # measure unmeasured large-window models in a child process ("off": never)
    precision: str = "auto"  # bf16 where the CPU has it and the model passed its check
    max_queue_delay_ms: float = 5.0
    max_queued_windows: int = 64
    window_order: str = "oldest-tile"  # or "arrival": first come, first served across tiles
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
        self.manager: ModelManager
        self.servicer: SegmentationServicer
        self._children: list = []  # background measurements
        self.budget = MemoryBudget(cfg.memory_budget_bytes)
        self.metrics.memory_budget.set(self.budget.total)
        self.servers: ModelServers | None = None
        self.port = 0
        self.metrics_port: int | None = None
        self._stopped = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()

    @property
    def models(self) -> dict[tuple[str, int], LoadedModel]:
        return self.registry.models

    def _refused(self, method: str, metadata) -> str:
        """Count and log a call refused for its token, in the line every call gets
        (request id, method, code); returns the request id sent back."""
        name = method.rsplit("/", 1)[-1]
        self.metrics.requests.labels(name, "UNAUTHENTICATED").inc()
        call = logs.CallLog(name)
        call.request_id = request_id(metadata) or call.request_id
        logs.rpc_done(call, "UNAUTHENTICATED", REFUSAL)
        return call.request_id

    def _close_later(self, model: LoadedModel) -> None:
        task = asyncio.get_running_loop().create_task(self.manager.close(model))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _set_health(self, service: str, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set(service, status)

    async def reload(self) -> None:
        """Serve what the store holds now (:meth:`ModelManager.reload`)."""
        await self.manager.reload()

    async def _watch_store(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.watch_store_s)
            await self.reload()

    async def _load(self) -> None:
        """The first pass over the store, then the background measurements it may need."""
        await self.manager.reload()
        if self.cfg.tune == "background" and self.cfg.backend == "auto" and self.servers is None:
            await self._tune_in_background()

    async def _tune_in_background(self) -> None:
        """Measure the window speeds of the loaded large-window models this machine has
        not measured yet, in a child process at the lowest priority (the server serves
        meanwhile; the memory the measuring takes goes back when the child ends), then
        let their plans follow the measurements."""
        from service.engines.timings import cached_seconds, measure_in_child, needs_measuring

        def unmeasured() -> list[LoadedModel]:
            return [m for m in self.registry.newest() if needs_measuring(m.entry) and not m.window_seconds]

        todo = unmeasured()
        if not todo:
            return
        names = [m.entry.name for m in todo]
        LOG.warning("measuring window speeds of %s in the background", ", ".join(names))
        child = measure_in_child(self.cfg.store, names, self.cfg.precision)
        self._children.append(child)
        code = await asyncio.to_thread(child.wait)
        for m in todo:
            m.window_seconds = cached_seconds(m.entry, m.engine.engine, m.engine.precision)
        LOG.warning("window speeds of %s measured (exit %d); their tiles are cut by them now", ", ".join(names), code)

    # ---- lifecycle ----------------------------------------------------------
    @classmethod
    async def start(cls, cfg: ServerConfig) -> Server:
        """Listen at once (health NOT_SERVING) and load the models in the background;
        :attr:`manager` says when the default model is ready (``manager.ready``)."""
        store = ModelStore(cfg.store)  # a missing store folder is refused before anything listens
        if cfg.backend == "tensorrt":  # a machine that cannot run the engine asked for at all
            from service.engines.gpu import require_gpu

            require_gpu("the tensorrt backend")
        self = cls(cfg)
        if cfg.model_servers:
            self.servers = ModelServers(
                cfg.model_servers, cfg.link, lambda a, up: self.metrics.model_servers_up.labels(a).set(int(up))
            )
            await asyncio.to_thread(self.servers.check_all)
        self.manager = ModelManager(cfg, self.registry, self.metrics, self.budget, self._set_health, self.servers)
        self.manager.expect(store)  # ListModels names every model from the first call on, as loading
        self.servicer = SegmentationServicer(self.registry, cfg.limits, self.metrics, self.budget)
        handlers.register(self.servicer, self.grpc)
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
            self._close_servers()
            raise InputError(f"cannot listen on {address} ({e}); is another server using that port?") from None
        except BaseException:
            self._close_servers()
            raise
        for service in ("", handlers.SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.grpc.start()
        if cfg.metrics_port is not None:
            try:
                self.metrics_port = self.metrics.serve(cfg.metrics_port, cfg.host).server_port
            except OSError as e:
                await self.grpc.stop(0)
                self._close_servers()
                raise InputError(
                    f"cannot serve metrics on {cfg.host}:{cfg.metrics_port} ({e.strerror}); use --metrics-port 0 or -1"
                ) from None
        self._tasks.add(asyncio.get_running_loop().create_task(self._load()))
        if cfg.watch_store_s > 0:
            self._tasks.add(asyncio.get_running_loop().create_task(self._watch_store()))
        return self

    def _close_servers(self) -> None:
        if self.servers is not None:
            self.servers.close()

    async def ready(self, timeout: float | None = None, every_model: bool = False) -> None:
        """Wait until the default model serves (``every_model``: until the first pass over
        the store has loaded or skipped them all), or that pass ended with nothing
        servable (:class:`InputError`, naming every skipped version)."""
        async with asyncio.timeout(timeout):
            if every_model:
                await self.manager.settled.wait()
            ready = asyncio.ensure_future(self.manager.ready.wait())
            settled = asyncio.ensure_future(self.manager.settled.wait())
            try:
                await asyncio.wait({ready, settled}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                ready.cancel()
                settled.cancel()
        if not self.manager.ready.is_set() and not self.manager.servable():
            raise InputError(f"nothing in {self.cfg.store} can be served: {self.manager.problems()}")

    async def stop(self) -> None:
        """Drain: health goes NOT_SERVING and Watch streams end, new calls are refused,
        in-flight tiles get up to ``grace_s`` to finish, then the server stops."""
        for task in list(self._tasks):
            task.cancel()
        for child in self._children:
            if child.poll() is None:
                child.kill()
        await self.health.close()
        # Calls still running when the grace period ends are cancelled by gRPC: they are
        # logged and counted as cut off by the server (UNAVAILABLE), not as clients leaving.
        timer = asyncio.get_running_loop().call_later(max(0.0, self.cfg.grace_s - 0.05), setattr, self.servicer, "cut_off", True)
        await self.grpc.stop(self.cfg.grace_s)
        timer.cancel()
        for m in self.registry:
            await m.batcher.close()
            m.engine.close()
        self._close_servers()
        self._stopped.set()

    async def wait(self) -> None:
        await self._stopped.wait()


async def serve_forever(cfg: ServerConfig) -> None:
    """``footprints serve``: listen at once, serve each model as it loads, run until
    SIGTERM or SIGINT, then drain; SIGHUP reloads the store. With nothing servable in the
    store, one line (:class:`InputError`) and exit 2."""
    server = await Server.start(cfg)
    tls = " (mutual TLS)" if cfg.tls_client_ca else " (TLS)" if cfg.tls_cert else ""
    metrics = f", metrics on http://{cfg.host}:{server.metrics_port}/metrics" if server.metrics_port else ""
    # Signals are handled from the moment the port listens: health can say SERVING before
    # ready() returns here, and a SIGTERM sent on seeing it must drain, not kill.
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
    print(f"footprints listening on {cfg.host}:{server.port}{tls}{metrics}; loading models", flush=True)
    ready = asyncio.ensure_future(server.ready())
    stopped = asyncio.ensure_future(server.wait())
    await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():  # stopped while loading: drained already
        ready.cancel()
        print("footprints server stopped", flush=True)
        return
    stopped.cancel()
    try:
        ready.result()
    except InputError:
        await server.stop()
        raise
    models = ", ".join(f"{n} v{v}" + (" (default)" if n == server.registry.default else "") for n, v in server.models)
    loading = [n for n, state in server.registry.states.items() if state == "loading"]
    more = f"; loading {', '.join(loading)}" if loading else ""
    print(f"footprints serving {models} on {cfg.host}:{server.port}{tls}{metrics}{more}", flush=True)
    await server.wait()
    print("footprints server stopped", flush=True)
