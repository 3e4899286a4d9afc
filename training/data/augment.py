"""Online augmentation: flips and 90-degree rotations, the same for every array of a sample,
and optionally a photometric jitter of the imagery (never of the mask) and a new colour for
the roofs of a patch.

Randomness comes from the sample's running number, not from global state, so a
run resumed at step N sees exactly the batches it would have seen.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


def dihedral_tensor(x: torch.Tensor, flip: bool, quarter_turns: int) -> torch.Tensor:
    """Flip (left-right) then rotate the last two axes."""
    if flip:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, quarter_turns, dims=(-2, -1)) if quarter_turns else x


# Which sample keys hold imagery (uint8 patch, float context): jitter touches only these.
_IMAGERY_KEYS = ("image", "context")


def photometric_tensor(x: torch.Tensor, gains: np.ndarray, offsets: np.ndarray) -> torch.Tensor:
    """Per-band ``x * gain + offset`` on a ``(3, H, W)`` image, clipped to 0..255, dtype kept."""
    g = torch.as_tensor(gains, dtype=torch.float32)[:, None, None]
    o = torch.as_tensor(offsets, dtype=torch.float32)[:, None, None]
    y = (x.float() * g + o).clamp_(0, 255)
    return y.round_().to(torch.uint8) if x.dtype == torch.uint8 else y


def draw_photometric(rng: np.random.Generator, strength: float) -> tuple[np.ndarray, np.ndarray]:
    """A brightness/colour-cast change of the given strength (0.1: about +-10 %).

    One brightness gain for all bands times a smaller gain per band (colour cast), plus a
    per-band offset: a city whose yards, roofs or sensor are tinted differently from the
    training cities must not look like a new world to the network.
    """
    brightness = rng.uniform(1 - strength, 1 + strength)
    cast = rng.uniform(1 - strength / 2, 1 + strength / 2, size=3)
    offsets = rng.uniform(-strength, strength, size=3) * 64.0
    return brightness * cast, offsets


def recolour_roofs(image: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Give the buildings of a uint8 ``(3, H, W)`` patch a new roof colour.

    Every building pixel is shifted by one offset that moves their mean colour to a
    target: half the time the colour of a random ground pixel of the same patch
    (roofs of tar, gravel or concrete look like the yard), else a random colour. Roof
    texture and shading survive the shift; shadows and ground are untouched. Why: a
    network trained on a few cities learns which colours their roofs come in (red roofs
    only on small suburban houses, say) and misses other cities' roofs; this leaves it
    shape, height cues and context to go by.
    """
    roof = mask.bool()
    count = int(roof.sum())
    if count == 0 or count == roof.numel():
        return image
    x = image.float()
    mean = x[:, roof].mean(dim=1)
    if rng.random() < 0.5:
        ground = (~roof).nonzero()
        r, c = ground[int(rng.integers(len(ground)))].tolist()
        target = x[:, r, c]
    else:
        target = torch.as_tensor(rng.uniform(40, 220, size=3), dtype=torch.float32)
    x[:, roof] += (target - mean)[:, None]
    return x.clamp_(0, 255).round_().to(torch.uint8)


class Augmented(Dataset):
    """Wraps a patch dataset; items are ``(patch_index, sample_number)`` pairs.

    The sample number seeds this sample's flip, rotation, photometric jitter
    (``photometric`` is its strength; 0 turns it off) and roof recolouring
    (``roof_recolour`` is the share of patches it touches; 0 turns it off).
    """

    def __init__(
        self,
        dataset: Dataset,
        seed: int,
        flips: bool = True,
        rotations: bool = True,
        photometric: float = 0.0,
        roof_recolour: float = 0.0,
    ) -> None:
        self.dataset, self.seed, self.flips, self.rotations = dataset, seed, flips, rotations
        self.photometric, self.roof_recolour = photometric, roof_recolour

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, number = item
        sample = self.dataset[index]
        rng = np.random.default_rng([self.seed, number, 0xA06])
        flip = bool(self.flips and rng.integers(2))
        turns = int(rng.integers(4)) if self.rotations else 0
        if flip or turns:
            sample = {k: dihedral_tensor(v, flip, turns).contiguous() for k, v in sample.items()}
        # Draws keep their order (flip, turns, jitter, recolour) so that switching on
        # recolouring leaves every other draw of a sample as it was.
        jitter = draw_photometric(rng, self.photometric) if self.photometric > 0 else None
        if self.roof_recolour > 0 and rng.random() < self.roof_recolour:
            if "context" in sample:
                raise ValueError("roof recolouring needs a mask over the whole input; a context crop has none")
            sample["image"] = recolour_roofs(sample["image"], sample["mask"], rng)
        if jitter is not None:
            sample = {k: photometric_tensor(v, *jitter) if k in _IMAGERY_KEYS else v for k, v in sample.items()}
        return sample
