"""Component-aware lifting of a part the edit scales (issue 13 item 3): the part is reshaped whole (its old faces go,
its new shape is its own solid at the scale the silhouettes show, cut by the edited hull), the other components keep
their exact faces, and the join has no cracks. Checked against the scaled ground truth with an independent inside test
(winding number), and the decisions against edits that must not reshape anything (an added ball, a removed part)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamedit3d_core.cameras import MVCameras
from dreamedit3d_core.lifting import components as component_lift
from dreamedit3d_core.lifting import lift_to_mesh

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

pytestmark = pytest.mark.numeric

CAMS = MVCameras.mvdream_default()


def _alpha(asset, res=256):
    from dreamedit3d_core.render import render_views

    return render_views(asset, CAMS, resolution=res, lighting="unlit")


def _triangles(verts, faces) -> set:
    return {t.tobytes() for t in np.asarray(verts, np.float32)[np.asarray(faces)]}


def _boundary_edges(verts, faces) -> int:
    """Edges used by one face only, after welding coincident vertices (trimesh's merge)."""
    import trimesh

    mesh = trimesh.Trimesh(np.asarray(verts, np.float64), np.asarray(faces), process=True)
    _, counts = np.unique(np.sort(np.asarray(mesh.edges), 1), axis=0, return_counts=True)
    return int((counts == 1).sum())


def _part_iou(lifted, edited, source, part_faces) -> float:
    """Volume IoU of the edited part (its scaled solid minus the rest of the source's solid) against the lift's solid
    there, on points sampled in the scaled part's box grown by 30 %."""
    from _lift_helpers import inside_mesh

    ev, ef = edited.vertices.double().numpy(), edited.faces.numpy()
    part = ev[ef[part_faces].reshape(-1)]
    lo, hi = part.min(0), part.max(0)
    pad = 0.3 * (hi - lo)
    pts = np.random.default_rng(0).uniform(lo - pad, hi + pad, (6000, 3))
    in_rest = inside_mesh(source.vertices.numpy(), source.faces.numpy()[~part_faces], pts)
    truth = inside_mesh(ev, ef[part_faces], pts) & ~in_rest
    got = inside_mesh(lifted.vertices.double().numpy(), lifted.faces.numpy(), pts) & ~in_rest
    return float((truth & got).sum() / max((truth | got).sum(), 1))


def test_the_edits_scale_kenneys_right_arm(kenney):
    from lift_eval import edit_region

    faces, what = edit_region(kenney)
    assert what == "part 'arm-right'" and np.array_equal(faces, (kenney.part_ids == 4).numpy())


def test_the_views_tell_a_scaled_part_from_an_added_or_removed_one(kenney):
    from lift_eval import make_edit, scale_part

    comps = component_lift.source_components(kenney, CAMS)
    decide = lambda edit: component_lift.decide_kept_faces(kenney, comps, _alpha(edit.asset).alpha, CAMS)  # noqa: E731
    for factor in (0.7, 1.3):
        d = decide(scale_part(kenney, factor))
        assert d.reshaped == ("arm-right",) and d.removed == () and "arm-right" not in d.kept, (factor, d)
        assert not d.kept_faces[kenney.part_ids == kenney.part_names.index("arm-right")].any()
        assert d.rebuilt_faces()[kenney.part_ids == kenney.part_names.index("arm-right")].all()
    removed = decide(make_edit(kenney, "remove"))
    assert removed.removed == ("arm-right",) and removed.reshaped == ()
    added = decide(make_edit(kenney, "add"))  # the ball covers the antenna: covered by a new part, not grown
    assert added.reshaped == () and added.kept == tuple(kenney.part_names)


@pytest.mark.parametrize("factor", [0.7, 1.3])
def test_the_scale_of_a_reshaped_part_is_fitted_to_the_silhouettes(kenney, factor):
    from lift_eval import scale_part

    arm = kenney.part_ids == kenney.part_names.index("arm-right")
    fits = component_lift.rescaled_parts(_alpha(scale_part(kenney, factor).asset).alpha, CAMS, kenney, arm)
    assert len(fits) == 1 and torch.equal(fits[0].faces, arm)
    assert abs(fits[0].scale / factor - 1) < 0.03, fits[0]
    centre = kenney.vertices[kenney.faces[arm].unique()].double().mean(0)
    assert torch.allclose(fits[0].centre, centre)
    # an unscaled part is no scaling
    assert component_lift.rescaled_parts(_alpha(kenney).alpha, CAMS, kenney, arm) == []


@pytest.mark.parametrize("factor", [0.7, 1.3])
def test_a_scaled_part_is_reshaped_whole_and_the_rest_keeps_its_exact_faces(kenney, factor):
    from lift_eval import scale_part

    edit = scale_part(kenney, factor)  # arm-right scaled about its centre
    arm = (kenney.part_ids == kenney.part_names.index("arm-right")).numpy()
    views = _alpha(edit.asset)
    mesh = lift_to_mesh(views.rgb, CAMS, alpha=views.alpha, source=kenney, mode="component_aware", grid=128,
                        texture_size=0, face_budget=20000)
    s = mesh.stats
    assert s["components_kept"] == [n for n in kenney.part_names if n != "arm-right"], s
    assert s["rescaled_parts"] and abs(s["rescaled_parts"][0] / factor - 1) < 0.03, s
    lifted = _triangles(mesh.vertices.float().numpy(), mesh.faces.numpy())
    # the other components: every face with its exact vertices, first; the arm's old faces: none
    assert s["kept_faces"] == int((~arm).sum())
    assert _triangles(mesh.vertices.float().numpy(), mesh.faces[: s["kept_faces"]].numpy()) == _triangles(
        kenney.vertices.numpy(), kenney.faces.numpy()[~arm])
    assert not (_triangles(kenney.vertices.numpy(), kenney.faces.numpy()[arm]) & lifted)
    iou = _part_iou(mesh, edit.asset, kenney, arm)
    print(factor, "scaled-part IoU", iou, "new faces", s["new_faces"])
    # measured 0.937 (x1.3) / 0.805 (x0.7); before the reshape (the old faces kept inside a hull-shaped shell, or the
    # shrunk arm's old faces trimmed) 0.54 / 0.41
    assert iou >= 0.8, iou
    # the new part is one closed surface overlapping the kept solid: no boundary edge the source lacks
    assert _boundary_edges(mesh.vertices.numpy(), mesh.faces.numpy()) <= _boundary_edges(kenney.vertices.numpy(),
                                                                                         kenney.faces.numpy())


@pytest.mark.parametrize("edit", ["scale", "remove"])
def test_the_strided_nearest_face_lookup_labels_every_voxel_as_the_exhaustive_one(kenney, spot, edit,
                                                                                   monkeypatch):
    """The coarse-then-borders lookup of which source face is nearest to each voxel gives the labels of looking every
    voxel up (kenney with its scaled arm rebuilt; spot with the top fifth trimmed)."""
    from lift_eval import edit_region

    from dreamedit3d_core.lifting import hull

    asset = kenney if edit == "scale" else spot
    rebuilt = torch.from_numpy(edit_region(asset)[0])
    label = rebuilt.to(torch.int64) * torch.tensor([1, 2])[(torch.arange(len(rebuilt)) % 2)]  # three labels
    both = hull.edited_and_source_solids(_alpha(asset, 128).alpha, CAMS, asset, 96)
    where = (both.hull_edited > 0.01) & (both.source_solid > 0.01)
    monkeypatch.setattr(component_lift, "LABEL_STRIDE", 1)
    exhaustive = component_lift._nearest_face_label(both.grid, where, asset, label)
    monkeypatch.setattr(component_lift, "LABEL_STRIDE", 2)
    strided = component_lift._nearest_face_label(both.grid, where, asset, label)
    assert int(where.sum()) > 10_000 and set(exhaustive[where].unique().tolist()) == {0, 1, 2}
    assert torch.equal(strided, exhaustive)
    assert not strided[~where].any()


@pytest.mark.parametrize("edit", ["none", "add", "scale"])
def test_views_a_pixel_or_two_off_reshape_only_the_scaled_part(kenney, edit):
    """Generated views sit a pixel or two off and vary in brightness (the bench's jitter): once the lift registers them
    to the source, no component is reshaped but the scaled arm, whose fitted scale holds."""
    from lift_eval import jitter_views, make_edit

    rgb = jitter_views(_alpha(make_edit(kenney, edit).asset).rgb, seed=2)
    s = lift_to_mesh(rgb, CAMS, source=kenney, mode="component_aware", grid=48, texture_size=0).stats
    assert s["components_reshaped"] == (["arm-right"] if edit == "scale" else []), s
    assert s["components_removed"] == [], s
    if edit == "scale":
        assert len(s["rescaled_parts"]) == 1 and abs(s["rescaled_parts"][0] / 1.3 - 1) < 0.03, s


@pytest.mark.parametrize("factor", [1.3, 0.7])
def test_an_open_part_the_views_show_scaled_comes_back_as_its_own_faces_scaled(tmp_path, factor):
    # the open bust's neck is a tube open at both ends: no solid to voxelize (x0.7 voxelized as one stray voxel, and
    # the neck vanished), so its scaled faces are the part
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from _unseen_assets import BUILDERS
    from dreamedit3d_core.assets import load_asset
    from dreamedit3d_core.render import render_views

    from lift_eval import scale_part

    path, options = BUILDERS["open_bust.glb"](tmp_path)
    bust = load_asset(path, **options)
    edit = scale_part(bust, factor)  # the second-largest part, scaled about its centre
    assert edit.what == f"part 'neck' scaled x{factor}"
    views = render_views(edit.asset, CAMS, resolution=256, lighting="unlit")
    mesh = lift_to_mesh(views.rgb, CAMS, source=bust, mode="component_aware", grid=128, texture_size=0)
    s = mesh.stats
    assert s["components_reshaped"] == ["neck"] and s["new_faces"] > 0, s
    neck = edit.asset.vertices[edit.asset.faces[edit.asset.part_ids == bust.part_names.index("neck")].reshape(-1)]
    lifted = mesh.vertices[mesh.faces[s["kept_faces"]:].reshape(-1)]
    # every vertex of the true scaled neck lies on a vertex of the lift's new faces, up to the fitted scale's error
    # (measured 1.306 for 1.3: 0.0023 off; before, the neck vanished: no solid, no new faces)
    assert abs(s["rescaled_parts"][0] - factor) < 0.02, s["rescaled_parts"]
    assert float(torch.cdist(neck.double(), lifted.double()).amin(1).max()) < 0.005
