import pytest
import torch

from service.errors import InputError
from training.networks import build
from training.networks.cost import parameter_count, window_cost
from training.networks.losses import bce_soft_iou, consistency_kl, cross_entropy, soft_iou
from training.networks.model import SegmentationModel, load_checkpoint, save_checkpoint
from training.networks.unet_valid import ValidGeometry

SMALL_AMLL = {"filters": (4, 8, 16, 32, 64)}
SMALL_NUS = {"channels": (4, 8, 16, 8, 4)}


def test_amll_geometry_matches_the_paper():
    g = ValidGeometry(depth=4)
    assert (g.stride, g.margin) == (16, 92)
    assert [g.output_size(n) for n in (572, 1180, 2636)] == [388, 996, 2452]
    assert all(g.is_valid(16 * k + 124) for k in range(4, 200))
    assert not any(g.is_valid(n) for n in (571, 573, 580, 600, 2635, 2640))
    assert g.smallest_input_for_output(2500) == 2684  # perf-notes' 2 x 2 windows per 5000 tile


def test_full_amll_network_has_the_documented_size_and_cost():
    net = build("amll_unet")
    assert parameter_count(net) == 7_760_130
    cost = window_cost(net, ((1, 3, 572, 572),))
    assert cost["macs"] == pytest.approx(37.85e9, rel=1e-3)  # shared/perf-notes.md
    assert window_cost(net, ((1, 3, 2636, 2636),))["macs"] == pytest.approx(1163.76e9, rel=1e-3)


def test_nus_network_takes_two_inputs_of_one_size_and_returns_one_logit():
    net = build("nus_dual_unet", **SMALL_NUS).eval()
    full, ctx = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    assert net(full, ctx).shape == (2, 1, 64, 64)
    assert build("nus_dual_unet").channels == (32, 64, 128, 128, 256, 128, 128, 64, 32)
    with pytest.raises(InputError, match="must match"):
        net(full, torch.rand(2, 3, 32, 32))
    with pytest.raises(InputError, match="multiple of 4"):
        net(torch.rand(1, 3, 66, 66), torch.rand(1, 3, 66, 66))


def test_amll_refuses_invalid_sizes_and_names_valid_ones():
    net = build("amll_unet", **SMALL_AMLL)
    with pytest.raises(InputError, match="window size 600 is not valid.*nearest are 588 and 604"):
        net(torch.zeros(1, 3, 600, 600))
    with pytest.raises(InputError, match="unknown network 'segnet'; known: amll_unet, nus_dual_unet"):
        build("segnet")


def test_losses_behave():
    target = (torch.rand(2, 1, 16, 16) > 0.5).float()
    good = (target * 2 - 1) * 8  # confident and right
    bad = -good
    assert bce_soft_iou(good, target) < 0.01 < bce_soft_iou(bad, target)
    assert soft_iou(good, target) == pytest.approx(1.0, abs=1e-3)
    two_class = torch.cat([-good, good], dim=1)
    assert cross_entropy(two_class, target[:, 0].long()) < 0.01
    # The soft-IoU term has a gradient that points towards the target.
    logits = torch.zeros(1, 1, 4, 4, requires_grad=True)
    bce_soft_iou(logits, torch.ones(1, 1, 4, 4)).backward()
    assert (logits.grad < 0).all()


def test_checkpoint_round_trip_and_wrong_network(tmp_path):
    torch.manual_seed(0)
    model = SegmentationModel("amll_unet", SMALL_AMLL, [100.0, 110.0, 120.0]).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, window=252)
    again, meta = load_checkpoint(path)
    x = torch.rand(1, 3, 252, 252) * 255
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert meta["window"] == 252 and again.mode == "large"

    with pytest.raises(InputError, match="holds network 'amll_unet', expected 'nus_dual_unet'"):
        load_checkpoint(path, expect_network="nus_dual_unet")
    # Weights of one network under another's name.
    payload = torch.load(path, weights_only=True)
    payload["network"], payload["network_args"] = "nus_dual_unet", SMALL_NUS
    torch.save(payload, tmp_path / "lying.pt")
    with pytest.raises(InputError, match="lying.pt: weights do not fit network 'nus_dual_unet'"):
        load_checkpoint(tmp_path / "lying.pt")
    # Same network, other widths.
    payload = torch.load(path, weights_only=True)
    payload["network_args"] = {"filters": (8, 16, 32, 64, 128)}
    torch.save(payload, tmp_path / "wider.pt")
    with pytest.raises(InputError, match="size mismatch"):
        load_checkpoint(tmp_path / "wider.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(InputError, match="not a footprints checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="junk.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_effnet_distance_head_trains_beside_an_unchanged_served_output():
    torch.manual_seed(0)
    net = build("effnet_unet", decoder=(8, 8, 8, 8, 8), distance_head=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        heads = net.heads(x)
        served = net(x)
    assert heads["distance"].shape == served.shape == (2, 1, 64, 64)
    assert float(heads["distance"].abs().max()) <= 1.0  # tanh, as the signed-distance target
    assert torch.equal(heads["logits"], served)  # serving's graph is the logits alone
    plain = build("effnet_unet", decoder=(8, 8, 8, 8, 8))
    assert set(build("effnet_unet", decoder=(8, 8, 8, 8, 8)).heads(x)) == {"logits"}
    # The head's weights are the only ones added.
    extra = set(net.state_dict()) - set(plain.state_dict())
    assert extra == {"distance.weight", "distance.bias"}


@pytest.mark.parametrize("channels", [1, 2])  # a sigmoid head, a softmax head
def test_consistency_kl_is_zero_for_one_mask_and_moves_only_the_second_view(channels):
    torch.manual_seed(0)
    reference = torch.randn(2, channels, 8, 8, requires_grad=True)
    other = torch.randn(2, channels, 8, 8, requires_grad=True)
    assert consistency_kl(reference, reference.detach().clone()).item() == pytest.approx(0.0, abs=1e-6)
    kl = consistency_kl(reference, other)
    assert kl.item() > 0.01
    kl.backward()
    assert reference.grad is None and other.grad is not None and other.grad.abs().sum() > 0
