"""The model store as the service reads it: the default model, and the window rules
and memory each manifest records (what a server needs besides the graphs)."""

from __future__ import annotations

import json
import shutil

import pytest

from service.errors import InputError, NotFoundError
from service.store.manifest import WindowMemory
from service.store.repository import ModelStore
from service.tiling.geometry import ValidGeometry, geometry_from_record

from ...conftest import REPO

STORE = REPO / "model_store"


def test_the_repository_store_names_its_default_and_every_version_is_servable():
    store = ModelStore(STORE)
    default = (STORE / "DEFAULT").read_text().strip()
    assert store.default_name() == default and default in store.names()
    assert store.get().name == default and store.get().version == max(store.entries[default])
    for versions in store.entries.values():
        for entry in versions.values():
            assert {"model.onnx", "model.pt2", "model.pt"} <= set(entry.manifest.files), (entry.name, entry.version)
            spec, memory = entry.geometry, entry.memory
            assert spec.default_window("cpu") > 0 and memory.bytes(spec.default_window("cpu")) > 0


def test_a_store_without_default_serves_its_only_model_or_asks(tmp_path):
    one = tmp_path / "one"
    shutil.copytree(STORE / "nus", one / "nus")
    assert ModelStore(one).get().name == "nus"
    two = tmp_path / "two"
    for name in ("amll", "nus"):
        shutil.copytree(STORE / name, two / name)
    with pytest.raises(NotFoundError, match="names no default model.*amll, nus"):
        ModelStore(two).get()
    ModelStore(two).set_default("nus")
    assert ModelStore(two).get().name == "nus"
    (two / "DEFAULT").write_text("segnet\n")
    with pytest.raises(NotFoundError, match="names model 'segnet', which is not in the store"):
        ModelStore(two).get()


def test_window_spec_reads_what_export_writes():
    amll = json.loads((STORE / "amll/3/manifest.json").read_text())
    spec = geometry_from_record(amll["geometry"])
    assert spec.valid == ValidGeometry(4) and spec.valid.margin == 92 and spec.valid.stride == 16
    assert spec.default_window("cpu") == 1180 and spec.default_window("cuda:0") == 2636
    assert spec.default_window("remote") == 1180  # devices the manifest does not name get the CPU's
    assert spec.to_manifest() == amll["geometry"]
    nus = geometry_from_record(json.loads((STORE / "nus/1/manifest.json").read_text())["geometry"])
    assert not hasattr(nus, "valid") and nus.multiple == 16
    # A blended model's plan decides its mask, so it is the manifest's on every device and path.
    assert nus.plan_fixed and nus.default_window("cpu") == nus.default_window("cuda:0") == nus.default_window("remote") == 384
    with pytest.raises(InputError, match="window geometry 'hexagons'"):
        geometry_from_record({"kind": "hexagons"})


def test_window_memory_is_the_recorded_quadratic_and_missing_records_are_named():
    manifest = json.loads((STORE / "amll/3/manifest.json").read_text())
    memory = WindowMemory.from_record(manifest["window_memory"], "amll v3")
    a, b, c = manifest["window_memory"]["coefficients"]
    assert memory.bytes(1180) == round(a * 1180**2 + b * 1180 + c)
    # Bigger windows cost more, roughly with the area.
    assert 4 < memory.bytes(2636) / memory.bytes(1180) < (2636 / 1180) ** 2 * 1.2
    del manifest["window_memory"]
    with pytest.raises(InputError, match="records no window memory; re-export it"):
        WindowMemory.from_record(manifest.get("window_memory"), "amll v3")


def test_a_version_named_on_the_command_line_is_found_or_refused_clearly():
    store = ModelStore(REPO / "model_store")
    newest = store.get("amll")
    assert store.find("amll") == newest and store.find("") == store.get() and store.find(None) == store.get()
    assert store.find(f"amll:{newest.version}").version == newest.version
    with pytest.raises(InputError, match="must be a whole number"):
        store.find("amll:latest")
    with pytest.raises(NotFoundError, match="no version 999"):
        store.find("amll:999")
