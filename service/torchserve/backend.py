"""TorchServe as a model server of our front end: window batches POSTed to its
inference API (REST: ``/predictions/<name>-v<version>``), one keep-alive connection
per calling thread."""

from __future__ import annotations

import http.client
import threading

import numpy as np

from service.torchserve.archive import archive_name
from service.torchserve.wire import decode_probabilities, encode_windows


class TorchServeEndpoint:
    def __init__(self, address: str, model: str, version: int, timeout: float = 600.0) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port, self.timeout = host, int(port), timeout
        self.path = f"/predictions/{archive_name(model, version)}"
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return conn

    def infer(self, inputs: list[np.ndarray]) -> np.ndarray:
        body = encode_windows(inputs)
        conn = self._connection()
        try:
            conn.request("POST", self.path, body=body, headers={"Content-Type": "application/octet-stream"})
            reply = conn.getresponse()
            data = reply.read()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            self._local.conn = None
            raise ConnectionError(f"TorchServe at {self.host}:{self.port} failed: {e}") from None
        if reply.status != 200:
            # 5xx: its worker died or its queue is full; the tile fails UNAVAILABLE, retryable.
            kind = ConnectionError if reply.status >= 500 else RuntimeError
            raise kind(f"TorchServe at {self.host}:{self.port} answered {reply.status}: {data[:300]!r}")
        return decode_probabilities(data)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()


def ping(address: str, timeout: float):
    """A health check of a TorchServe (its ``/ping``): None when Healthy, else why not."""
    host, _, port = address.rpartition(":")

    def check() -> str | None:
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        try:
            conn.request("GET", "/ping")
            reply = conn.getresponse()
            body = reply.read()
        except (OSError, http.client.HTTPException) as e:
            return f"ping failed: {e}"
        finally:
            conn.close()
        return None if reply.status == 200 and b"Healthy" in body else f"ping answered {reply.status}"

    return check
