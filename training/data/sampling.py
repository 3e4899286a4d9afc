"""Which patches go into which mini-batch, as a pure function of the step.

Method 1 draws mini-batches at random from the pool of all grid patches; here the
pool is shuffled once per pass (a permutation seeded by the pass number) and cut
into consecutive batches. Under DistributedDataParallel each rank takes its own
slice of every global batch. A run resumed at ``start_step`` continues with
exactly the batch it would have drawn next.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields, per step, this rank's ``[(patch_index, sample_number), ...]``.

    ``pool_size``: patches in the pool; ``None`` for datasets that draw their own
    random patch from the sample number (the index is then the number itself).
    """

    def __init__(
        self,
        pool_size: int | None,
        batch_size: int,
        total_steps: int,
        seed: int,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.pool_size, self.batch_size, self.total_steps = pool_size, batch_size, total_steps
        self.seed, self.start_step, self.rank, self.world_size = seed, start_step, rank, world_size
        self._perms: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.total_steps - self.start_step

    def _index(self, number: int) -> int:
        if self.pool_size is None:
            return number
        rnd, pos = divmod(number, self.pool_size)
        if rnd not in self._perms:
            self._perms = {rnd: np.random.default_rng([self.seed, rnd, 0x5A]).permutation(self.pool_size)}
        return int(self._perms[rnd][pos])

    def batch(self, step: int) -> list[tuple[int, int]]:
        """This rank's samples at ``step``."""
        global_batch = self.batch_size * self.world_size
        first = step * global_batch + self.rank * self.batch_size
        return [(self._index(n), n) for n in range(first, first + self.batch_size)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.total_steps):
            yield self.batch(step)
