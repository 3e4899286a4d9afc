"""``footprints train``: the paper recipes, resumable, on one process or under torchrun.

A run directory holds ``last.pt`` (everything needed to resume: weights,
optimizer, step), ``model.pt`` (what serving needs), ``log.csv`` and
``curves.png``. Batches are a pure function of the step (see
:mod:`training.data.sampling`), so a run killed and resumed from its last
checkpoint trains exactly as if it had never stopped.
"""

from __future__ import annotations

import copy
import csv
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader
from tqdm import tqdm

from service.errors import InputError

from .config import TrainConfig
from .data.augment import Augmented
from .data.distance import signed_distance_batch
from .data.inria import Tile, mean_rgb, validation_split
from .data.patches import GridPatchDataset, PatchGrid, RandomPatchDataset
from .data.sampling import StepBatchSampler
from .data.sources import Root, load_sources
from .networks import network_class
from .networks.losses import bce_jaccard, bce_soft_iou, consistency_kl, cross_entropy, distance_l1
from .networks.model import IMAGENET_MEAN, IMAGENET_STD, SegmentationModel, load_checkpoint, read_checkpoint, save_checkpoint

# A run directory's training record (publish copies it beside the model).
LOG_CSV, CURVES_PNG = "log.csv", "curves.png"
LOG_FIELDS = ["step", "epoch", "loss", "lr", "seconds_per_step", "val_iou", "val_accuracy"]


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0


