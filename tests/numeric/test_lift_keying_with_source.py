"""Views compared with a render of the source before lifting: views a sampler placed a pixel or two off are registered
to it, and an object with the background's colour (a white van on white) is keyed with its help: the surface the source
has there, background-coloured in both, stays object; what the edit removed in another colour goes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamedit3d_core.cameras import MVCameras
from dreamedit3d_core.lifting import lift_to_mesh
from dreamedit3d_core.lifting.views import add_background_coloured_source, key_views_auto

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

pytestmark = pytest.mark.numeric

CAMS = MVCameras.mvdream_default()


@pytest.fixture(scope="module")
def truck(shared_assets):
    from dreamedit3d_core.assets import load_asset

    return load_asset(shared_assets / "cesium_milk_truck.glb")  # a white body (unlit: exactly the background's white)


def _views(asset, res=256):
    from dreamedit3d_core.render import render_views

    return render_views(asset, CAMS, resolution=res, lighting="unlit")


def _iou(a, b) -> float:
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum()) / float((a | b).sum())


def test_only_background_coloured_source_surface_is_put_back():
    # one 32 px view on white: the source has a white square (left) and a red one (right); the view shows neither
    rgb = torch.ones(1, 3, 32, 32)
    rgb[0, :, 12:20, 2:6] = 0.0  # a dark detail on the white square: keyed as object
    keyed = torch.zeros(1, 1, 32, 32)
    keyed[0, 0, 12:20, 2:6] = 1.0
    source_colour = torch.ones(1, 3, 32, 32)
    source_colour[0, 1:, 8:24, 18:30] = 0.0  # red
    source_alpha = torch.zeros(1, 1, 32, 32)
    source_alpha[0, 0, 8:24, 2:14] = 1.0
    source_alpha[0, 0, 8:24, 18:30] = 1.0
    out = add_background_coloured_source(keyed, rgb, torch.ones(1, 3), 0.06, source_colour, source_alpha)
    white = torch.zeros(32, 32, dtype=torch.bool)
    white[8:24, 2:14] = True
    assert bool((out[0, 0] > 0.5)[white].all())  # the white square is back, dark detail included
    assert not bool((out[0, 0] > 0.5)[:, 16:].any())  # the red square the view no longer shows stays removed
    # a view that differs from the background is the key's business: nothing changes where nothing is ambiguous
    assert torch.equal(add_background_coloured_source(out, rgb, torch.ones(1, 3), 0.06, source_colour, source_alpha), out)


def test_a_white_vehicle_on_white_keys_to_its_own_silhouette_and_lifts_as_the_source(truck):
    views = _views(truck)
    keyed, _ = key_views_auto(views.rgb)
    assert _iou(keyed, views.alpha) < 0.7  # the key alone loses the white body (measured 0.27-0.45 per view)
    mesh = lift_to_mesh(views.rgb, CAMS, source=truck, mode="component_aware", grid=64, texture_size=0)
    s = mesh.stats
    assert s["components_removed"] == [] and s["geometry"] == "source", s
    assert mesh.faces.shape == truck.faces.shape
    assert s["source_coloured_pixels"] > 0


def test_a_removed_dark_part_of_a_white_vehicle_is_still_removed(truck):
    from dataclasses import replace

    wheels = truck.part_names.index("Wheels")
    keep = truck.part_ids != wheels
    edited = replace(truck, faces=truck.faces[keep], part_ids=truck.part_ids[keep],
                     face_base_color=truck.face_base_color[keep],
                     face_textures=None if truck.face_textures is None else truck.face_textures[keep])
    mesh = lift_to_mesh(_views(edited).rgb, CAMS, source=truck, mode="component_aware", grid=64, texture_size=0)
    s = mesh.stats
    assert "Wheels" in s["components_removed"] and "truck" not in s["components_removed"], s
    assert "truck" in s["components_kept"], s
    body = truck.part_ids == truck.part_names.index("truck")
    assert mesh.faces.shape[0] >= int(body.sum())
    assert np.isfinite(mesh.vertices.numpy()).all()


def test_views_a_sampler_placed_a_pixel_or_two_off_are_registered_to_the_source(shared_assets):
    from dreamedit3d_core.assets import load_asset
    from dreamedit3d_core.lifting.views import register_to_source, shift_images

    from lift_eval import make_edit

    kenney = load_asset(shared_assets / "kenney_character.glb")
    source = _views(kenney).rgb
    applied = torch.tensor([[2, -2], [-1, 0], [0, 1], [3, 3]])
    for edit in ("none", "add", "scale"):
        views = _views(make_edit(kenney, edit).asset).rgb
        shifts, _ = register_to_source(views, source)
        assert not bool(shifts.any()), (edit, shifts)  # views rendered where the source was: nothing moves
        moved = shift_images(views, applied, torch.ones(4, 3))
        shifts, ratio = register_to_source(moved, source)
        assert torch.equal(shifts, -applied), (edit, shifts)
        assert bool((ratio < 1).all())


def test_a_lift_of_shifted_views_keeps_the_source_and_its_texture(shared_assets):
    from dreamedit3d_core.assets import load_asset
    from dreamedit3d_core.lifting.views import shift_images

    kenney = load_asset(shared_assets / "kenney_character.glb")
    views = _views(kenney).rgb
    applied = torch.tensor([[2, -2], [2, 2], [-1, 1], [-1, -1]])
    clean = lift_to_mesh(views, CAMS, source=kenney, mode="component_aware", grid=64, texture_size=256)
    shifted = lift_to_mesh(shift_images(views, applied, torch.ones(4, 3)), CAMS, source=kenney,
                           mode="component_aware", grid=64, texture_size=256)
    assert shifted.stats["view_shift_px"] == (-applied).tolist()
    assert shifted.stats["geometry"] == "source" and shifted.faces.shape == kenney.faces.shape
    # the same texture as from the unshifted views (the border a shift uncovers is background, off the object)
    assert (shifted.texture - clean.texture).abs().max() < 1e-5
