"""Lifting as ComfyUI runs it: every node executes under ``torch.inference_mode()``, where autograd is off and tensors
made are inference tensors. The lift's two optimisations (the texture refinement, the deformation fit of
component-aware lifting) must leave that mode themselves; both failed there with "element 0 of tensors does not require
grad" while every direct call worked."""

from __future__ import annotations

import pytest
import torch

from dreamedit3d_core.cameras import MVCameras
from dreamedit3d_core.lifting import lift_to_mesh
from dreamedit3d_core.render import render_views

from _lift_helpers import asset_from_trimesh

pytestmark = pytest.mark.numeric

CAMS = MVCameras.mvdream_default()


def _ball(stretch_top: float = 1.0):
    import trimesh

    ball = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    v = ball.vertices.copy()
    top = v[:, 1] > 0.1
    v[top, 1] = 0.1 + (v[top, 1] - 0.1) * stretch_top  # the crown pulled up: a chunk of the surface moved
    ball.vertices = v
    return asset_from_trimesh(ball, face_colors=[[0.8, 0.3, 0.2]] * len(ball.faces))


def test_texture_refinement_runs_under_inference_mode():
    source = _ball()
    with torch.inference_mode():
        views = render_views(source, CAMS, resolution=64, lighting="unlit").rgb
        mesh = lift_to_mesh(views, CAMS, mode="hull", grid=32, texture_size=64, refine_steps=3)
    assert mesh.texture is not None and mesh.faces.shape[0] > 0
    assert mesh.stats["refine_loss_last"] <= mesh.stats["refine_loss_first"]


def test_the_deformation_fit_runs_under_inference_mode():
    source, edited = _ball(), _ball(stretch_top=1.4)
    with torch.inference_mode():
        views = render_views(edited, CAMS, resolution=128, lighting="unlit").rgb
        mesh = lift_to_mesh(views, CAMS, mode="component_aware", source=source, grid=48, texture_size=0)
    assert "deformed" in mesh.stats and mesh.stats.get("deform_rejected", "") != "the silhouettes did not change"
