"""Fixtures the service tests share."""

from __future__ import annotations

import pytest
import torch

from service.store.repository import ModelStore
from training.export import export
from training.networks.model import SegmentationModel, save_checkpoint


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Small amll (large windows, the default) and nus (dual resolution) models, exported."""
    root = tmp_path_factory.mktemp("store")
    torch.manual_seed(0)
    for name, net, args in (
        ("amll", "amll_unet", {"filters": (4, 8, 16, 32, 64)}),
        ("nus", "nus_dual_unet", {"channels": (4, 8, 16, 8, 4)}),
    ):
        model = SegmentationModel(net, args, [110.0, 112.0, 114.0])
        export(save_checkpoint(root.parent / f"{name}.pt", model), root, name)
    ModelStore(root).set_default("amll")
    return root
