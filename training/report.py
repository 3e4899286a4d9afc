"""``footprints report``: the store's models side by side, shaped like the paper's Table 2.

Every model (newest version of each, or a given list) is scored the benchmark's way
(IoU and accuracy pooled per area and overall) through the serving engine, as served
(ONNX Runtime, the model's own TTA setting): on the synthetic test cities and on every
real area it did not train on. An area a model trained on is scored by the model's
leave-one-area-out run where its version folder has one (``loao.json``); otherwise it
is left out ("seen"), because a fit is not a measure. The held-out areas every model
has in common get a pooled column of their own, the fairest single comparison.

Synthetic test figures that publish recorded for exactly these tiles (the version's
``metrics.json``, counted by the same scoring through the same engine) are reused rather
than recomputed; ``--rescore`` recomputes them.

Beside the accuracy: what a 5000 x 5000 tile costs. MACs per output pixel counted on
the network at the window plan the service uses for such a tile (overlaps, margins
and TTA's eight passes included), and the seconds one such tile took here, one run.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from service.engines import open_engine
from service.store.repository import ModelEntry, ModelStore
from service.tiling.engine import ArraySource, TilingEngine

from .data.inria import InriaDataset, parse_tile_name
from .data.sources import Root, area_of
from .loao import OBJECTS, area_tiles, read_json
from .metric import Counts, pooled
from .networks.cost import window_cost
from .networks.model import load_checkpoint
from .objects import ObjectCounts
from .publish import CARD, score

METHODS = {
    "amll_unet": "AMLL (Duke)",
    "nus_dual_unet": "NUS",
    "segnet_sdt": "ONERA",
    "stacked_unet": "Raisa",
    "fcn_mlp": "Inria baseline (FCN + MLP)",
    "effnet_unet": "EfficientNet-Lite0 U-Net (ours)",
}
TILE_SIDE = 5000


@dataclass
class ModelRow:
    name: str
    version: int
    network: str
    synthetic: dict[str, Counts] = field(default_factory=dict)
    real: dict[str, Counts] = field(default_factory=dict)  # held-out areas only
    real_source: dict[str, str] = field(default_factory=dict)  # "held out" or "loao"; "seen": trained on, unscored
    real_objects: dict[str, ObjectCounts] = field(default_factory=dict)  # buildings matched, where scored
    synthetic_source: str = "scored"  # or "recorded": publish's counts for the same tiles
    parameters: int = 0
    kmac_per_px: float = 0.0
    seconds_per_tile: float | None = None
    train_minutes: float | None = None
    tta: bool = False
    # Leave-one-area-out IoU per area at each resolution scored ({0.3: {area: Counts}}):
    # the recipe trained without each area, the yardstick the default is chosen by.
    yardstick: dict[float, dict[str, Counts]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"

    @property
    def method(self) -> str:
        return METHODS.get(self.network, self.network)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.label,
            "method": self.method,
            "network": self.network,
            "synthetic": {k: v.as_dict() for k, v in self.synthetic.items()},
            "synthetic_source": self.synthetic_source,
            "real": {k: v.as_dict() for k, v in self.real.items()},
            "real_source": self.real_source,
            "real_objects": {k: v.as_dict() for k, v in self.real_objects.items()},
            "parameters": self.parameters,
            "kmac_per_output_px": self.kmac_per_px,
            "seconds_per_5000_tile": self.seconds_per_tile,
            "train_minutes": self.train_minutes,
            "tta": self.tta,
            "yardstick": {f"{r:g}": {a: c.as_dict() for a, c in cells.items()} for r, cells in self.yardstick.items()},
        }


# The yardstick's resolutions: the training data's and the two a user most often brings
# (municipal orthophotos near 0.15 m, NAIP-like 0.6 m).
YARDSTICK_M = (0.3, 0.15, 0.6)
SLOWEST = 1.5  # a candidate default may take at most this many times the current one's tile time


def yardstick_figures(row: ModelRow) -> dict[str, float] | None:
    """Pooled leave-one-area-out IoU at each yardstick resolution, the worst area at
    any of them, and the worst pooled figure; None unless every resolution was scored on
    the same areas."""
    cells = [row.yardstick.get(r) for r in YARDSTICK_M]
    if any(not c for c in cells) or len({frozenset(c) for c in cells if c}) != 1:
        return None
    pooled_iou = {f"{r:g} m": pooled(list(c.values())).iou for r, c in zip(YARDSTICK_M, cells, strict=True) if c}
    worst_area = min(x.iou for c in cells if c for x in c.values())
    return {**pooled_iou, "worst area": worst_area, "worst resolution": min(pooled_iou.values())}


def choose_default(rows: Sequence[ModelRow], current: str | None) -> tuple[ModelRow | None, str]:
    """The row the store's default should be, and why: among the models with the whole
    yardstick, the best pooled IoU at its worst resolution (a model must hold at every
    resolution a user brings, not shine at one), no slower than :data:`SLOWEST` times
    the current default where both were timed."""
    now = next((r for r in rows if r.name == current), None)
    limit = now.seconds_per_tile * SLOWEST if now is not None and now.seconds_per_tile else None
    scored = [(r, f) for r in rows if (f := yardstick_figures(r)) is not None]
    if not scored:
        return None, "no model has leave-one-area-out scores at every yardstick resolution"
    fast = [(r, f) for r, f in scored if limit is None or r.seconds_per_tile is None or r.seconds_per_tile <= limit]
    if not fast:
        return None, f"every model with the yardstick takes over {SLOWEST}x the current default's tile time"
    best, figures = max(fast, key=lambda rf: (rf[1]["worst resolution"], rf[1]["0.3 m"]))
    kept = {r.label for r, _ in fast}
    slow = [r.label for r, _ in scored if r.label not in kept]
    why = (
        f"{best.label}: pooled leave-one-area-out IoU {100 * figures['worst resolution']:.2f} % at its worst resolution, "
        f"the best of {len(scored)} model(s) with the yardstick"
        + (f" ({', '.join(slow)} left out: over {SLOWEST}x the current default's tile time)" if slow else "")
    )
    return best, why


def _entries(store: ModelStore, models: Sequence[str]) -> list[ModelEntry]:
    if not models:
        return [store.get(name) for name in store.names()]
    out = []
    for m in models:
        name, _, version = m.partition(":")
        out.append(store.get(name, int(version) if version else None))
    return out


def trained_areas(payload: dict[str, Any], same_area: Sequence[Sequence[str]]) -> set[str]:
    """The areas (cities) a checkpoint's run drew training tiles from."""
    tiles = payload.get("data", {}).get("train_tiles", [])
    return {area_of(parse_tile_name(f"{t}.tif")[0], same_area) for t in tiles}


