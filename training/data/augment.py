"""Online augmentation: flips and 90-degree rotations, the same for every array of a sample.

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


class Augmented(Dataset):
    """Wraps a patch dataset; items are ``(patch_index, sample_number)`` pairs.

    The sample number seeds this sample's flip and rotation.
    """

    def __init__(self, dataset: Dataset, seed: int, flips: bool = True, rotations: bool = True) -> None:
        self.dataset, self.seed, self.flips, self.rotations = dataset, seed, flips, rotations

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
        return sample
