"""The tiling engine: exact large-window stitching, dual-resolution blending,
mirror padding, TTA, nodata, the memory cap and bad input."""

import numpy as np
import pytest
import torch

from service.engines.base import model_inputs
from service.engines.pytorch import TorchEngine
from service.errors import InputError
from service.tiling.engine import ArraySource, EngineConfig, TilingEngine, dihedral, undo_dihedral
from service.tiling.geometry import DualWindows, OverlapWindows
from service.tiling.plans import DualWindowPlan, LargeWindowPlan, grid_offsets, ramp
from training.networks.model import SegmentationModel

SMALL_AMLL = {"filters": (4, 8, 16, 32, 64)}  # same depth, so same 16k+124 geometry
SMALL_NUS = {"channels": (4, 8, 16, 8, 4)}


@pytest.fixture(scope="module")
def amll():
    torch.manual_seed(0)
    return SegmentationModel("amll_unet", SMALL_AMLL, [120.0, 115.0, 110.0]).eval()


@pytest.fixture(scope="module")
def nus():
    torch.manual_seed(1)
    return SegmentationModel("nus_dual_unet", SMALL_NUS, [120.0, 115.0, 110.0]).eval()


def _raster(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (3, h, w), dtype=np.uint8)


def _monolithic(model, rgb):
    """The network once over the whole raster, mirror padded by its margin (and at
    the bottom/right up to the next valid size)."""
    g = model.net.geometry  # the valid-convolution U-Net's size rules
    _, h, w = rgb.shape
    ph, pw = g.smallest_input_for_output(h), g.smallest_input_for_output(w)
    padded = np.pad(rgb, ((0, 0), (g.margin, ph - g.margin - h), (g.margin, pw - g.margin - w)), mode="symmetric")
    with torch.no_grad():
        return model(torch.from_numpy(padded[None].astype(np.float32)))[0, 0].numpy()[:h, :w]


def test_large_windows_stitch_to_exactly_the_monolithic_result(amll):
    rgb = _raster(530, 700)
    engine = TilingEngine(TorchEngine(amll, "cpu"), EngineConfig(window=252, fit_window=False, batch_size=3))
    windows, _, window = engine.plan(530, 700)
    assert window == 252 and len(windows) > 20  # many windows, ragged at the bottom and right
    stitched = engine.probabilities(ArraySource(rgb))
    reference = _monolithic(amll, rgb)
    assert reference.std() > 0.01  # the network's answer varies: equality means something
    np.testing.assert_allclose(stitched, reference, atol=1e-5)


def test_offsets_off_the_stride_would_not_stitch_exactly(amll, monkeypatch):
    """Negative control for the test above: offsets on an 8-px grid break equality."""
    rgb = _raster(300, 300, seed=1)
    engine = TilingEngine(TorchEngine(amll, "cpu"), EngineConfig(window=252, fit_window=False))
    monkeypatch.setattr("service.tiling.geometry.LargeWindowPlan", lambda w, m, s: LargeWindowPlan(w, m, 8))
    assert np.abs(engine.probabilities(ArraySource(rgb)) - _monolithic(amll, rgb)).max() > 1e-3


def test_fitted_window_is_smaller_and_gives_the_same_mask(amll):
    rgb = _raster(420, 400, seed=2)
    exact = TilingEngine(TorchEngine(amll, "cpu"), EngineConfig(window=508, fit_window=False))
    fitted = TilingEngine(TorchEngine(amll, "cpu"), EngineConfig(window=508, fit_window=True))
    w_exact, w_fit = exact.plan(420, 400), fitted.plan(420, 400)
    assert len(w_fit[0]) == len(w_exact[0]) and w_fit[2] < w_exact[2]
    np.testing.assert_allclose(fitted.probabilities(ArraySource(rgb)), exact.probabilities(ArraySource(rgb)), atol=1e-5)


def test_large_window_plan_covers_every_pixel_once():
    plan = LargeWindowPlan(2636, 92, 16)
    for length in (5000, 2452, 2453, 100, 7777):
        axis = plan.axis(length)
        kept = np.zeros(length, int)
        for offset, k0, k1 in axis:
            assert offset % 16 == 0 and offset <= k0 < k1 <= offset + plan.out
            kept[k0:k1] += 1
        assert (kept == 1).all()
    assert len(plan.axis(5000)) == 3


