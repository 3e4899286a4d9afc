"""Model servers elsewhere: :class:`RemoteEngine` sends windows to other
``footprints serve`` processes' ``InferWindows`` (or TorchServe's inference API),
spread round-robin, so tiling and model execution scale separately.

Failover (:class:`ModelServers`): every call has a deadline; a batch that fails on
one model server (gone, timed out, overloaded) is run again on another that passes its
health checks, so the tile still completes, exactly (the same windows, the same
model). A health thread checks each server every second (``grpc.health.v1`` for
ours, ``/ping`` for TorchServe), takes failing ones out of rotation and brings them
back when they answer again. With none left the tile fails UNAVAILABLE, naming them.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service._pb import footprints_pb2 as pb
from service._pb import footprints_pb2_grpc as pb_grpc
from service.engines.base import Bundle, Engine
from service.errors import InputError, NotFoundError
from service.transport import MESSAGE_OPTIONS, ClientSecurity

LOG = logging.getLogger("footprints")


TORCHSERVE = "torchserve://"
SEGMENTATION = pb.DESCRIPTOR.services_by_name["Segmentation"].full_name

# Answers after which another model server may do better; the rest (bad windows, an
# unknown model, refused credentials) would fail anywhere, so they fail the tile.
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.ABORTED,
}


@dataclass(frozen=True)
class Link:
    """How the server talks to its model servers."""

    timeout_s: float = 60.0  # deadline of one window batch
    retries: int = 2  # other model servers tried after a failure, at most
    health_every_s: float = 1.0
    health_timeout_s: float = 1.0
    security: ClientSecurity = ClientSecurity()


class Retry(ConnectionError):
    """A batch failed on one model server in a way another may not."""


class GrpcEndpoint:
    """A ``footprints serve`` model server: its ``InferWindows``."""

    def __init__(self, channel: grpc.Channel, address: str, model: str, version: int, link: Link) -> None:
        self.address, self.model, self.version, self.link = address, model, version, link
        self.stub = pb_grpc.SegmentationStub(channel)

    def infer(self, inputs: list[np.ndarray]) -> np.ndarray:
        rgb = np.ascontiguousarray(inputs[0], dtype=np.uint8)
        request = pb.InferWindowsRequest(
            model=self.model,
            model_version=self.version,
            count=rgb.shape[0],
            side=rgb.shape[-1],
            rgb=rgb.tobytes(),
            context=np.ascontiguousarray(inputs[1], dtype=np.uint8).tobytes() if len(inputs) > 1 else b"",
        )
        try:
            reply = self.stub.InferWindows(request, timeout=self.link.timeout_s, metadata=self.link.security.metadata())
        except grpc.RpcError as e:
            what = f"model server {self.address} answered {e.code().name}: {e.details()}"
            if e.code() in RETRYABLE:
                raise Retry(what) from None
            raise (NotFoundError if e.code() == grpc.StatusCode.NOT_FOUND else InputError)(what) from None
        return np.frombuffer(reply.probabilities, dtype="<f4").reshape(reply.count, reply.side, reply.side)


def _grpc_check(channel: grpc.Channel, link: Link) -> Callable[[], str | None]:
    stub = health_pb2_grpc.HealthStub(channel)

    def check() -> str | None:
        try:
            status = stub.Check(health_pb2.HealthCheckRequest(service=SEGMENTATION), timeout=link.health_timeout_s).status
        except grpc.RpcError as e:
            return f"health check {e.code().name}"
        return (
            None
            if status == health_pb2.HealthCheckResponse.SERVING
            else health_pb2.HealthCheckResponse.ServingStatus.Name(status)
        )

    return check


class ModelServers:
    """The model servers of one front end: channels, health and the rotation."""

    def __init__(self, addresses: list[str], link: Link, on_change: Callable[[str, bool], None] | None = None) -> None:
        self.addresses, self.link, self.on_change = list(addresses), link, on_change
        self.channels: dict[str, grpc.Channel] = {}
        self._checks: dict[str, Callable[[], str | None]] = {}
        for a in addresses:
            if a.startswith(TORCHSERVE):
                from service.torchserve.backend import ping

                self._checks[a] = ping(a[len(TORCHSERVE) :], link.health_timeout_s)
            else:
                self.channels[a] = link.security.channel(a, MESSAGE_OPTIONS)
                self._checks[a] = _grpc_check(self.channels[a], link)
        self.down: dict[str, str] = {}  # address -> why it is out of rotation
        self._turn = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="model-server-health", daemon=True)
        self._thread.start()

    def pick(self, exclude: set[str]) -> str | None:
        """The next healthy server in turn, not one of ``exclude``."""
        with self._lock:
            for i in range(len(self.addresses)):
                a = self.addresses[(self._turn + i) % len(self.addresses)]
                if a not in self.down and a not in exclude:
                    self._turn = (self._turn + i + 1) % len(self.addresses)
                    return a
        return None

    def mark(self, address: str, problem: str | None) -> None:
        """Take ``address`` out of rotation (``problem``: why) or back in (None)."""
        with self._lock:
            was_up = address not in self.down
            if problem is None:
                self.down.pop(address, None)
            else:
                self.down[address] = problem
        if was_up != (problem is None):
            if problem is None:
                LOG.warning("model server %s is back in rotation", address)
            else:
                LOG.warning("model server %s taken out of rotation: %s", address, problem)
            if self.on_change:
                self.on_change(address, problem is None)

    def check_all(self) -> None:
        for a in self.addresses:
            self.mark(a, self._checks[a]())

    def _watch(self) -> None:
        while not self._stop.wait(self.link.health_every_s):
            self.check_all()

    def unavailable(self, model: str, failures: dict[str, str]) -> ConnectionError:
        with self._lock:
            why = {**self.down, **failures}
        named = "; ".join(f"{a} ({why.get(a, 'busy')})" for a in self.addresses)
        return ConnectionError(f"no model server could run the windows of {model}: {named}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for c in self.channels.values():
            c.close()


class RemoteEngine(Engine):
    """A model served elsewhere: each window batch goes to the next healthy model
    server in turn, and to another one if it fails there (see the module text)."""

    def __init__(self, servers: ModelServers, bundle: Bundle, info: pb.ModelInfo) -> None:
        # The window rules are the store manifest's; the default window is the one the
        # model server states for its own device (a GPU server's differs from ours).
        g = bundle.geometry
        geometry = dataclasses.replace(g, default_window_px={**g.default_window_px, "remote": info.default_window})
        name = f"{bundle.name}/{bundle.version}@{','.join(servers.addresses)}"
        m = bundle.manifest  # resampling and thresholds happen here, in the front end
        super().__init__(name, "remote", geometry, bundle.window_bytes, info.precision or "fp32", m.resolution_m, m.threshold)
        self.engine = f"remote {info.backend}"  # what the model server runs the windows on
        self.servers = servers
        self.model, self.version = bundle.name, bundle.version
        self.endpoints = {a: self._endpoint(a, bundle.name, bundle.version) for a in servers.addresses}

    def _endpoint(self, address: str, model: str, version: int):
        if address.startswith(TORCHSERVE):
            from service.torchserve.backend import TorchServeEndpoint

            return TorchServeEndpoint(address[len(TORCHSERVE) :], model, version, self.servers.link.timeout_s)
        return GrpcEndpoint(self.servers.channels[address], address, model, version, self.servers.link)

    def infer(self, inputs: list[np.ndarray]) -> np.ndarray:
        tried: set[str] = set()
        failures: dict[str, str] = {}
        for _ in range(1 + self.servers.link.retries):
            address = self.servers.pick(tried)
            if address is None:
                break
            tried.add(address)
            try:
                return self.endpoints[address].infer(inputs)
            except ConnectionError as e:  # Retry, and TorchServe's refusals
                failures[address] = str(e)
                self.servers.mark(address, str(e))
        raise self.servers.unavailable(f"{self.model} v{self.version}", failures)

    def close(self) -> None:
        for e in self.endpoints.values():
            if hasattr(e, "close"):
                e.close()
