"""Ensembles as store entries: a version that names member versions and the weights its
probabilities average them with, and has no graph of its own.

``footprints ensemble --name NAME --member effnet:2 --member effnet:3`` writes the next
version of ``NAME``. Members must cut windows the same way (one geometry, the plan window
included), so that every window the ensemble runs is a window each member runs as it
would alone; its window memory is the largest member's, since the members run one after
another. It serves on every path that loads store versions (in-process, gRPC, batch,
``--model-servers``); a TorchServe archive, one graph per model, refuses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from service.errors import InputError
from service.store.repository import ModelEntry, ModelStore, next_version

CARD = "MODEL_CARD.md"


def parse_member(spec: str) -> tuple[str, int, float]:
    """``NAME:VERSION[@WEIGHT]`` -> (name, version, weight)."""
    body, _, weight = spec.partition("@")
    name, _, version = body.partition(":")
    if not name or not version.isdigit():
        raise InputError(f"member '{spec}': expected NAME:VERSION[@WEIGHT], e.g. effnet:2@1.5")
    try:
        w = float(weight) if weight else 1.0
    except ValueError:
        raise InputError(f"member '{spec}': weight '{weight}' is not a number") from None
    if not w > 0:
        raise InputError(f"member '{spec}': the weight must be > 0")
    return name, int(version), w


def _check_alike(member: ModelEntry, reference: ModelEntry) -> None:
    """Members must cut windows as ``reference`` does (one geometry, the plan window
    included) and serve at its ground resolution."""
    mine, theirs = member.geometry.to_manifest(), reference.geometry.to_manifest()
    if mine != theirs:
        raise InputError(
            f"{member.name} v{member.version} cuts windows differently from {reference.name} v{reference.version} "
            f"({mine} against {theirs}): an ensemble's members must share one geometry"
        )
    if abs(member.manifest.resolution_m - reference.manifest.resolution_m) > 1e-9:
        raise InputError(f"{member.name} v{member.version} serves at another ground resolution than {reference.name}")


def members_of(entry: ModelEntry, store: ModelStore) -> list[tuple[ModelEntry, float]]:
    """An ensemble version's member versions (from ``store``) and their normalised weights,
    checked to cut windows as the ensemble does."""
    found: list[tuple[ModelEntry, float]] = []
    for m in entry.manifest.members:
        member = store.get(str(m["name"]), int(m["version"]))
        if member.manifest.members:
            raise InputError(f"{entry.name} v{entry.version}: member {member.name} v{member.version} is itself an ensemble")
        _check_alike(member, entry)
        found.append((member, float(m.get("weight", 1.0))))
    if not found:
        raise InputError(f"{entry.name} v{entry.version} names no members")
    total = sum(w for _, w in found)
    return [(e, w / total) for e, w in found]


def write_ensemble(store_root: Path, name: str, specs: Sequence[str], note: str = "") -> ModelEntry:
    """The next version of ``name`` in the store: an ensemble of ``specs``."""
    store = ModelStore(store_root)
    members = [(store.get(n, v), w) for n, v, w in (parse_member(s) for s in specs)]
    if len(members) < 2:
        raise InputError("an ensemble needs at least two members")
    first = members[0][0].manifest
    for entry, _ in members[1:]:
        _check_alike(entry, members[0][0])
    heaviest = max(members, key=lambda m: m[0].window_bytes(1024))[0].manifest.window_memory
    version = next_version(store.root, name)
    folder = store.root / name / str(version)
    folder.mkdir(parents=True)
    manifest = first.replace(
        name=name,
        version=version,
        network="ensemble",
        network_args={},
        window_memory=heaviest,
        files={},
        metrics={},
        training={"ensemble_of": [f"{e.name}:{e.version}" for e, _ in members]},
        precision_checks={},
        tensorrt_engines={},
        # The members' mean threshold until a held-out sweep chooses its own.
        threshold=sum(e.manifest.threshold * w for e, w in members) / sum(w for _, w in members),
        members=tuple({"name": e.name, "version": e.version, "weight": w} for e, w in members),
    )
    manifest.write(folder)
    lines = [
        f"# {name} v{version}: an ensemble",
        "",
        "The average of its members' building probabilities (weights normalised to 1):",
        "",
        "| member | weight | network |",
        "|---|---|---|",
        *[f"| {e.name} v{e.version} | {w:g} | {e.manifest.network} |" for e, w in members],
        "",
        "Each window runs every member in turn: its cost is the sum of theirs.",
        "The members' cards say their data, recipes, scores and attribution.",
    ]
    if note:
        lines += ["", note]
    (folder / CARD).write_text("\n".join(lines) + "\n")
    return ModelStore(store.root).get(name, version)  # a fresh scan: the new folder