def _train_minutes(entry: ModelEntry, payload: dict[str, Any]) -> float | None:
    """As publish recorded it; older versions said it only on their card."""
    if payload.get("train_minutes"):
        return float(payload["train_minutes"])
    card = entry.folder / CARD
    found = re.search(r"\d+ steps in (\d+) min", card.read_text()) if card.is_file() else None
    return float(found[1]) if found else None


def _loao(entry: ModelEntry) -> dict[float, dict[str, Counts]]:
    """The version's leave-one-area-out counts per area, by resolution (0.3: the rows
    ``held out``; others: ``held out at R m``)."""
    path = entry.folder / "loao.json"
    if not path.is_file():
        return {}
    out: dict[float, dict[str, Counts]] = {}
    for label, cells in read_json(path).items():
        found = re.fullmatch(r"held out(?: at ([0-9.]+) m)?", label)
        if found:
            out[float(found[1] or 0.3)] = {a: c for a, c in cells.items() if a != "overall"}
    return out


def _loao_objects(entry: ModelEntry) -> dict[str, ObjectCounts]:
    """The version's leave-one-area-out buildings matched at 0.3 m, per area (none in
    files written before loao matched buildings)."""
    path = entry.folder / "loao.json"
    found = read_json(path).get(OBJECTS, {}) if path.is_file() else {}
    return {a: o for a, o in found.items() if " at " not in a}


def _recorded(entry: ModelEntry, names: set[str]) -> dict[str, Counts] | None:
    """Publish's synthetic test counts per city, if it scored exactly the tiles ``names``."""
    path = entry.folder / "metrics.json"
    tiles = json.loads(path.read_text()).get("synthetic_test", {}).get("tiles", {}) if path.is_file() else {}
    if set(tiles) != names:
        return None
    by_city: dict[str, list[Counts]] = {}
    for name, c in tiles.items():
        by_city.setdefault(parse_tile_name(name)[0], []).append(Counts(c["tp"], c["fp"], c["fn"], c["tn"]))
    return {city: pooled(cs) for city, cs in sorted(by_city.items())}


def tile_cost(entry: ModelEntry, engine: TilingEngine) -> tuple[int, float]:
    """Parameters, and MACs per output pixel of a 5000 x 5000 tile as the service cuts it."""
    model, _ = load_checkpoint(entry.verify("model.pt"))
    plan = engine.plan(TILE_SIDE, TILE_SIDE)
    macs = window_cost(model, tuple((1, 3, side, side) for side in entry.geometry.input_sides(plan.window)))["macs"]
    return sum(p.numel() for p in model.parameters()), macs * len(plan.windows) * engine.tta_passes / TILE_SIDE**2 / 1e3


