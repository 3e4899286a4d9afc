"""Fixtures the service tests share."""

from __future__ import annotations

import pytest

from service.store.repository import ModelStore

from .servers import exported_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Small amll (large windows, the default) and nus (dual resolution) models, exported."""
    root = exported_store(
        tmp_path_factory.mktemp("store"),
        [
            ("amll", "amll_unet", {"filters": [4, 8, 16, 32, 64]}, [110.0, 112.0, 114.0], None),
            ("nus", "nus_dual_unet", {"channels": [4, 8, 16, 8, 4]}, [110.0, 112.0, 114.0], None),
        ],
        seed=0,
    )
    ModelStore(root).set_default("amll")
    return root