def _start_ranks() -> Ranks:
    """One process, or one of ``torchrun``'s (gloo on CPU, NCCL on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world == 1:
        return Ranks(device="cuda" if cuda else "cpu")
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, local = dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    else:
        # Ranks share the machine's cores instead of each taking all of them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    return Ranks(rank, world, f"cuda:{local}" if cuda else "cpu")


def code_version() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _set_learning_rates(cfg: TrainConfig, optimizer: torch.optim.Optimizer, step: int) -> float:
    """Every group's lr at ``step``: the encoder's scaled by its factor, and 0 while frozen."""
    lr = learning_rate(cfg, step)
    for g in optimizer.param_groups:
        if g.get("encoder"):
            g["lr"] = 0.0 if step < cfg.optim.freeze_encoder_steps else lr * cfg.optim.encoder_lr_factor
        else:
            g["lr"] = lr
    return lr


def _param_groups(model: SegmentationModel) -> list[dict[str, Any]]:
    """The pretrained encoder (where the network has one) apart from the rest."""
    encoder = getattr(model.net, "encoder", None)
    if encoder is None:
        return [{"params": list(model.parameters())}]
    mine = {id(p) for p in encoder.parameters()}
    return [
        {"params": list(encoder.parameters()), "encoder": True},
        {"params": [p for p in model.parameters() if id(p) not in mine]},
    ]


def _optimizer(cfg: TrainConfig, model: SegmentationModel) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.optimizer == "sgd":
        return torch.optim.SGD(_param_groups(model), lr=o.learning_rate, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.Adam(
        _param_groups(model), lr=o.learning_rate, betas=(o.adam_beta1, o.adam_beta2), weight_decay=o.weight_decay
    )


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The lr at ``step``: a pure function, so resuming needs no scheduler state."""
    o, s = cfg.optim, cfg.schedule
    if o.lr_policy == "step":
        return o.learning_rate * (o.lr_step_factor if step // s.steps_per_epoch >= o.lr_step_epoch else 1.0)
    return o.learning_rate * (1 - step / cfg.total_steps) ** o.poly_power


_Tensors = list[torch.Tensor] | tuple[torch.Tensor, ...]


def _ema(model: SegmentationModel, decay: float) -> AveragedModel:
    """torch's weight average with an exponential decay that warms up (as timm's model EMA
    does): while few steps are averaged, the newest weights count for more, so the random
    decoder of step 0 does not linger in what is served. Buffers (batch-norm statistics)
    are averaged too."""

    @torch.no_grad()
    def update(averaged: _Tensors, current: _Tensors, n: torch.Tensor | int) -> None:
        # torch calls this once per device and dtype; batch norm's step counters are
        # integers, and keep the latest count.
        if averaged[0].is_floating_point():
            d = min(decay, (1 + int(n)) / (10 + int(n)))
            torch._foreach_lerp_(list(averaged), list(current), 1 - d)
        else:
            torch._foreach_copy_(list(averaged), list(current))

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


class _Heads(nn.Module):
    """DDP wraps ``forward``; training needs the model's raw heads, not probabilities."""

    def __init__(self, model: SegmentationModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, *rgb: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.heads(*rgb)


def _centre(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # Valid convolutions answer for the centre of the patch only: crop the mask to it.
    dh, dw = (mask.shape[-2] - like.shape[-2]) // 2, (mask.shape[-1] - like.shape[-1]) // 2
    return mask[:, dh : dh + like.shape[-2], dw : dw + like.shape[-1]]


def _segmentation_loss(cfg: TrainConfig, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if cfg.optim.loss == "cross_entropy":
        return cross_entropy(logits, target.long())
    if cfg.optim.loss == "bce_jaccard":
        return bce_jaccard(logits, target[:, None].float())
    return bce_soft_iou(logits, target[:, None].float())


def _loss(cfg: TrainConfig, heads: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """The config's loss on the class head, plus the SDT term (method 3) and the first
    stage's loss (method 4) where their weights are set."""
    o = cfg.optim
    logits = heads["logits"].float()
    target = _centre(mask, logits)
    loss = _segmentation_loss(cfg, logits, target)
    if o.distance_weight > 0:
        if "distance" not in heads:
            raise InputError(
                "optim.distance_weight needs a network with a distance head (segnet_sdt, or effnet_unet with distance_head: true)"
            )
        sdt = signed_distance_batch(target, o.distance_clip_px).to(logits.device)
        loss = loss + o.distance_weight * distance_l1(heads["distance"].float(), sdt)
    if o.aux_loss_weight > 0:
        loss = loss + o.aux_loss_weight * _segmentation_loss(cfg, heads["stage1"].float(), target)
    return loss


def _paired_loss(cfg: TrainConfig, heads: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Heads of a batch of patches followed by their coarser views: the mean of the two
    halves' losses, plus the weighted pull of each view's mask towards its patch's."""
    n = mask.shape[0]
    patch = {k: v[:n] for k, v in heads.items()}
    view = {k: v[n:] for k, v in heads.items()}
    pull = consistency_kl(patch["logits"].float(), view["logits"].float())
    return (_loss(cfg, patch, mask) + _loss(cfg, view, mask)) / 2 + cfg.optim.consistency_weight * pull


def _patches(cfg: TrainConfig, tiles: list[Tile], weights: list[float], dual: bool) -> tuple[Augmented, int | None]:
    d = cfg.data
    base: GridPatchDataset | RandomPatchDataset
    if d.sampler == "grid":
        base = GridPatchDataset(tiles, PatchGrid(d.patch_px, d.grid_overlap_px, d.tile_pad_px))
        pool: int | None = len(base)
    else:
        zoom = (d.augment_scale[0], d.augment_scale[1])
        base, pool = RandomPatchDataset(tiles, d.patch_px, cfg.schedule.seed, weights, context=dual, scale=zoom), None
    aug = Augmented(
        base,
        cfg.schedule.seed,
        d.augment_flips,
        d.augment_rotations,
        d.augment_photometric,
        d.augment_roof_recolour,
        d.augment_colour,
        d.augment_degrade,
        coarse_view=cfg.optim.consistency_weight > 0,
    )
    return aug, pool


def validate(model: SegmentationModel, tiles: list[Tile], window: int, progress: bool = False) -> dict[str, Any]:
    """The benchmark's way: whole tiles through the tiling engine, pooled IoU/accuracy."""
    from service.engines.pytorch import TorchEngine
    from service.outputs.segment import segment_file
    from service.tiling.engine import EngineConfig, TilingEngine

    from .evaluate import evaluate_pairs

    engine = TilingEngine(
        TorchEngine(copy.deepcopy(model).eval(), "cpu" if not torch.cuda.is_available() else None),
        EngineConfig(window=window, dual_overlap=min(64, window // 4)),
    )
    with tempfile.TemporaryDirectory(prefix="footprints-val-") as tmp:
        pairs = {}
        for t in tqdm(tiles, desc="validate", unit="tile", disable=not progress, leave=False):
            pred = Path(tmp) / t.image.name
            segment_file(engine, t.image, pred, progress=False)
            pairs[t.image.name] = (pred, t.gt)
        return evaluate_pairs(pairs, progress=False).as_dict()


def _past(deadline: float | None, ranks: Ranks) -> bool:
    """Whether the deadline has passed, on every rank alike (rank 0's clock decides)."""
    if deadline is None:
        return False
    flag = torch.tensor([time.monotonic() >= deadline], dtype=torch.int32, device=ranks.device)
    if ranks.world > 1:
        dist.broadcast(flag, 0)
    return bool(flag.item())


def _param_checksum(model: nn.Module) -> float:
    return float(sum(p.detach().double().abs().sum() for p in model.parameters()))


def _gather_checksums(model: nn.Module, ranks: Ranks) -> list[float]:
    """Every rank's weight checksum; DDP keeps them identical, and this proves it."""
    mine = torch.tensor([_param_checksum(model)], dtype=torch.float64)
    if ranks.world == 1:
        return [mine.item()]
    out = [torch.zeros_like(mine) for _ in range(ranks.world)]
    dist.all_gather(out, mine)
    return [t.item() for t in out]


class _Log:
    """log.csv, trimmed on resume to the checkpointed step so no row is doubled."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        rows = []
        if resume_step is not None and path.is_file():
            with path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, LOG_FIELDS)
            w.writeheader()
            w.writerows(rows)

    def write(self, **row: Any) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, LOG_FIELDS).writerow({k: row.get(k, "") for k in LOG_FIELDS})


def plot_curves(log_csv: Path, out_png: Path) -> None:
    """Training loss and validation IoU against step, for people to look at."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with log_csv.open() as f:
        rows = list(csv.DictReader(f))
    train = [(int(r["step"]), float(r["loss"])) for r in rows if r["loss"]]
    val = [(int(r["step"]), 100 * float(r["val_iou"])) for r in rows if r["val_iou"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        a.plot(*zip(*train))
    a.set(xlabel="step", ylabel="training loss", title="loss")
    a.set_yscale("log")
    if val:
        b.plot(*zip(*val), marker="o")
    b.set(xlabel="step", ylabel="IoU %", title="validation IoU (whole tiles, pooled)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def train(
    cfg: TrainConfig,
    data: str | Path | Root | list[Root],
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    init: Path | None = None,
    holdout: list[str] | None = None,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Train per ``cfg`` on one or more dataset roots; returns the final checkpoint's
    metadata. ``init``: start from this checkpoint's weights (fine-tuning; a fresh
    optimiser at step 0). ``holdout``: areas left out, besides the config's.
    ``deadline`` (a ``time.monotonic()`` value): stop after the step that passes it, saved
    and resumable, so a budget holds even when the machine slows after it was sized."""
    roots = data if isinstance(data, list) else [data if isinstance(data, Root) else Root(Path(data))]
    run_dir = Path(run_dir)
    for root in roots:
        if not root.path.exists():
            raise InputError(f"{root.path}: dataset path does not exist")
    ranks = _start_ranks()
    try:
        holdout = [*cfg.data.holdout_areas, *(holdout or [])]
        return _train(cfg, roots, run_dir, resume, progress, ranks, init, holdout, deadline)
    finally:
        if ranks.world > 1:
            dist.destroy_process_group()


def _train(
    cfg: TrainConfig,
    roots: list[Root],
    run_dir: Path,
    resume: bool,
    progress: bool,
    ranks: Ranks,
    init: Path | None,
    holdout: list[str],
    deadline: float | None,
) -> dict[str, Any]:
    s, d = cfg.schedule, cfg.data
    sources = load_sources(roots, d.same_area, holdout, d.resample_to_m or None)
    fit_tiles, val_tiles = validation_split(sources.tiles, d.validation_tile_indices)
    weight_of = {id(t): w for t, w in zip(sources.tiles, sources.weights)}
    if not fit_tiles:
        raise InputError(
            f"{[str(r.path) for r in roots]}: no training tiles left after holding out tiles {d.validation_tile_indices}"
        )
    start_from = None
    if init is not None and not resume:
        start_from, _ = load_checkpoint(init, expect_network=cfg.network.name)
    # What a pretrained encoder's weights were trained on, where its network says.
    pretrained_normalisation = getattr(network_class(cfg.network.name), "pretrained_normalisation", None)
    if start_from is not None:
        # Fine-tuning keeps the normalisation its weights were learnt against.
        mean, std = start_from.mean.flatten().tolist(), start_from.std_rgb
    elif d.imagenet_normalisation:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif cfg.network.pretrained and pretrained_normalisation is not None:
        mean, std = pretrained_normalisation
    else:
        mean = mean_rgb(fit_tiles, progress=progress and ranks.main).tolist() if d.subtract_global_mean else [0.0] * 3
        std = None

    torch.manual_seed(s.seed)
    model = SegmentationModel(cfg.network.name, cfg.network.args, mean, std).to(ranks.device)
    if start_from is not None:
        model.net.load_state_dict(start_from.net.state_dict())
    elif cfg.network.pretrained and not resume:
        load_pretrained = getattr(model.net, "load_pretrained", None)
        if load_pretrained is None:
            raise InputError(f"network '{cfg.network.name}' has no pretrained weights to start from")
        load_pretrained()
    bf16 = cfg.optim.precision == "bf16"
    # channels_last is oneDNN's preferred layout: bf16 convolutions are fast in it, and
    # fp32 steps took 7 % less time than in NCHW on a 2-core AVX2 CPU.
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit it
    optimizer = _optimizer(cfg, model)
    ema = _ema(model, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
    start = 0
    last = run_dir / "last.pt"
    if resume:
        if not last.is_file():
            raise InputError(f"{last}: nothing to resume (no checkpoint in the run directory)")
        state = read_checkpoint(last)
        model.net.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start = int(state["step"])
        if ranks.main:
            print(f"resuming {run_dir} at step {start}")
    run_dir.mkdir(parents=True, exist_ok=True)
    log = _Log(run_dir / LOG_CSV, start if resume else None) if ranks.main else None

    net: nn.Module = _Heads(model)
    if ranks.world > 1:
        net = DistributedDataParallel(net, device_ids=[ranks.device] if ranks.device.startswith("cuda") else None)
    data, pool = _patches(cfg, fit_tiles, [weight_of[id(t)] for t in fit_tiles], bool(model.geometry.context))
    sampler = StepBatchSampler(pool, s.batch_size, cfg.total_steps, s.seed, start, ranks.rank, ranks.world)
    workers = cfg.data.loader_workers
    loader = DataLoader(data, batch_sampler=sampler, num_workers=workers, persistent_workers=workers > 0)

    meta_base: dict[str, Any] = {
        "config": cfg.as_dict(),
        "code_version": code_version(),
        "window": {"mode": model.mode, "validation_window_px": s.validation_window_px},
        "data": {
            "root": str(roots[0].path),
            "roots": [{"path": str(r.path), "weight": r.weight} for r in roots],
            "holdout_areas": sorted(holdout),
            "init": str(init) if init else None,
            "sampling": sources.describe(),
            "train_tiles": [t.name for t in fit_tiles],
            "validation_tiles": [t.name for t in val_tiles],
        },
    }
    # what validation scores and model.pt holds
    served: SegmentationModel = model if ema is None else cast(SegmentationModel, ema.module)
    metrics: dict[str, Any] = {}
    running, since, t0 = 0.0, 0, time.perf_counter()
    bar = tqdm(total=cfg.total_steps, initial=start, desc=f"train {cfg.name}", unit="step", disable=not (progress and ranks.main))
    model.train()
    done = start
    for step, batch in enumerate(loader, start=start):
        lr = _set_learning_rates(cfg, optimizer, step)
        inputs = [batch["image"].to(ranks.device).float()]
        if "view" in batch:  # one pass over patches and views: batch norm sees both
            inputs = [torch.cat([inputs[0], batch["view"].to(ranks.device).float()])]
        if "context" in batch:
            inputs.append(batch["context"].to(ranks.device).float())
        inputs = [x.contiguous(memory_format=torch.channels_last) for x in inputs]
        with torch.autocast(ranks.device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            heads = net(*inputs)
        mask = batch["mask"].to(ranks.device)
        loss = _paired_loss(cfg, heads, mask) if "view" in batch else _loss(cfg, heads, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update_parameters(model)
        running += loss.item()
        since += 1
        bar.update(1)
        done = step + 1
        out_of_time = done < cfg.total_steps and _past(deadline, ranks)
        if log is not None and (done % s.log_every_steps == 0 or done == cfg.total_steps or out_of_time):
            sec = (time.perf_counter() - t0) / since
            log.write(
                step=done,
                epoch=f"{done / s.steps_per_epoch:.3f}",
                loss=f"{running / since:.5f}",
                lr=f"{lr:.3g}",
                seconds_per_step=f"{sec:.3f}",
            )
            bar.set_postfix(loss=f"{running / since:.4f}", s_per_step=f"{sec:.2f}")
            running, since, t0 = 0.0, 0, time.perf_counter()
        if done % s.validate_every_steps == 0 or done == cfg.total_steps:
            if log is not None and val_tiles:
                served.eval()
                metrics = validate(served, val_tiles, s.validation_window_px, progress)
                model.train()
                log.write(step=done, val_iou=metrics["overall"]["iou"], val_accuracy=metrics["overall"]["accuracy"])
        if done % s.checkpoint_every_steps == 0 or done == cfg.total_steps or out_of_time:
            checksums = _gather_checksums(model, ranks)
            if len(set(checksums)) != 1:
                raise RuntimeError(f"ranks' weights diverged at step {done}: {checksums}")
            if ranks.main:
                resumable: dict[str, Any] = {"step": done, "optimizer": optimizer.state_dict()}
                if ema is not None:
                    resumable["ema"] = ema.state_dict()
                save_checkpoint(last, model, **resumable, metrics=metrics, rank_param_checksums=checksums, **meta_base)
                plot_curves(run_dir / LOG_CSV, run_dir / CURVES_PNG)
            if ranks.world > 1:
                dist.barrier()
        if out_of_time:
            if ranks.main:
                print(f"stopped at step {done} of {cfg.total_steps}: the deadline passed")
            break
    bar.close()
    meta: dict[str, Any] = {"step": done, "metrics": metrics, **meta_base}
    if done < cfg.total_steps:
        meta["stopped_at_deadline"] = True
    if ranks.main:
        save_checkpoint(run_dir / "model.pt", served, **meta)
    return meta