def _time_tile(engine: TilingEngine) -> float:
    rgb = np.random.default_rng(0).integers(0, 256, (3, TILE_SIDE, TILE_SIDE), dtype=np.uint8)
    t0 = time.perf_counter()
    engine.probabilities(ArraySource(rgb))
    return time.perf_counter() - t0


def build_report(
    store: Path,
    models: Sequence[str],
    test_data: Path | None,
    real: Sequence[Root],
    same_area: Sequence[Sequence[str]],
    timing: bool = True,
    rescore: bool = False,
) -> list[ModelRow]:
    """Score and cost every model; one row each."""
    s = ModelStore(store)
    areas = area_tiles(real, same_area) if real else {}
    test_tiles = InriaDataset(test_data).split("test") if test_data else []
    rows = []
    for entry in tqdm(_entries(s, models), desc="models", unit="model"):
        payload = load_checkpoint(entry.verify("model.pt"))[1]
        engine = TilingEngine(open_engine(entry, "onnxruntime"))
        row = ModelRow(entry.name, entry.version, entry.manifest.network, tta=entry.geometry.tta)
        row.train_minutes = _train_minutes(entry, payload)
        row.parameters, row.kmac_per_px = tile_cost(entry, engine)
        recorded = None if rescore else _recorded(entry, {t.image.name for t in test_tiles})
        if recorded is not None:
            row.synthetic, row.synthetic_source = recorded, "recorded"
        elif test_tiles:
            row.synthetic = score(engine, test_tiles).cities
        seen, row.yardstick = trained_areas(payload, same_area), _loao(entry)
        loao_objects = _loao_objects(entry)
        loao = row.yardstick.get(0.3, {})
        for area, tiles in areas.items():
            if area not in seen:
                scored = score(engine, tiles)
                row.real[area], row.real_source[area] = scored.overall, "held out"
                row.real_objects[area] = scored.overall_objects
            elif area in loao:
                row.real[area], row.real_source[area] = loao[area], "loao"
                if area in loao_objects:
                    row.real_objects[area] = loao_objects[area]
            else:
                row.real_source[area] = "seen"
        if timing:
            row.seconds_per_tile = _time_tile(engine)
        engine.model.close()  # type: ignore[attr-defined]
        rows.append(row)
    return rows


def common_areas(rows: Sequence[ModelRow]) -> list[str]:
    """Real areas every row scored held out (or leave-one-area-out)."""
    if not rows:
        return []
    common = set(rows[0].real)
    for r in rows[1:]:
        common &= set(r.real)
    return sorted(common)


def _cell(c: Counts | None) -> str:
    return f"{100 * c.iou:.2f} / {100 * c.accuracy:.2f}" if c is not None and c.total else "seen"


def yardstick_table(rows: Sequence[ModelRow], current: str | None) -> list[str]:
    """Each model's leave-one-area-out figures at every yardstick resolution beside its
    tile time, and the default they choose."""
    lines = [
        "Leave-one-area-out yardstick (the recipe trained without each real area; IoU % pooled over every area "
        f"at {', '.join(f'{r:g}' for r in YARDSTICK_M)} m, the worst area at any of them) and the default it chooses",
        "",
        f"| model | {' | '.join(f'{r:g} m' for r in YARDSTICK_M)} | worst area | s / tile |",
        "|---" * (len(YARDSTICK_M) + 3) + "|",
    ]
    for r in rows:
        f = yardstick_figures(r)
        secs = f"{r.seconds_per_tile:.1f}" if r.seconds_per_tile is not None else "-"
        cells = [f"{100 * f[f'{m:g} m']:.2f}" for m in YARDSTICK_M] + [f"{100 * f['worst area']:.2f}"] if f else ["-"] * 4
        lines.append(f"| {r.label} | {' | '.join(cells)} | {secs} |")
    chosen, why = choose_default(rows, current)
    lines += ["", f"Default: {why}." if chosen else f"Default unchanged ({current}): {why}."]
    return lines


