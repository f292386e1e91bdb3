"""Rounding new parts (lifting.rounding): the ellipse inscribed in each slice of a part's four-view hull. A ball's hull
(two crossed cylinders) comes back as the ball, checked against the analytic sphere; a box keeps its silhouettes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamedit3d_core.cameras import MVCameras
from dreamedit3d_core.lifting import hull
from dreamedit3d_core.lifting.rounding import OUTSIDE, direction_groups, round_solids, run_coordinates

from _lift_helpers import asset_from_trimesh

pytestmark = pytest.mark.numeric

CAMS = MVCameras.mvdream_default()  # elevation 15: rows are not horizontal slices


def test_run_coordinates_measure_each_pixel_from_its_runs_centre():
    mask = torch.zeros(1, 2, 12, dtype=torch.bool)
    mask[0, 0, 2:6] = True  # pixels 2..5: centre 3.5, half-length 2
    mask[0, 0, 8] = True  # a one-pixel run
    mask[0, 1, :] = True  # a run touching both image borders
    u = run_coordinates(mask)
    assert torch.allclose(u[0, 0, 2:6], torch.tensor([0.75, 0.25, 0.25, 0.75]))
    assert float(u[0, 0, 8]) == 0.0
    assert bool((u[0, 0, [0, 1, 6, 7, 9, 10, 11]] == OUTSIDE).all())
    assert torch.allclose(u[0, 1], (torch.arange(12.0) - 5.5).abs() / 6.0)


def test_the_four_views_see_two_directions():
    assert sorted(map(sorted, direction_groups(CAMS))) == [[0, 2], [1, 3]]


def _hull_and_truth(mesh, inside_fn, res=256, grid=96):
    from dreamedit3d_core.render import render_views

    alpha = render_views(asset_from_trimesh(mesh), CAMS, resolution=res, lighting="unlit").alpha
    fine = hull.fit_grid(lambda g: hull.silhouette_occupancy(alpha, CAMS, g), grid, "hull")
    occ = hull.silhouette_occupancy(alpha, CAMS, fine)
    pts = fine.points_at(torch.arange(fine.num_points)).double().numpy()
    return alpha, fine, occ, torch.from_numpy(inside_fn(pts).reshape(fine.shape))


def _iou(a, b) -> float:
    return float((a & b).sum()) / float((a | b).sum())


def test_a_balls_hull_is_rounded_back_into_the_ball():
    import trimesh

    centre, radius = np.array([0.05, 0.1, -0.08]), 0.3
    ball = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    ball.apply_translation(centre)
    alpha, fine, occ, truth = _hull_and_truth(ball, lambda p: np.linalg.norm(p - centre, axis=1) <= radius)
    rounded = round_solids(occ, alpha, CAMS, fine)
    assert bool((rounded <= occ).all())  # never adds material
    hull_iou = _iou(occ > 0.5, truth)
    rounded_iou = _iou(rounded > 0.5, truth)
    print("hull IoU", hull_iou, "rounded IoU", rounded_iou)
    assert hull_iou < 0.9  # measured 0.88: the crossed cylinders' corners
    assert rounded_iou > 0.95, rounded_iou  # measured 0.977


def test_a_rounded_box_still_fills_its_silhouettes():
    import trimesh

    box = trimesh.creation.box(extents=(0.5, 0.4, 0.3))
    alpha, fine, occ, _ = _hull_and_truth(box, lambda p: (np.abs(p) <= [0.25, 0.2, 0.15]).all(1))
    rounded = round_solids(occ, alpha, CAMS, fine)
    # rounded slices (the prior of round things) but every silhouette pixel still has material behind it
    keep = (rounded > 0.5).reshape(-1).nonzero().squeeze(1)
    pix, depth = CAMS.project(fine.points_at(keep), 256, 256)
    for v in range(4):
        hit = torch.zeros(256, 256, dtype=torch.bool)
        xy = pix[v].long().clamp(0, 255)
        hit[xy[:, 1], xy[:, 0]] = True
        hit = torch.nn.functional.max_pool2d(hit[None, None].float(), 5, stride=1, padding=2)[0, 0] > 0  # voxel spacing
        sil = alpha[v, 0] > 0.5
        assert float((hit & sil).sum()) / float(sil.sum()) > 0.97


def test_a_ball_held_in_front_of_a_body_comes_back_round_not_as_wide_as_the_body():
    # the front view shows the ball inside the body's outline: the four-view hull makes it as wide as the body; the
    # front view's colours (the ball's disc, the body unchanged around it) carve and round it back to a ball
    import trimesh

    from dreamedit3d_core.lifting import lift_to_mesh
    from dreamedit3d_core.render import render_views
    from _lift_helpers import lifted_as_asset

    body = trimesh.creation.box(extents=(0.3, 0.6, 0.6))
    centre, radius = np.array([0.2, 0.0, 0.05]), 0.13
    ball = trimesh.creation.icosphere(subdivisions=3, radius=radius)
    ball.apply_translation(centre)
    both = trimesh.util.concatenate([body, ball])
    grey, red = [[0.7, 0.7, 0.7]] * len(body.faces), [[0.85, 0.1, 0.1]] * len(ball.faces)
    source = asset_from_trimesh(body, face_colors=grey)
    edited = asset_from_trimesh(both, face_colors=grey + red, part_ids=[0] * len(body.faces) + [1] * len(ball.faces),
                                part_names=("body", "ball"))
    views = render_views(edited, CAMS, resolution=256, lighting="unlit").rgb
    mesh = lift_to_mesh(views, CAMS, mode="component_aware", source=source, grid=96, texture_size=0)
    assert mesh.stats["voxels_carved_in_front"] > 0
    top = MVCameras(elevation_deg=89.0, azimuth_deg=torch.tensor([0.0]), fov_deg=CAMS.fov_deg, radius=CAMS.radius)
    truth = render_views(edited, top, resolution=256, lighting="unlit").alpha[0, 0] > 0.5
    lifted = render_views(lifted_as_asset(mesh), top, resolution=256, lighting="unlit").alpha[0, 0] > 0.5
    # from above: the body's rectangle and the ball's disc beside it (measured 0.977; without the carving: 0.895)
    assert _iou(lifted, truth) > 0.96, _iou(lifted, truth)