class OffsetBackend:
    """Dual-mode test double: the answer is a known function of the full-resolution
    crop plus a constant error that differs per window, like a real network's edge
    effects. Lets the blending rule be checked against an exact bound."""

    device, name = "cpu", "offset"
    geometry = DualWindows({"cpu": 384})

    def __init__(self, error=0.2, seed=0):
        self.rng = np.random.default_rng(seed)
        self.error = error
        self.calls = []

    def infer(self, inputs):
        assert inputs[1].shape[-1] == 2 * inputs[0].shape[-1]  # context crops come as read
        full, context = model_inputs(inputs)
        self.calls.append(len(full))
        truth = full.mean(axis=1) / 255.0
        offsets = self.rng.uniform(-self.error, self.error, (len(full), 1, 1)).astype(np.float32)
        return truth + offsets

    def window_bytes(self, window):
        return 2 * 3 * window * window * 4

    def close(self):
        pass


def test_dual_windows_cover_every_pixel_and_normalise_exactly():
    rgb = _raster(300, 250, seed=3)
    engine = TilingEngine(OffsetBackend(error=0.0), EngineConfig(window=64, dual_overlap=16, batch_size=5))
    out = engine.probabilities(ArraySource(rgb))
    np.testing.assert_allclose(out, rgb.mean(axis=0) / 255.0, atol=1e-5)


def test_dual_blending_leaves_no_seam_within_the_stated_bound():
    """Per-window errors e in [-0.2, 0.2]. Blended, the error field is a ramp-weighted
    mean of neighbouring windows' e: between two neighbouring pixels it moves by at
    most range(e) * 2 / (overlap + 1) (each ramp moves by 1/(overlap+1) per pixel and
    overlapping weights sum to at least 1). A hard cut (overlap 0) jumps by up to
    range(e) at window borders, which this bound catches."""
    rgb = _raster(320, 320, seed=4)
    truth = rgb.mean(axis=0) / 255.0
    overlap = 16
    blended = TilingEngine(OffsetBackend(), EngineConfig(window=64, dual_overlap=overlap, batch_size=8))
    err = blended.probabilities(ArraySource(rgb)) - truth
    jump = max(np.abs(np.diff(err, axis=0)).max(), np.abs(np.diff(err, axis=1)).max())
    bound = 0.4 * 2 / (overlap + 1)
    assert jump <= bound + 1e-5

    hard = TilingEngine(OffsetBackend(), EngineConfig(window=64, dual_overlap=0, batch_size=8))
    err_hard = hard.probabilities(ArraySource(rgb)) - truth
    assert np.abs(np.diff(err_hard, axis=1)).max() > 2 * bound


def test_dual_windows_read_mirror_padded_context_at_every_edge():
    rgb = _raster(200, 180, seed=5)
    engine = TilingEngine(OffsetBackend(), EngineConfig(window=64, dual_overlap=16))
    windows, plan, _ = engine.plan(200, 180)
    pad = 2 * 64
    padded = np.pad(rgb, ((0, 0), (pad, pad), (pad, pad)), mode="symmetric").astype(np.float32)
    rows = {w.out_row for w in windows}
    cols = {w.out_col for w in windows}
    assert min(rows) == 0 and max(rows) == 200 - 64 and min(cols) == 0 and max(cols) == 180 - 64
    for w in windows:  # every window, corners and edges included
        full, ctx = (x[0] for x in model_inputs([c[None] for c in engine._read(ArraySource(rgb), w)]))
        r, c = w.out_row + pad, w.out_col + pad
        np.testing.assert_array_equal(full, padded[:, r : r + 64, c : c + 64])
        big = padded[:, r - 32 : r + 96, c - 32 : c + 96]
        np.testing.assert_allclose(ctx, big.reshape(3, 64, 2, 64, 2).mean(axis=(2, 4)))
        # The context is centred on the full crop.
        assert w.reads[1][0] == w.reads[0][0] - 32 and w.reads[1][2] == 128


def test_real_dual_network_through_the_engine(nus):
    rgb = _raster(200, 230, seed=6)
    engine = TilingEngine(TorchEngine(nus, "cpu"), EngineConfig(window=64, dual_overlap=16, batch_size=4))
    out = engine.probabilities(ArraySource(rgb))
    assert out.shape == (200, 230) and np.isfinite(out).all()
    assert ((out > 0) & (out < 1)).all() and out.std() > 1e-3