def markdown(rows: Sequence[ModelRow], current: str | None = None) -> str:
    """Four tables: the yardstick that chooses the default (``current``: the store's
    default now), real areas (held out), synthetic test cities, and cost."""
    areas = sorted({a for r in rows for a in r.real_source})
    common = common_areas(rows)
    cities = sorted({c for r in rows for c in r.synthetic})
    both = f"{' + '.join(common)} (every model held out)"
    out = [
        *yardstick_table(rows, current),
        "",
        "Real areas never seen in training (IoU % / accuracy %, pooled over tiles; `seen`: the model trained on "
        "that area and has no leave-one-area-out run, so it is not scored there; * leave-one-area-out runs)",
        "",
        f"| method | model | {' | '.join(areas)} | held-out overall | object F1 (held-out overall) | {both} "
        f"| object F1 ({' + '.join(common)}) |",
        "|---" * (len(areas) + 6) + "|",
    ]
    for r in rows:
        cells = [_cell(r.real.get(a)) + ("*" if r.real_source.get(a) == "loao" else "") for a in areas]
        overall = pooled(list(r.real.values())) if r.real else None
        pair = pooled([r.real[a] for a in common]) if common else None
        objects = sum(r.real_objects.values(), ObjectCounts())
        f1 = f"{100 * objects.f1:.2f}" if r.real_objects and r.real_objects.keys() == r.real.keys() else "-"
        # Buildings matched on the areas every model held out: the column to compare models by.
        held = bool(common) and all(a in r.real_objects for a in common)
        f1_common = f"{100 * sum((r.real_objects[a] for a in common), ObjectCounts()).f1:.2f}" if held else "-"
        out.append(f"| {r.method} | {r.label} | {' | '.join(cells)} | {_cell(overall)} | {f1} | {_cell(pair)} | {f1_common} |")
    if cities:
        out += [
            "",
            "Synthetic test cities (never seen in training; IoU % / accuracy %)",
            "",
            f"| method | model | {' | '.join(cities)} | Overall |",
            "|---" * (len(cities) + 3) + "|",
        ]
        for r in rows:
            cells = [_cell(r.synthetic.get(c)) for c in cities]
            out.append(f"| {r.method} | {r.label} | {' | '.join(cells)} | {_cell(pooled(list(r.synthetic.values())))} |")
    out += [
        "",
        f"Cost of a {TILE_SIDE} x {TILE_SIDE} tile on this machine (ONNX Runtime, one run; kMAC per output pixel at the "
        "service's window plan, overlaps and TTA included) and training time",
        "",
        "| method | model | parameters | kMAC / output px | s / tile | TTA | training (h) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        secs = f"{r.seconds_per_tile:.1f}" if r.seconds_per_tile is not None else "-"
        hours = f"{r.train_minutes / 60:.2f}" if r.train_minutes else "-"
        out.append(
            f"| {r.method} | {r.label} | {r.parameters:,} | {r.kmac_per_px:.0f} | {secs} | {'8 passes' if r.tta else 'no'} | {hours} |"
        )
    return "\n".join(out) + "\n"


def chart(rows: Sequence[ModelRow], png: Path) -> None:
    """IoU per held-out real area per model, and IoU against seconds per tile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    areas = sorted({a for r in rows for a in r.real})
    common = common_areas(rows)
    fig, (a, b) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [2, 1]})
    width = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        xs = [j + i * width for j, area in enumerate(areas) if area in r.real]
        a.bar(xs, [100 * r.real[area].iou for area in areas if area in r.real], width, label=r.label)
    a.set_xticks([j + 0.4 - width / 2 for j in range(len(areas))], areas)
    a.set(ylabel="IoU % (held out)", title="real areas never seen in training")
    a.legend(fontsize=8, ncol=2)
    for r in rows:
        if r.seconds_per_tile is None or not common:
            continue
        iou = 100 * pooled([r.real[x] for x in common]).iou
        b.scatter(r.seconds_per_tile, iou)
        b.annotate(r.label, (r.seconds_per_tile, iou), fontsize=8, xytext=(4, 2), textcoords="offset points")
    b.set(
        xlabel=f"seconds per {TILE_SIDE}^2 tile (this CPU)",
        ylabel=f"IoU % on {' + '.join(common)}",
        title="accuracy against cost",
    )
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)


def write_report(rows: Sequence[ModelRow], out: Path, current: str | None = None) -> dict[str, Path]:
    """report.md, report.json and report.png under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "json": out / "report.json", "chart": out / "report.png"}
    paths["markdown"].write_text(markdown(rows, current))
    chosen, why = choose_default(rows, current)
    doc = {
        "models": [r.as_dict() for r in rows],
        "common_areas": common_areas(rows),
        "default": {"current": current, "chosen": chosen.label if chosen else None, "why": why},
    }
    paths["json"].write_text(json.dumps(doc, indent=2) + "\n")
    chart(rows, paths["chart"])
    return paths
