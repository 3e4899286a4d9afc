"""footprints finetune: a store model adapted to a user's labelled tiles within a time
budget, published as a new model that a running server picks up without a restart."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from service.client import FootprintsClient
from service.errors import InputError
from service.store.repository import ModelStore
from training.config import config_from_dict
from training.data.sources import Root
from training.export import export
from training.finetune import TIMING_STEPS, _seconds_per_step, finetune
from training.loop import train

from ..conftest import wait_until
from ..service.servers import RunningServer, config, in_process, tile
from .test_loop import TINY


def _listed(address: str, name: str) -> list[int]:
    with FootprintsClient(address) as client:
        return [m.version for m in client.list_models() if m.name == name and m.state == "ready"]


def _base_store(cities, tmp_path):
    """A store holding ``base`` v1: three steps of the tiny recipe."""
    store = tmp_path / "store"
    base = {**TINY, "schedule": {**TINY["schedule"], "steps_per_epoch": 3, "validate_every_steps": 1000}}
    base["data"] = {**TINY["data"], "validation_tile_indices": []}
    train(config_from_dict(base, "tiny base"), Root(cities), tmp_path / "base", progress=False)
    export(tmp_path / "base" / "model.pt", store, "base")
    return store


def test_finetune_publishes_a_version_that_a_running_server_serves_without_a_restart(tiny_cities, tmp_path):
    store = _base_store(tiny_cities, tmp_path)
    s = RunningServer(config(store, watch_store_s=0.1))
    try:
        assert _listed(s.address, "mine") == []
        record = finetune(store, "base", [Root(tiny_cities)], "mine", minutes=0.3, run_dir=tmp_path / "ft", progress=False)
        assert (record["base"], record["name"], record["version"]) == ("base:1", "mine", 1)
        assert record["steps"] >= 4 and record["train_tiles"]
        probe = (tmp_path / "ft" / "probe" / "log.csv").read_text().splitlines()
        assert len(probe) == 1 + TIMING_STEPS  # every probe step timed on its own
        card = (store / "mine" / "1" / "MODEL_CARD.md").read_text()
        assert "Fine-tuned from `base:1`" in card and "footprints finetune --model base:1" in card
        wait_until(lambda: _listed(s.address, "mine") == [1], 60, "the fine-tuned model to be served")
        image = tile(tmp_path / "t.tif", 300, 300, seed=9)
        with FootprintsClient(s.address) as client:
            r = client.segment_file(image, tmp_path / "m.tif", model="mine", progress=False)
        assert (r.summary.model, r.summary.model_version) == ("mine", 1)
        with rasterio.open(tmp_path / "m.tif") as m:
            expected = in_process(store, "mine", image, 0) >= ModelStore(store).get("mine").manifest.threshold
            assert np.array_equal(m.read(1), np.where(expected, 255, 0).astype(np.uint8))
    finally:
        s.stop()
    with pytest.raises(InputError, match="none: dataset path does not exist"):
        finetune(store, "base", [Root(tmp_path / "none")], "other", minutes=0.1)
    assert not (store / "other").exists()


def test_the_schedule_is_sized_by_steady_steps_not_the_first(tmp_path):
    # The first step builds the kernels; counting it sized 10-minute schedules to fill half.
    log = tmp_path / "log.csv"
    rows = [(1, 1.9), (2, 0.72), (3, 0.70), (4, 0.75), (5, 0.71), (6, 0.69)]
    log.write_text("step,loss,seconds_per_step\n" + "".join(f"{s},1.0,{t}\n" for s, t in rows))
    assert _seconds_per_step(log) == 0.71
    assert _seconds_per_step(tmp_path / "none.csv") is None


def test_self_training_labels_unlabelled_imagery_with_the_base_as_served(tiny_cities, tmp_path):
    store = _base_store(tiny_cities, tmp_path)
    # A user's imagery: GeoTIFFs with any names, no labels beside them.
    mine = tmp_path / "my-imagery"
    mine.mkdir()
    sources = sorted((tiny_cities / "train" / "images").glob("*.tif"))[:3]
    (mine / "ortho-west.tif").write_bytes(sources[0].read_bytes())
    (mine / "site7.tif").write_bytes(sources[1].read_bytes())
    (mine / "pseudo1.tif").write_bytes(sources[2].read_bytes())  # the number an odd name would get
    record = finetune(store, "base", [], "selfie", minutes=0.05, run_dir=tmp_path / "ft", progress=False, unlabelled=[Root(mine)])
    assert (record["version"], record["data"]) == (1, [])
    assert record["unlabelled"] == [{"path": str(mine), "weight": 1.0}]
    # Each image's labels are the base's mask of it as served (its threshold, its grid),
    # under a tile name the training reader takes.
    threshold = ModelStore(store).get("base").manifest.threshold
    named = {"pseudo2.tif": mine / "ortho-west.tif", "pseudo1.tif": mine / "pseudo1.tif", "site7.tif": mine / "site7.tif"}
    for name, image in named.items():
        with rasterio.open(tmp_path / "ft" / "pseudo" / "0" / "gt" / name) as g:
            expected = in_process(store, "base", image, 0) >= threshold
            assert np.array_equal(g.read(1), np.where(expected, 255, 0).astype(np.uint8))
    assert sorted(record["train_tiles"]) == ["pseudo1", "pseudo2", "site7"]
    card = (store / "selfie" / "1" / "MODEL_CARD.md").read_text()
    assert f"--unlabelled {mine}" in card and "self-training" in card
    assert ModelStore(store).get("selfie").manifest.network == ModelStore(store).get("base").manifest.network
    with pytest.raises(InputError, match="nothing to fine-tune on"):
        finetune(store, "base", [], "other", minutes=0.1)
    with pytest.raises(InputError, match="no GeoTIFFs"):
        finetune(store, "base", [], "other", minutes=0.1, unlabelled=[Root(tmp_path / "ft" / "probe")])
