"""Online augmentation: flips and 90-degree rotations, the same for every array of a sample,
and optionally a photometric jitter of the imagery (never of the mask).

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


class Augmented(Dataset):
    """Wraps a patch dataset; items are ``(patch_index, sample_number)`` pairs.

    The sample number seeds this sample's flip, rotation and photometric jitter
    (``photometric`` is its strength; 0 turns it off).
    """

    def __init__(self, dataset: Dataset, seed: int, flips: bool = True, rotations: bool = True,
                 photometric: float = 0.0) -> None:
        self.dataset, self.seed, self.flips, self.rotations = dataset, seed, flips, rotations
        self.photometric = photometric

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
        if self.photometric > 0:
            gains, offsets = draw_photometric(rng, self.photometric)
            sample = {k: photometric_tensor(v, gains, offsets) if k in _IMAGERY_KEYS else v
                      for k, v in sample.items()}
        return sample
