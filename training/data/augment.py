"""Online augmentation: flips and 90-degree rotations, the same for every array of a sample,
and optionally a photometric jitter of the imagery (never of the mask), a new colour for
the roofs of a patch, a colour jitter (contrast, saturation, hue, gamma) and the faults
of other sensors and pipelines (blur or a coarser capture, noise, JPEG).

Randomness comes from the sample's running number, not from global state, so a
run resumed at step N sees exactly the batches it would have seen.
"""

from __future__ import annotations

import io
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
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


# RGB <-> YIQ: hue is an angle in the IQ plane, so a hue shift is one 3x3 matrix.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def draw_colour(rng: np.random.Generator, strength: float) -> tuple[float, float, float, float]:
    """Contrast and saturation factors, a hue angle (radians) and a gamma, of ``strength``
    (0.3: contrast and saturation x0.7-1.3, hue +-0.3 rad, gamma 0.7-1.4)."""
    contrast = rng.uniform(1 - strength, 1 + strength)
    saturation = rng.uniform(1 - strength, 1 + strength)
    hue = rng.uniform(-strength, strength)
    gamma = float(np.exp(rng.uniform(-strength, strength)))
    return contrast, saturation, hue, gamma


def colour_tensor(x: torch.Tensor, contrast: float, saturation: float, hue: float, gamma: float) -> torch.Tensor:
    """Contrast about the mean, saturation and hue in YIQ, then gamma, on ``(3, H, W)``
    imagery in 0..255; dtype kept. Why: sensors and their processing render the same roof
    in other colours and tones (a washed-out satellite chip, a saturated drone mosaic)."""
    y = x.float() / 255.0
    y = (y - y.mean()) * contrast + y.mean()
    c, s = np.cos(hue) * saturation, np.sin(hue) * saturation
    rotate = torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]], dtype=torch.float32)
    y = torch.einsum("ij,jhw->ihw", _YIQ_TO_RGB @ rotate @ _RGB_TO_YIQ, y)
    y = y.clamp_(0, 1).pow_(gamma) * 255.0
    return y.round_().to(torch.uint8) if x.dtype == torch.uint8 else y


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of float ``(C, H, W)``, edges mirrored."""
    radius = max(1, int(np.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[0]
    y = F.pad(x[None], (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(y, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)[0]


def coarser_capture(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Float ``(C, H, W)`` imagery as a capture ``factor`` times coarser shows it once served
    on this grid: down by ``factor`` (antialiased) and up again, bilinear as serving is."""
    h, w = x.shape[-2:]
    small = F.interpolate(x[None], size=(max(1, round(h / factor)), max(1, round(w / factor))), mode="bilinear", antialias=True)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0]


def degrade_tensor(x: torch.Tensor, rng: np.random.Generator, chance: float) -> torch.Tensor:
    """Each of three faults with probability ``chance``, on uint8 ``(3, H, W)`` imagery:

    * softness: a Gaussian blur (sigma 0.5-1.5 px) or a coarser capture brought back to
      this grid (down by 1.3-2.5x, antialiased, and up again), which is what imagery of
      0.4-0.75 m looks like once served at 0.3 m;
    * sensor noise: Gaussian, sigma 2-8 DN;
    * JPEG at quality 30-90 (the blocks and ringing of web-map and OAM tiles).

    The draws happen whether or not a fault is applied, so one switch leaves the others'
    draws alone."""
    soft, kind, amount = rng.random() < chance, rng.random(), rng.uniform()
    noisy, sigma_n, noise_seed = rng.random() < chance, rng.uniform(2, 8), int(rng.integers(2**31))
    jpeg, quality = rng.random() < chance, int(rng.integers(30, 91))
    if not (soft or noisy or jpeg):
        return x
    y = x.float()
    if soft and kind < 0.5:
        y = _gaussian_blur(y, 0.5 + amount)
    elif soft:
        y = coarser_capture(y, 1.3 + 1.2 * amount)
    if noisy:
        g = torch.Generator().manual_seed(noise_seed)
        y = y + sigma_n * torch.randn(y.shape, generator=g)
    y = y.clamp_(0, 255).round_()
    if jpeg:
        buf = io.BytesIO()
        Image.fromarray(y.to(torch.uint8).permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=quality)
        y = torch.from_numpy(np.array(Image.open(buf).convert("RGB"))).permute(2, 0, 1).float()
    return y.to(x.dtype)


class Patches(Protocol):
    """What augmentation wraps: numbered patches (``GridPatchDataset``, ``RandomPatchDataset``)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]: ...


class Augmented(Dataset):
    """Wraps a patch dataset; items are ``(patch_index, sample_number)`` pairs.

    The sample number seeds this sample's flip, rotation, photometric jitter
    (``photometric`` is its strength; 0 turns it off) and roof recolouring
    (``roof_recolour`` is the share of patches it touches; 0 turns it off), colour
    jitter (``colour`` is its strength) and degradation (``degrade`` is the chance of
    each fault; the patch only, a context crop is left sharp). ``coarse_view`` adds
    ``view``: the finished patch again, as a coarser capture.
    """

    def __init__(
        self,
        dataset: Patches,
        seed: int,
        flips: bool = True,
        rotations: bool = True,
        photometric: float = 0.0,
        roof_recolour: float = 0.0,
        colour: float = 0.0,
        degrade: float = 0.0,
        coarse_view: bool = False,
    ) -> None:
        self.dataset, self.seed, self.flips, self.rotations = dataset, seed, flips, rotations
        self.photometric, self.roof_recolour = photometric, roof_recolour
        self.colour, self.degrade, self.coarse_view = colour, degrade, coarse_view

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
        # Drawn after the older augmentations, so configs without these see what they saw.
        if self.colour > 0:
            tone = draw_colour(rng, self.colour)
            sample = {k: colour_tensor(v, *tone) if k in _IMAGERY_KEYS else v for k, v in sample.items()}
        if self.degrade > 0:
            sample["image"] = degrade_tensor(sample["image"], rng, self.degrade)
        if self.coarse_view:
            # The same patch 1.3-2.5x coarser (0.4-0.75 m imagery served at 0.3 m), for the
            # loss that asks both to give one mask (optim.consistency_weight).
            view = coarser_capture(sample["image"].float(), float(rng.uniform(1.3, 2.5)))
            sample["view"] = view.round_().to(sample["image"].dtype)
        return sample
