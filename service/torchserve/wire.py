"""The bytes between our front end and TorchServe's inference API (REST,
``POST /predictions/<model>``): a request is an ``.npz`` of the uint8 window crops as
the tiler reads them (``rgb``, and ``context`` for dual windows); the answer is an
``.npy`` of float32 probabilities ``(n, h, w)``. Self-describing, so shapes and dtypes
cannot drift between the two sides."""

from __future__ import annotations

import io
from typing import Any

import numpy as np


def encode_windows(crops: list[np.ndarray]) -> bytes:
    buf = io.BytesIO()
    names = ("rgb", "context")[: len(crops)]
    arrays: dict[str, Any] = {n: np.ascontiguousarray(c, dtype=np.uint8) for n, c in zip(names, crops)}
    np.savez(buf, **arrays)
    return buf.getvalue()


def decode_windows(body: bytes) -> list[np.ndarray]:
    with np.load(io.BytesIO(body), allow_pickle=False) as z:
        return [z[n] for n in ("rgb", "context") if n in z.files]


def encode_probabilities(probs: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(probs, dtype="<f4"), allow_pickle=False)
    return buf.getvalue()


def decode_probabilities(body: bytes) -> np.ndarray:
    out: np.ndarray = np.load(io.BytesIO(body), allow_pickle=False)
    return out
