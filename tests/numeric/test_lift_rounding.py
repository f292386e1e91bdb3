"""Rounding new parts (lifting.rounding): the ellipse inscribed in each slice of a part's four-view hull. A ball's hull
(two crossed cylinders) comes back as the ball, checked against the analytic sphere, and so does an upright cylinder;
a box, whose top outline the views see straight, stays its hull."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamedit3d_core.cameras import MVCameras
from dreamedit3d_core.lifting import hull
from dreamedit3d_core.lifting.rounding import (FLAT_TOP_FRACTION, OUTSIDE, direction_groups, flat_top_fraction,
                                               round_solids, run_coordinates)

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


def test_a_straight_top_outline_is_told_from_arcs():
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    ball = (xx - 32) ** 2 + (yy - 32) ** 2 <= 20 ** 2
    box = (xx >= 12) & (xx < 52) & (yy >= 10) & (yy < 50)
    # a cylinder seen from 15 degrees above: its top is an ellipse of half-height sin(15) x its radius
    cylinder = ((xx >= 12) & (xx < 52) & (yy >= 15) & (yy < 50)) | (((xx - 31.5) / 20) ** 2 + ((yy - 15) / 5.2) ** 2 <= 1)
    assert flat_top_fraction(box) >= FLAT_TOP_FRACTION
    assert flat_top_fraction(cylinder) < FLAT_TOP_FRACTION  # 0.65
    assert flat_top_fraction(ball) < 0.5  # 0.32
    assert flat_top_fraction(box & (xx < 20)) is None  # 8 px wide: every small outline looks flat
    assert flat_top_fraction(box | ((yy == 0) & (xx == 30))) is None  # cut by the frame: its top is not seen


def test_a_box_is_kept_as_its_hull_and_a_cylinder_is_rounded():
    import trimesh

    box = trimesh.creation.box(extents=(0.5, 0.4, 0.3))
    alpha, fine, occ, truth = _hull_and_truth(box, lambda p: (np.abs(p) <= [0.25, 0.2, 0.15]).all(1))
    rounded = round_solids(occ, alpha, CAMS, fine)
    # its top outline is one straight edge in every view: not round, so the hull (which is the box) stays
    assert torch.equal(rounded > 0.5, occ > 0.5)
    # the whole box is in it, corners and edges (an inscribed ellipse per slice would hold about pi/4 of it)
    assert float(((rounded > 0.5) & truth).sum()) / float(truth.sum()) > 0.98

    cylinder = trimesh.creation.cylinder(radius=0.25, height=0.4, sections=64)
    cylinder.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))  # axis along +y (up)
    alpha, fine, occ, truth = _hull_and_truth(
        cylinder, lambda p: (np.hypot(p[:, 0], p[:, 2]) <= 0.25) & (np.abs(p[:, 1]) <= 0.2))
    rounded = round_solids(occ, alpha, CAMS, fine)
    hull_iou, rounded_iou = _iou(occ > 0.5, truth), _iou(rounded > 0.5, truth)
    print("cylinder: hull IoU", hull_iou, "rounded IoU", rounded_iou)
    assert rounded_iou > hull_iou + 0.05, (hull_iou, rounded_iou)


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
