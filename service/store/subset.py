"""The part of a model store an image serves: the default model's newest version and the
versions asked for, each with the ensemble members it averages, and nothing else (no
superseded version, no training checkpoint, no pictures).

Standard library only, and run as a script (``python3 service/store/subset.py``): the
serving image runs it in a build stage that has nothing installed yet.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

# Not needed to serve: the training checkpoint (the store serves model.onnx, or model.pt2
# with PyTorch) and pictures for people.
LEFT_OUT = ("model.pt", "overlays", "loao-overlays", "*.png")


def _versions(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def chosen(store: Path, models: list[str]) -> list[tuple[str, int]]:
    """(name, version) of the default model's newest version, each of ``models``
    (``NAME`` for its newest version or ``NAME:VERSION``), and their ensemble members."""
    default = store / "DEFAULT"
    specs = ([default.read_text().strip()] if default.is_file() else []) + [m for m in models if m]
    if not specs:
        raise SystemExit(f"{store} has no DEFAULT and no model was asked for (MODELS=NAME[:VERSION],...)")
    out: list[tuple[str, int]] = []
    while specs:
        name, _, version = specs.pop(0).partition(":")
        model_dir = store / name
        have = _versions(model_dir) if model_dir.is_dir() else []
        if not have:
            raise SystemExit(f"model '{name}' is not in {store}")
        v = int(version) if version else have[-1]
        if v not in have:
            raise SystemExit(f"{name} has no version {v} in {store}; have {have}")
        if (name, v) in out:
            continue
        out.append((name, v))
        manifest = json.loads((model_dir / str(v) / "manifest.json").read_text())
        specs += [f"{m['name']}:{m['version']}" for m in manifest.get("members", [])]
    return out


def copy_subset(store: Path, dest: Path, models: list[str]) -> list[tuple[str, int]]:
    picked = chosen(store, models)
    dest.mkdir(parents=True, exist_ok=True)
    if (store / "DEFAULT").is_file():
        shutil.copy2(store / "DEFAULT", dest / "DEFAULT")
    for name in {n for n, _ in picked}:
        for extra in ("config.pbtxt", "MODEL_CARD.md"):  # Triton's model config, the model's card
            if (store / name / extra).is_file():
                (dest / name).mkdir(parents=True, exist_ok=True)
                shutil.copy2(store / name / extra, dest / name / extra)
    for name, v in picked:
        shutil.copytree(store / name / str(v), dest / name / str(v), ignore=shutil.ignore_patterns(*LEFT_OUT))
    return picked


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--models", default="", help="comma-separated NAME or NAME:VERSION, besides the default")
    args = p.parse_args(argv)
    picked = copy_subset(args.store, args.out, [m.strip() for m in args.models.split(",")])
    print("store subset: " + ", ".join(f"{n} v{v}" for n, v in picked))
    return 0


if __name__ == "__main__":
    sys.exit(main())
