"""What serving runs: a network with its input normalisation and probability head,
and the checkpoint format that carries both.

``SegmentationModel`` takes raw RGB (float, 0-255) and returns the building
probability ``(N, 1, h, w)``, so every backend (PyTorch, ONNX Runtime, TensorRT)
runs the same graph and no caller has to know the normalisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from service.errors import InputError
from service.tiling.geometry import Geometry

from . import build, geometry_of
from .cost import window_bytes

CHECKPOINT_FORMAT = "footprints.checkpoint/1"
# ImageNet statistics (RGB, 0-255) for encoders pretrained on ImageNet.
IMAGENET_MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
IMAGENET_STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]
# Inputs are scaled to about unit range after the mean is taken off: the paper
# subtracts one global mean RGB; the 1/255 keeps Adam's lr 1e-3 well behaved.
INPUT_SCALE = 1.0 / 255.0


class SegmentationModel(nn.Module):
    """``forward(*rgb)`` -> building probability. One input for ``large`` windows,
    ``(full, context)`` for ``dual`` ones."""

    mean: torch.Tensor  # buffers, registered below
    scale: torch.Tensor

    def __init__(
        self, network: str, network_args: dict[str, Any], mean_rgb: list[float], std_rgb: list[float] | None = None
    ) -> None:
        super().__init__()
        self.network_name = network
        self.network_args = dict(network_args)
        self.net = build(network, **network_args)
        # Two-class heads (AMLL's cross-entropy) take a softmax; one-logit heads a sigmoid.
        self.two_class = getattr(self.net, "classes", 1) == 2
        # Served with dihedral test-time augmentation by default (written to the manifest).
        self.tta = bool(getattr(self.net, "tta", False))
        self.register_buffer("mean", torch.tensor(mean_rgb, dtype=torch.float32).view(1, 3, 1, 1))
        # 1/std per channel (pretrained encoders: ImageNet's), else the paper's plain 1/255.
        self.std_rgb = list(std_rgb) if std_rgb is not None else None
        scale = [1.0 / s for s in std_rgb] if std_rgb is not None else [INPUT_SCALE] * 3
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).view(1, 3, 1, 1))

    def logits(self, *rgb: torch.Tensor) -> torch.Tensor:
        """Raw network output on normalised inputs (what the losses train)."""
        return self.net(*[(x - self.mean) * self.scale for x in rgb])

    def heads(self, *rgb: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every output training uses: ``logits`` always; ``distance`` (method 3) and
        ``stage1`` (method 4) where the network has them. Serving uses ``logits``."""
        x = [(v - self.mean) * self.scale for v in rgb]
        heads = getattr(self.net, "heads", None)
        return heads(*x) if heads is not None else {"logits": self.net(*x)}

    def forward(self, *rgb: torch.Tensor) -> torch.Tensor:
        z = self.logits(*rgb)
        return torch.softmax(z, dim=1)[:, 1:2] if self.two_class else torch.sigmoid(z)

    @property
    def geometry(self) -> Geometry:
        """How the service cuts rasters for this network (its default and plan windows
        are the geometry's): what export writes into the manifest, and what training's
        validation tiles with."""
        return geometry_of(self.network_name).for_network(self.net, self.tta)

    @property
    def mode(self) -> str:
        """The geometry's name in the manifest: ``large``, ``dual`` or ``overlap``."""
        return self.geometry.mode

    def window_bytes(self, window: int) -> int:
        """Activation bound of one window of side ``window`` (input side; dual: output side)."""
        return window_bytes(self, tuple((1, 3, side, side) for side in self.geometry.input_sides(window)))


def save_checkpoint(path: str | Path, model: SegmentationModel, half: bool = False, **meta: Any) -> Path:
    """Write the model and whatever serving or resuming needs (``meta``) to ``path``.

    ``half`` stores floating-point weights as fp16 (half the size; loading upcasts).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = model.net.state_dict()
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "network": model.network_name,
        "network_args": model.network_args,
        "mean_rgb": model.mean.flatten().tolist(),
        **({"std_rgb": model.std_rgb} if model.std_rgb is not None else {}),
        "state_dict": state,
        **meta,
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # atomic: a kill mid-write never leaves a half checkpoint
    return path


_MODEL_KEYS = ("format", "network", "network_args", "mean_rgb", "std_rgb", "state_dict", "optimizer", "ema")


def checkpoint_meta(payload: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's metadata without the model and optimizer themselves, ready to
    pass back to :func:`save_checkpoint` when the model is written elsewhere."""
    return {k: v for k, v in payload.items() if k not in _MODEL_KEYS}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's dict, refusing files that are not footprints checkpoints."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint file does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors all mean the same thing here
        raise InputError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a footprints checkpoint (no '{CHECKPOINT_FORMAT}' format tag)")
    return payload


def load_checkpoint(path: str | Path, expect_network: str | None = None) -> tuple[SegmentationModel, dict[str, Any]]:
    """Rebuild the model of a checkpoint; a network that does not match its weights is refused."""
    payload = read_checkpoint(path)
    name = payload["network"]
    if expect_network is not None and name != expect_network:
        raise InputError(f"{path}: checkpoint holds network '{name}', expected '{expect_network}'")
    try:
        model = SegmentationModel(name, payload["network_args"], payload["mean_rgb"], payload.get("std_rgb"))
    except TypeError as e:
        raise InputError(f"{path}: network '{name}' cannot be built from {payload['network_args']}: {e}") from None
    try:
        model.net.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as e:
        # torch names the missing and unexpected keys and the size mismatches.
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:])
        raise InputError(f"{path}: weights do not fit network '{name}' {payload['network_args']}: {detail[:400]}") from None
    model.eval()
    return model, payload
