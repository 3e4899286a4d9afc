"""Online augmentation: geometry moves image and mask together, jitter touches imagery only,
and every draw is a function of the sample number (so resumed runs see the same batches)."""

import numpy as np
import pytest
import torch

from training.data.augment import Augmented


class _OnePatch:
    """A patch whose mask marks exactly the bright pixels of its image."""

    def __init__(self, context: bool = True) -> None:
        self.context = context
        rng = np.random.default_rng(3)
        self.mask = torch.from_numpy((rng.random((16, 16)) > 0.6).astype(np.uint8))
        image = 40 + 150 * self.mask[None].repeat(3, 1, 1)
        self.image = image.to(torch.uint8)

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i):
        sample = {"image": self.image.clone(), "mask": self.mask.clone()}
        if self.context:
            sample["context"] = self.image.float()
        return sample


def test_flips_and_rotations_keep_image_and_mask_aligned():
    aug = Augmented(_OnePatch(), seed=0, flips=True, rotations=True)
    seen = set()
    for number in range(40):
        s = aug[(0, number)]
        assert torch.equal(s["image"][0] > 100, s["mask"].bool())
        seen.add(s["mask"].numpy().tobytes())
    assert len(seen) == 8  # all eight dihedral variants of an asymmetric mask turn up


def test_photometric_jitter_changes_imagery_only_and_is_reproducible():
    base = _OnePatch()
    aug = Augmented(base, seed=0, flips=False, rotations=False, photometric=0.2)
    a, again, other = aug[(0, 5)], aug[(0, 5)], aug[(0, 6)]
    assert torch.equal(a["image"], again["image"]) and not torch.equal(a["image"], other["image"])
    assert torch.equal(a["mask"], base.mask)
    assert a["image"].dtype == torch.uint8 and a["context"].dtype == torch.float32
    assert not torch.equal(a["image"], base.image)
    # The same draw for patch and context, and buildings stay brighter than ground.
    assert (a["context"] - a["image"].float()).abs().max() <= 0.5
    assert torch.equal(a["image"][0] > a["image"][0].float().mean(), base.mask.bool())
    gains = [aug[(0, n)]["image"].float().mean() / base.image.float().mean() for n in range(50)]
    # Brightness +-20 % times a cast of +-10 % plus offsets of +-13 DN: within about +-45 %.
    assert 0.55 < min(gains) < 0.95 and 1.05 < max(gains) < 1.45


def test_photometric_strength_zero_is_off():
    base = _OnePatch()
    s = Augmented(base, seed=0, flips=False, rotations=False, photometric=0.0)[(0, 5)]
    assert torch.equal(s["image"], base.image) and torch.equal(s["context"], base.image.float())


def test_roof_recolouring_moves_roof_pixels_only_and_keeps_their_texture():
    base = _OnePatch(context=False)
    # Roofs with a texture (two shades) so that "texture survives" can be checked.
    base.image[:, :, ::2] = torch.where(base.mask[:, ::2].bool(), base.image[:, :, ::2] + 20, base.image[:, :, ::2])
    aug = Augmented(base, seed=0, flips=False, rotations=False, roof_recolour=1.0)
    roof, ground = base.mask.bool(), ~base.mask.bool()
    targets = []
    for number in range(30):
        s = aug[(0, number)]
        assert torch.equal(s["mask"], base.mask)
        assert torch.equal(s["image"][:, ground], base.image[:, ground])  # ground untouched
        before, after = base.image[:, roof].float(), s["image"][:, roof].float()
        shift = after - before
        unclipped = (after > 0).all(0) & (after < 255).all(0)
        # One offset per band for every roof pixel: the roof's texture is kept.
        assert (shift[:, unclipped] - shift[:, unclipped][:, :1]).abs().max() <= 1
        targets.append(tuple(after.mean(1).round().tolist()))
    ground_colour = tuple(base.image[:, ground][:, 0].float().tolist())
    # Half the time a ground pixel's colour, else a random one: both kinds turn up.
    near_ground = [t for t in targets if max(abs(a - b) for a, b in zip(t, ground_colour)) <= 10]
    assert 5 <= len(near_ground) <= 25 and len(set(targets)) > 10
    assert torch.equal(aug[(0, 3)]["image"], aug[(0, 3)]["image"])  # reproducible per sample


def test_roof_recolouring_share_and_draw_order():
    base = _OnePatch(context=False)
    half = Augmented(base, seed=0, flips=True, rotations=True, photometric=0.2, roof_recolour=0.5)
    none = Augmented(base, seed=0, flips=True, rotations=True, photometric=0.2)
    changed = 0
    for number in range(200):
        a, b = half[(0, number)], none[(0, number)]
        assert torch.equal(a["mask"], b["mask"])  # same flips and turns with recolouring on
        roof_same = torch.equal(a["image"][:, a["mask"].bool()], b["image"][:, b["mask"].bool()])
        ground_same = torch.equal(a["image"][:, ~a["mask"].bool()], b["image"][:, ~b["mask"].bool()])
        assert ground_same  # same jitter draw: ground pixels identical either way
        changed += not roof_same
    assert 70 <= changed <= 130  # about half the patches


def test_roof_recolouring_refuses_a_context_crop():
    base = _OnePatch()
    aug = Augmented(base, seed=0, flips=False, rotations=False, roof_recolour=1.0)
    with pytest.raises(ValueError, match="needs a mask over the whole input"):
        aug[(0, 1)]


def test_a_coarse_view_is_the_finished_patch_without_its_detail_and_moves_no_other_draw():
    base = _OnePatch(context=False)
    kwargs = dict(seed=0, flips=True, rotations=True, photometric=0.2, colour=0.3, degrade=0.5)
    plain, paired = Augmented(base, **kwargs), Augmented(base, **kwargs, coarse_view=True)
    for number in range(6):
        a, b = plain[(0, number)], paired[(0, number)]
        # Every other draw is as it was without the view: the patch and mask are unchanged.
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        view, image = b["view"].float(), b["image"].float()
        assert b["view"].shape == b["image"].shape and b["view"].dtype == torch.uint8
        # The same scene (its mean brightness kept), with less pixel-to-pixel detail.
        assert abs(view.mean() - image.mean()) < 3
        assert view.diff(dim=-1).abs().mean() < 0.8 * image.diff(dim=-1).abs().mean()
    assert not torch.equal(paired[(0, 1)]["view"], paired[(0, 2)]["view"])