def test_tta_inverts_its_transforms(amll):
    """TTA of a flip/rotation-covariant model equals the plain answer; a model
    that is not (a real U-Net) gives a different, averaged answer."""

    class Covariant(OffsetBackend):
        def infer(self, inputs):
            return inputs[0].astype(np.float32).mean(axis=1) / 255.0

    rgb = _raster(150, 170, seed=7)
    plain = TilingEngine(Covariant(), EngineConfig(window=64, dual_overlap=16)).probabilities(ArraySource(rgb))
    tta = TilingEngine(Covariant(), EngineConfig(window=64, dual_overlap=16, tta=True)).probabilities(ArraySource(rgb))
    np.testing.assert_allclose(tta, plain, atol=1e-6)

    unet = TorchEngine(amll, "cpu")
    p0 = TilingEngine(unet, EngineConfig(window=252)).probabilities(ArraySource(rgb))
    p8 = TilingEngine(unet, EngineConfig(window=252, tta=True)).probabilities(ArraySource(rgb))
    assert np.abs(p8 - p0).max() > 1e-4
    # Averaging 8 views of the same pixel smooths the random network's answer.
    assert p8.std() < p0.std()


class Turned(TorchEngine):
    """The network on every window turned by the ``t``-th symmetry, its answer turned back."""

    def __init__(self, model, t):
        super().__init__(model, "cpu")
        self.t = t

    def infer(self, inputs):
        out = super().infer([np.ascontiguousarray(dihedral(x, self.t)) for x in inputs])
        return np.ascontiguousarray(undo_dihedral(out, self.t))


def test_fewer_tta_passes_average_the_half_or_quarter_turns(amll):
    rgb = _raster(150, 170, seed=7)

    def probabilities(backend, **tta):
        return TilingEngine(backend, EngineConfig(window=252, **tta)).probabilities(ArraySource(rgb))

    turned = {t: probabilities(Turned(amll, t)) for t in range(4)}
    assert min(np.abs(turned[t] - turned[0]).max() for t in (1, 2, 3)) > 1e-4  # each turn answers differently
    unet = TorchEngine(amll, "cpu")
    np.testing.assert_allclose(probabilities(unet, tta_passes=2), (turned[0] + turned[2]) / 2, atol=1e-6)
    np.testing.assert_allclose(probabilities(unet, tta_passes=4), sum(turned.values()) / 4, atol=1e-6)
    assert EngineConfig(tta_passes=4).tta is True  # passes alone ask for TTA
    # What a tile summary reports: the passes averaged per window.
    assert [TilingEngine(unet, EngineConfig(**tta)).tta_passes for tta in ({}, {"tta": True}, {"tta_passes": 2})] == [1, 8, 2]
    with pytest.raises(InputError, match="tta_passes must be one of 2, 4, 8, got 3"):
        EngineConfig(tta_passes=3)
    with pytest.raises(InputError, match="given with TTA turned off"):
        EngineConfig(tta=False, tta_passes=4)


def test_memory_budget_caps_windows_in_flight():
    backend = OffsetBackend()
    per_window = backend.window_bytes(64)
    engine = TilingEngine(backend, EngineConfig(window=64, dual_overlap=16, batch_size=16, memory_budget_bytes=3 * per_window))
    assert engine.windows_in_flight(64) == 3
    engine.probabilities(ArraySource(_raster(300, 300)))
    assert max(backend.calls) == 3 and sum(backend.calls) == len(engine.plan(300, 300)[0])

    tta = OffsetBackend()
    TilingEngine(
        tta, EngineConfig(window=64, dual_overlap=16, batch_size=16, tta=True, memory_budget_bytes=2 * per_window)
    ).probabilities(ArraySource(_raster(200, 200)))
    assert max(tta.calls) == 2

    with pytest.raises(InputError, match="needs about .* GiB, more than the memory budget"):
        TilingEngine(OffsetBackend(), EngineConfig(window=64, memory_budget_bytes=per_window - 1)).windows_in_flight(64)


def test_memory_estimate_of_the_real_network_grows_with_the_window(amll):
    backend = TorchEngine(amll, "cpu")
    small, large = backend.window_bytes(252), backend.window_bytes(508)
    # Activations grow between the inputs' area ratio and the outputs' (valid
    # convolutions shrink every map by a fixed margin).
    assert (508 / 252) ** 2 < large / small < ((508 - 184) / (252 - 184)) ** 2


