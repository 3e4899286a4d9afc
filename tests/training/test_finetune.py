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
from training.finetune import finetune
from training.loop import train

from ..conftest import wait_until
from ..service.servers import RunningServer, config, in_process, tile
from .test_loop import TINY


def _listed(address: str, name: str) -> list[int]:
    with FootprintsClient(address) as client:
        return [m.version for m in client.list_models() if m.name == name and m.state == "ready"]


def test_finetune_publishes_a_version_that_a_running_server_serves_without_a_restart(tiny_cities, tmp_path):
    store = tmp_path / "store"
    base = {**TINY, "schedule": {**TINY["schedule"], "steps_per_epoch": 3, "validate_every_steps": 1000}}
    base["data"] = {**TINY["data"], "validation_tile_indices": []}
    train(config_from_dict(base, "tiny base"), Root(tiny_cities), tmp_path / "base", progress=False)
    export(tmp_path / "base" / "model.pt", store, "base")
    s = RunningServer(config(store, watch_store_s=0.1))
    try:
        assert _listed(s.address, "mine") == []
        record = finetune(store, "base", [Root(tiny_cities)], "mine", minutes=0.3, run_dir=tmp_path / "ft", progress=False)
        assert (record["base"], record["name"], record["version"]) == ("base:1", "mine", 1)
        assert record["steps"] >= 4 and record["train_tiles"]
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
