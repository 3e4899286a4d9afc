"""Online augmentation: geometry moves image and mask together, jitter touches imagery only,
and every draw is a function of the sample number (so resumed runs see the same batches)."""

import numpy as np
import torch

from training.data.augment import Augmented


class _OnePatch:
    """A patch whose mask marks exactly the bright pixels of its image."""

    def __init__(self) -> None:
        rng = np.random.default_rng(3)
        self.mask = torch.from_numpy((rng.random((16, 16)) > 0.6).astype(np.uint8))
        image = 40 + 150 * self.mask[None].repeat(3, 1, 1)
        self.image = image.to(torch.uint8)

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i):
        return {"image": self.image.clone(), "context": self.image.float(), "mask": self.mask.clone()}


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
