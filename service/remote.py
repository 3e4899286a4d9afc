"""Backends that bridge the synchronous tiling engine to the server's machinery.

* :class:`BatchedBackend`: the engine runs in a worker thread per tile; each of
  its windows is handed to the server's asyncio :class:`~service.batcher.Batcher`,
  which merges windows of concurrent tiles into one model call.
* :class:`RemoteBackend`: windows go to remote model servers' ``InferWindows``,
  spread round-robin, so tiling and model execution scale separately.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from concurrent.futures import Future

import grpc
import numpy as np

from ._pb import footprints_pb2 as pb
from ._pb import footprints_pb2_grpc as pb_grpc
from .backends.base import Backend
from .batcher import Batcher

MAX_MESSAGE_BYTES = 512 * 2**20  # a batch of 2636-px windows and their float32 answers
# Channel and server options that lift gRPC's 4 MiB default to that size.
MESSAGE_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES), ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]


class Cancelled(Exception):
    """The tile's caller went away; its remaining windows are not run."""


class BatchedBackend:
    def __init__(self, batcher: Batcher, loop: asyncio.AbstractEventLoop, base: Backend) -> None:
        self.batcher, self.loop = batcher, loop
        self.mode, self.geometry, self.device, self.name = base.mode, base.geometry, base.device, base.name
        self.window_bytes = base.window_bytes
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._outstanding: set[Future] = set()

    def infer(self, inputs: list[np.ndarray]) -> np.ndarray:
        futures = []
        with self._lock:
            if self._cancelled.is_set():
                raise Cancelled()
            for i in range(len(inputs[0])):
                f = asyncio.run_coroutine_threadsafe(self.batcher.infer([x[i] for x in inputs]), self.loop)
                futures.append(f)
                self._outstanding.add(f)
        try:
            return np.stack([f.result() for f in futures])
        except Exception:
            if self._cancelled.is_set():
                raise Cancelled() from None
            raise
        finally:
            with self._lock:
                self._outstanding.difference_update(futures)

    def cancel(self) -> None:
        """Stop: windows not yet run are dropped, the engine thread raises Cancelled."""
        with self._lock:
            self._cancelled.set()
            for f in self._outstanding:
                f.cancel()

    def close(self) -> None:
        self.cancel()


class RemoteBackend:
    """A model served elsewhere: ``InferWindows`` on each address in turn."""

    def __init__(self, addresses: list[str], model: str, version: int, info: pb.ModelInfo, window_bytes) -> None:
        self.channels = [grpc.insecure_channel(a, options=MESSAGE_OPTIONS) for a in addresses]
        self.stubs = [pb_grpc.SegmentationStub(c) for c in self.channels]
        self._next = itertools.cycle(range(len(self.stubs)))
        self._lock = threading.Lock()
        self.model, self.version = model, version
        self.mode = "large" if info.mode == pb.MODE_LARGE_WINDOW else "dual"
        self.device = "remote"
        self.name = f"{model}/{version}@{','.join(addresses)}"
        self.window_bytes = window_bytes
        self.geometry = None
        if self.mode == "large":
            from training.networks.unet_valid import ValidGeometry

            self.geometry = ValidGeometry(depth=int(info.stride).bit_length() - 1)

    def infer(self, inputs: list[np.ndarray]) -> np.ndarray:
        with self._lock:
            stub = self.stubs[next(self._next)]
        rgb = np.ascontiguousarray(inputs[0], dtype=np.uint8)
        request = pb.InferWindowsRequest(
            model=self.model, model_version=self.version, count=rgb.shape[0], side=rgb.shape[-1], rgb=rgb.tobytes(),
            context=np.ascontiguousarray(inputs[1], dtype=np.uint8).tobytes() if len(inputs) > 1 else b"",
        )
        reply = stub.InferWindows(request)
        return np.frombuffer(reply.probabilities, dtype="<f4").reshape(reply.count, reply.side, reply.side)

    def close(self) -> None:
        for c in self.channels:
            c.close()