def test_bad_windows_and_small_rasters_are_refused(amll):
    engine = TilingEngine(TorchEngine(amll, "cpu"), EngineConfig(window=600))
    with pytest.raises(InputError, match="window size 600 is not valid.*588 and 604"):
        engine.plan(1000, 1000)
    ok = TilingEngine(TorchEngine(amll, "cpu"), EngineConfig(window=252))
    with pytest.raises(InputError, match="smaller than the network's 92-px context margin"):
        ok.plan(80, 500)
    with pytest.raises(InputError, match="multiple of 16"):
        TilingEngine(OffsetBackend(), EngineConfig(window=100)).plan(500, 500)
    with pytest.raises(InputError, match="smaller than the dual-resolution context margin of 192"):
        TilingEngine(OffsetBackend(), EngineConfig()).plan(150, 500)


def test_dual_weights_sum_like_the_product_of_axis_sums():
    plan = DualWindowPlan(64, 16)
    rows, cols = plan.weight_sums(200, 150)
    full = np.zeros((200, 150))
    for w in plan.windows(200, 150):
        r0, r1, c0, c1 = w.keep
        full[r0:r1, c0:c1] += np.outer(ramp(64, 16)[: r1 - r0], ramp(64, 16)[: c1 - c0])
    np.testing.assert_allclose(full, np.outer(rows, cols), rtol=1e-6)
    assert len(grid_offsets(200, 64, 16)) * len(grid_offsets(150, 64, 16)) == len(plan.windows(200, 150))


def test_overlap_windows_stitch_close_to_whole_raster_inference(real_oam):
    """Same-padding network (pretrained EfficientNet-Lite0 encoder, random decoder) on a
    real crop: windows that drop a 32-px margin and blend 64 px differ from one pass
    over the whole mirror-padded raster by 1 % on average and flip about 1 % of the
    mask; cutting windows edge to edge (no margin, no blend) is several times worse."""
    import dataclasses

    import rasterio

    from training.networks.model import IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(0)
    model = SegmentationModel("effnet_unet", {"decoder": [32, 24, 16, 16, 8]}, IMAGENET_MEAN, IMAGENET_STD)
    model.net.load_pretrained()
    model.eval()
    with rasterio.open(real_oam / "images/zanzibar2.tif") as src:
        rgb = src.read()[:, :448, :640]
    h, w = rgb.shape[1:]
    margin = model.geometry.margin
    pad_h, pad_w = (-(h + 2 * margin)) % 32, (-(w + 2 * margin)) % 32
    padded = np.pad(rgb, ((0, 0), (margin, margin + pad_h), (margin, margin + pad_w)), mode="symmetric").astype(np.float32)
    with torch.no_grad():
        whole = model(torch.from_numpy(padded[None]))[0, 0].numpy()[margin : margin + h, margin : margin + w]
    assert whole.std() > 0.1  # an answer that varies: agreement means something

    def stitched(spec):
        engine = TilingEngine(TorchEngine(model, "cpu", geometry=spec), EngineConfig(window=256))
        assert len(engine.plan(h, w).windows) > 4
        return engine.probabilities(ArraySource(rgb))

    blended = np.abs(stitched(model.geometry) - whole)
    cut = np.abs(stitched(dataclasses.replace(model.geometry, margin=0, overlap=0)) - whole)
    flips = ((stitched(model.geometry) >= 0.5) != (whole >= 0.5)).mean()
    assert blended.mean() < 0.015 and np.percentile(blended, 99) < 0.15 and flips < 0.015
    assert cut.mean() > 3 * blended.mean() and np.percentile(cut, 99) > 3 * np.percentile(blended, 99)


def test_overlap_plans_fit_small_rasters_and_refuse_bad_windows():
    from service.tiling.plans import OverlapWindowPlan

    spec = OverlapWindows({"cpu": 512}, multiple=32, margin=32, overlap=64)

    class Same(OffsetBackend):
        def infer(self, inputs):
            return inputs[0].astype(np.float32).mean(axis=1) / 255.0

    backend = Same()
    backend.geometry = spec
    rgb = _raster(200, 900, seed=8)
    plan = TilingEngine(backend, EngineConfig()).plan(200, 900)
    assert plan.window < 512 and plan.window % 32 == 0  # fitted: no window mostly mirror
    out = TilingEngine(backend, EngineConfig()).probabilities(ArraySource(rgb))
    np.testing.assert_allclose(out, rgb.mean(axis=0) / 255.0, atol=1e-5)  # blending normalises exactly
    with pytest.raises(InputError, match="multiple of 32, at least 224"):
        OverlapWindowPlan.for_input(200, 32, 64, 32)
