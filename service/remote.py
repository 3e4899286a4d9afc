"""Model servers elsewhere: :class:`RemoteBackend` sends windows to other
``footprints serve`` processes' ``InferWindows``, spread round-robin, so tiling and
model execution scale separately.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Callable

import grpc
import numpy as np

from ._pb import footprints_pb2 as pb
from ._pb import footprints_pb2_grpc as pb_grpc
from .geometry import WindowSpec

MAX_MESSAGE_BYTES = 512 * 2**20  # a batch of 2636-px windows and their float32 answers
# Channel and server options that lift gRPC's 4 MiB default to that size.
MESSAGE_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES), ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]


TORCHSERVE = "torchserve://"


class GrpcEndpoint:
    """A ``footprints serve`` model server: its ``InferWindows``."""

    def __init__(self, address: str, model: str, version: int) -> None:
        self.address, self.model, self.version = address, model, version
        self.channel = grpc.insecure_channel(address, options=MESSAGE_OPTIONS)
        self.stub = pb_grpc.SegmentationStub(self.channel)

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
        reply = self.stub.InferWindows(request)
        return np.frombuffer(reply.probabilities, dtype="<f4").reshape(reply.count, reply.side, reply.side)

    def close(self) -> None:
        self.channel.close()


def endpoint(address: str, model: str, version: int):
    """``HOST:PORT`` (a footprints model server) or ``torchserve://HOST:PORT``."""
    if address.startswith(TORCHSERVE):
        from .torchserve.backend import TorchServeEndpoint

        return TorchServeEndpoint(address[len(TORCHSERVE) :], model, version)
    return GrpcEndpoint(address, model, version)


class RemoteBackend:
    """A model served elsewhere: each window batch goes to the next endpoint in turn,
    our model servers and TorchServe alike."""

    def __init__(
        self,
        addresses: list[str],
        model: str,
        version: int,
        info: pb.ModelInfo,
        spec: WindowSpec,
        window_bytes: Callable[[int], int],
    ) -> None:
        self.endpoints = [endpoint(a, model, version) for a in addresses]
        self._next = itertools.cycle(range(len(self.endpoints)))
        self._lock = threading.Lock()
        self.model, self.version = model, version
        self.device = "remote"
        self.name = f"{model}/{version}@{','.join(addresses)}"
        # The window rules are the store manifest's; the default window is the one the
        # model server states for its own device (a GPU server's differs from ours).
        self.spec = dataclasses.replace(spec, default_window_px={**spec.default_window_px, "remote": info.default_window})
        self.window_bytes = window_bytes
        # What the model server runs the windows on.
        self.engine, self.precision = f"remote {info.backend}", info.precision or "fp32"
        self.window_seconds: dict[int, float] | None = None
        self.best_batch: int | None = None

    def infer(self, inputs: list[np.ndarray]) -> np.ndarray:
        with self._lock:
            target = self.endpoints[next(self._next)]
        return target.infer(inputs)

    def close(self) -> None:
        for e in self.endpoints:
            e.close()
