"""The built-in example asset loads, renders with its front at MVDream's front view, and splits into components."""

from __future__ import annotations

import pytest
import torch

from dreamedit3d_core.assets import load_asset
from dreamedit3d_core.testing.examples import EXAMPLE_COMPONENTS, write_example_asset
from dreamedit3d_core.masks import masks_from_parts
from dreamedit3d_core.render import render_views


def test_example_asset_parts_masks_and_front(tmp_path):
    path = write_example_asset(tmp_path / "toy.glb")
    asset = load_asset(path)
    assert asset.part_names == ("body", "head", "hat", "nose")
    render = render_views(asset, resolution=64, lighting="unlit")
    masks = masks_from_parts(render, EXAMPLE_COMPONENTS)
    assert masks.names == ("hat", "toy")
    assert bool(masks.masks.flatten(1).any(1).all())  # both components seen
    nose = asset.part_names.index("nose")
    seen = [(render.part_id[v] == nose).sum().item() for v in range(4)]
    # front view sees the nose head-on (a small disc), the back view not at all, the sides in profile
    assert seen[0] > 0 and seen[2] == 0 and seen[1] > 0 and seen[3] > 0
    # the front face's white marker is visible only in the front view
    white = (render.rgb > 0.97).all(1) & (render.alpha[:, 0] > 0.99)
    assert white[0].sum() > 0 and white[2].sum() == 0


def test_example_asset_is_never_overwritten(tmp_path):
    path = write_example_asset(tmp_path / "toy.glb")
    with pytest.raises(ValueError, match="already exists"):
        write_example_asset(path)
