"""Deforming the source to the edited views (``lifting/deform.py``): a chunk of a one-part surface scaled x1.3 and
blended into the rest (as the bench's ``scale_part`` does) is recovered as the source's own surface moved; an added
ball, a removed chunk, unedited and shifted views are not "explained" by a deformation."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamedit3d_core.cameras import MVCameras
from dreamedit3d_core.lifting import deform, lift_to_mesh

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

pytestmark = pytest.mark.numeric

CAMS = MVCameras.mvdream_default()


def _ellipsoid(seam: bool = False):
    """An ellipsoid (0.7 x 0.9 x 0.6) with smoothly varying vertex colours; ``seam``: the faces on its +z half use
    their own copies of their vertices (a UV seam's duplicated vertices along z = 0)."""
    import trimesh

    from _lift_helpers import asset_from_trimesh

    mesh = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    v = np.asarray(mesh.vertices) * np.array([0.35, 0.45, 0.3])
    f = np.asarray(mesh.faces).copy()
    if seam:
        half = v[f].mean(1)[:, 2] > 0
        used = np.unique(f[half])
        copy = np.full(len(v), -1)
        copy[used] = len(v) + np.arange(len(used))
        v = np.concatenate([v, v[used]])
        f[half] = copy[f[half]]
    colours = 0.25 + 0.5 * (v - v.min(0)) / np.ptp(v, 0)
    return asset_from_trimesh(trimesh.Trimesh(v, f, process=False), vertex_colors=colours)


def _views(asset, res: int = 256):
    from dreamedit3d_core.render import render_views

    return render_views(asset, CAMS, resolution=res, lighting="unlit")


def _diag(asset) -> float:
    v = asset.vertices
    return float((v.max(0).values - v.min(0).values).norm())


def _surface_gap(vertices: torch.Tensor, faces: torch.Tensor, truth) -> np.ndarray:
    """Distance of each vertex to the true surface, and of each true vertex to the mesh (vertices, faces), in units
    of the true mesh's bounding-box diagonal: silhouettes do not show where along the surface a vertex slid, so the
    surfaces are compared, not vertex pairs."""
    import trimesh

    true_mesh = trimesh.Trimesh(truth.vertices.double().numpy(), truth.faces.numpy(), process=False)
    mesh = trimesh.Trimesh(vertices.double().cpu().numpy(), faces.cpu().numpy(), process=False)
    there = trimesh.proximity.closest_point(true_mesh, mesh.vertices)[1]
    back = trimesh.proximity.closest_point(mesh, true_mesh.vertices)[1]
    return np.concatenate([there, back]) / _diag(truth)


@pytest.fixture(scope="module")
def ellipsoid():
    return _ellipsoid()


def test_the_uniform_laplacian_vanishes_on_constants_and_weld_merges_only_coincident_vertices():
    src = _ellipsoid(seam=True)
    verts, faces = src.vertices.double().numpy(), src.faces.numpy()
    welded, wfaces, inverse = deform.weld(verts, faces)
    assert len(verts) > len(welded) == len(np.unique(np.round(verts, 9), axis=0))
    assert np.allclose(welded[inverse], verts)
    lap = deform.uniform_laplacian(wfaces, len(welded))
    assert np.allclose(lap @ np.ones(len(welded)), 0.0)
    # on a vertex and its ring: its position minus the mean of its neighbours
    i = int(wfaces[0, 0])
    ring = np.unique(wfaces[(wfaces == i).any(1)])
    ring = ring[ring != i]
    assert np.allclose((lap @ welded)[i], welded[i] - welded[ring].mean(0))


@pytest.mark.parametrize("seam", [False, True])
def test_a_chunk_scaled_and_blended_is_recovered_as_the_source_moved(seam):
    from lift_eval import scale_part

    src = _ellipsoid(seam)
    truth = scale_part(src).asset
    r = _views(truth)
    fit = deform.fit_deformation(src, r.alpha, CAMS, rgb=r.rgb)
    assert fit.accepted, (fit.reason, fit.stats)
    before = _surface_gap(src.vertices, src.faces, truth)
    gap = _surface_gap(fit.vertices, src.faces, truth)
    assert before.max() > 0.025  # the edit moves the crown's surface by 2.5 % of the diagonal and more
    assert gap.max() <= 0.015 and gap.mean() <= 0.002, (gap.max(), gap.mean())
    if seam:  # the seam's coincident vertices moved together: the surface did not tear
        welded, _, inverse = deform.weld(src.vertices.double().numpy(), src.faces.numpy())
        first = np.zeros(len(welded), np.int64)
        first[inverse] = np.arange(len(inverse))
        assert float((fit.vertices - fit.vertices[torch.from_numpy(first[inverse])]).abs().max()) < 1e-6


def test_the_lift_continues_with_the_deformed_source_its_faces_and_colours(ellipsoid):
    from lift_eval import scale_part

    truth = scale_part(ellipsoid).asset
    r = _views(truth)
    out = lift_to_mesh(r.rgb, CAMS, source=ellipsoid, mode="component_aware", texture_size=0)
    assert out.stats["deformed"] is True and out.stats["geometry"] == "source"
    assert out.stats["deform_max_displacement"] > 0.02 and out.stats["deform_residual"] <= deform.MAX_RESIDUAL_GAIN
    assert torch.equal(out.faces.cpu(), ellipsoid.faces)
    gap = _surface_gap(out.vertices, out.faces, truth)
    assert gap.max() <= 0.015 and gap.mean() <= 0.002, (gap.max(), gap.mean())
    # its colours moved with it: the crown's vertices keep the source's colours, not those of where they were
    assert float((out.vertex_colors.cpu() - ellipsoid.vertex_colors).abs().mean()) < 0.03


@pytest.mark.parametrize("edit", ["add", "remove"])
def test_an_added_ball_or_a_removed_chunk_is_not_explained_by_a_deformation(ellipsoid, edit):
    from lift_eval import make_edit

    r = _views(make_edit(ellipsoid, edit).asset)
    fit = deform.fit_deformation(ellipsoid, r.alpha, CAMS, rgb=r.rgb)
    assert not fit.accepted and fit.reason, fit.stats
    out = lift_to_mesh(r.rgb, CAMS, source=ellipsoid, mode="component_aware", texture_size=0)
    assert out.stats["deformed"] is False and out.stats.get("deform_rejected")
    if edit == "add":  # the ball comes back as a new part
        assert out.stats["new_faces"] > 0


def test_unedited_or_shifted_views_do_not_deform(ellipsoid):
    from lift_eval import jitter_views

    r = _views(ellipsoid)
    fit = deform.fit_deformation(ellipsoid, r.alpha, CAMS, rgb=r.rgb)
    assert not fit.accepted and torch.equal(fit.vertices, ellipsoid.vertices)
    shifted = jitter_views(r.rgb, seed=3)
    for rgb in (r.rgb, shifted):
        out = lift_to_mesh(rgb, CAMS, source=ellipsoid, mode="component_aware", texture_size=0)
        assert out.stats["deformed"] is False
        assert torch.equal(out.vertices.cpu().float(), ellipsoid.vertices)


def test_listed_components_do_not_move(ellipsoid):
    from lift_eval import scale_part

    r = _views(scale_part(ellipsoid).asset)
    out = lift_to_mesh(r.rgb, CAMS, source=ellipsoid, mode="component_aware", texture_size=0, keep="listed",
                       components="body")
    assert out.stats["deformed"] is False
    fit = deform.fit_deformation(ellipsoid, r.alpha, CAMS, movable_faces=torch.zeros(len(ellipsoid.faces),
                                                                                         dtype=torch.bool))
    assert not fit.accepted and torch.equal(fit.vertices, ellipsoid.vertices)


def test_the_fit_runs_where_the_caller_has_no_autograd(ellipsoid):
    """A node host lifts in inference mode: the fit still differentiates through the projection."""
    from lift_eval import scale_part

    r = _views(scale_part(ellipsoid).asset)
    with torch.inference_mode():
        fit = deform.fit_deformation(ellipsoid, r.alpha, CAMS, rgb=r.rgb)
    with torch.no_grad():
        again = deform.fit_deformation(ellipsoid, r.alpha, CAMS, rgb=r.rgb)
    assert fit.accepted and again.accepted
    assert torch.allclose(fit.vertices, again.vertices)
