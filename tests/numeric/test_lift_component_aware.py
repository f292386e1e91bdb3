"""Component-aware lifting (issue 13 item 3): components the edit does not touch keep their exact source faces, new
geometry is built where the edited silhouettes grow past the source's and joined without cracks, components the views
no longer show are gone. Checked against the edited ground truth with an independent inside test (winding number)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamedit3d_core.cameras import MVCameras
from dreamedit3d_core.errors import ConfigError
from dreamedit3d_core.lifting import best_mode, lift_to_mesh
from dreamedit3d_core.lifting import components as component_lift

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

pytestmark = pytest.mark.numeric

CAMS = MVCameras.mvdream_default()


def _views(asset, res=256):
    from dreamedit3d_core.render import render_views

    return render_views(asset, CAMS, resolution=res, lighting="unlit")


def _boundary_edges(verts, faces) -> int:
    """Edges used by one face only, after welding coincident vertices (an independent count via trimesh's merge)."""
    import trimesh

    mesh = trimesh.Trimesh(np.asarray(verts, np.float64), np.asarray(faces), process=True)
    edges = np.sort(np.asarray(mesh.edges), 1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    return int((counts == 1).sum())


def _source_triangles(asset, face_mask=None) -> set:
    tri = asset.vertices[asset.faces if face_mask is None else asset.faces[face_mask]].numpy()
    return {t.tobytes() for t in tri}


def _lifted_triangles(mesh, count) -> set:
    tri = mesh.vertices[mesh.faces[:count]].float().numpy()
    return {t.tobytes() for t in tri}


@pytest.mark.parametrize("name", ["kenney", "spot"])
def test_a_no_edit_lift_is_the_source_exactly(name, request):
    asset = request.getfixturevalue(name)
    mesh = lift_to_mesh(_views(asset).rgb, CAMS, source=asset, mode="component_aware", grid=64, texture_size=0)
    assert mesh.stats["geometry"] == "source" and mesh.stats["new_faces"] == 0
    assert mesh.stats["components_kept"] == list(asset.part_names)
    # the same faces with bit-identical corners (vertex colours only: no UV seams split the vertices)
    assert mesh.faces.shape == asset.faces.shape
    assert _lifted_triangles(mesh, len(mesh.faces)) == _source_triangles(asset)


def _added_ball_samples(edited, source) -> tuple:
    """(points around the ADD edit's ball [P, 3], inside the source's solid, inside the added part = ball minus the
    source): the ground truth an added-part IoU is measured on (independent winding-number inside test)."""
    from _lift_helpers import inside_mesh

    ball = edited.vertices[edited.faces[edited.part_ids == edited.num_parts - 1].reshape(-1)].double().numpy()
    centre = ball.mean(0)
    radius = np.linalg.norm(ball - centre, axis=1).max()
    pts = centre + np.random.default_rng(0).uniform(-1.3 * radius, 1.3 * radius, (6000, 3))
    in_source = inside_mesh(source.vertices.numpy(), source.faces.numpy(), pts)
    return pts, in_source, (np.linalg.norm(pts - centre, axis=1) <= radius) & ~in_source


@pytest.mark.parametrize("name", ["kenney", "spot"])
def test_an_added_part_is_recovered_and_joined_while_the_rest_keeps_its_exact_faces(name, request):
    from lift_eval import make_edit

    from _lift_helpers import inside_mesh

    asset = request.getfixturevalue(name)
    edit = make_edit(asset, "add")  # a ball (r = 0.16 of the asset's size) half sunk into its top
    mesh = lift_to_mesh(_views(edit.asset).rgb, CAMS, source=asset, mode="component_aware", grid=64, texture_size=0,
                        face_budget=20000)
    s = mesh.stats
    assert s["geometry"] == "component_aware" and s["components_kept"] == list(asset.part_names), s
    # untouched components: every source face is in the lift with its exact vertices, first and in order
    assert s["kept_faces"] == asset.faces.shape[0] and s["new_faces"] > 0
    assert _lifted_triangles(mesh, s["kept_faces"]) == _source_triangles(asset)
    # the added part's volume (ball minus the source's solid), sampled around the ball, against the lift's
    pts, in_source, truth = _added_ball_samples(edit.asset, asset)
    got = inside_mesh(mesh.vertices.numpy(), mesh.faces.numpy(), pts) & ~in_source
    iou = (truth & got).sum() / (truth | got).sum()
    print(name, "added-part IoU", iou, "new faces", s["new_faces"])
    assert iou >= 0.9, iou  # measured 0.935 (kenney) / 0.942 (spot); the four-view hull blurred by 0.3 of its thickness
    # (before lifting.rounding): 0.875 / 0.887; unrounded: 0.83 / 0.84
    # joined without cracks: the new part is one closed surface, so the lift has no boundary edge the source lacks
    assert _boundary_edges(mesh.vertices.numpy(), mesh.faces.numpy()) == _boundary_edges(asset.vertices.numpy(),
                                                                                        asset.faces.numpy())


def test_a_removed_component_is_gone_and_nothing_is_rebuilt_in_its_place(kenney):
    from lift_eval import make_edit

    from _lift_helpers import inside_mesh

    edit = make_edit(kenney, "remove")  # the second-largest part: an arm
    gone = sorted(set(kenney.part_names) - {kenney.part_names[i] for i in edit.asset.part_ids.unique().tolist()})
    mesh = lift_to_mesh(_views(edit.asset).rgb, CAMS, source=kenney, mode="component_aware", grid=64, texture_size=0)
    s = mesh.stats
    assert s["components_removed"] == gone and s["new_faces"] == 0, s
    kept = torch.from_numpy(np.isin(np.asarray(kenney.part_names)[kenney.part_ids.numpy()], gone, invert=True))
    assert _lifted_triangles(mesh, len(mesh.faces)) == _source_triangles(kenney, kept)
    arm = kenney.vertices[kenney.faces[~kept].reshape(-1)].double().numpy()
    tip = arm[np.argmax(np.abs(arm[:, 2]))][None] * 0.97  # just inside the arm's far end
    assert inside_mesh(kenney.vertices.numpy(), kenney.faces.numpy(), tip).all()
    assert not inside_mesh(mesh.vertices.numpy(), mesh.faces.numpy(), tip).any()


def test_keep_policies_choose_the_faces_that_stay(kenney):
    views = _views(kenney, 128)
    comps = component_lift.source_components(kenney, CAMS)
    parts = kenney.part_ids
    listed = component_lift.decide_kept_faces(kenney, comps, views.alpha, CAMS, "listed", "torso, <antenna>")
    assert listed.kept == ("torso", "antenna")
    assert torch.equal(listed.kept_faces, (parts == 2) | (parts == 5))
    assert not listed.rebuilt_faces()[(parts == 2) | (parts == 5)].any()
    none = component_lift.decide_kept_faces(kenney, comps, views.alpha, CAMS, "none")
    assert not none.kept_faces.any() and none.rebuilt_faces().all()
    # the prompt uses <torso> and <antenna>: the components it leaves out are the ones it edits
    by_prompt = component_lift.decide_kept_faces(kenney, comps, views.alpha, CAMS, "all but edited",
                                                 prompt="a <torso> with a golden <antenna>")
    assert set(by_prompt.edited) == {"leg-left", "leg-right", "arm-left", "arm-right"}
    assert torch.equal(by_prompt.kept_faces, (parts == 2) | (parts == 5))
    named = component_lift.decide_kept_faces(kenney, comps, views.alpha, CAMS, "all_but_edited", ["arm-left"])
    assert named.edited == ("arm-left",) and torch.equal(named.kept_faces, parts != 3)
    with pytest.raises(ConfigError, match="hat.*components are"):
        component_lift.decide_kept_faces(kenney, comps, views.alpha, CAMS, "listed", "hat")
    with pytest.raises(ConfigError, match="needs the components to keep"):
        component_lift.decide_kept_faces(kenney, comps, views.alpha, CAMS, "listed")
    with pytest.raises(ConfigError, match="keep must be one of"):
        component_lift.as_keep_policy("some")


def test_a_listed_keep_rebuilds_the_other_components_from_the_views(kenney):
    mesh = lift_to_mesh(_views(kenney).rgb, CAMS, source=kenney, mode="component_aware", keep="listed",
                        components="torso", grid=64, texture_size=0)
    s = mesh.stats
    torso = kenney.part_ids == 2
    assert s["components_kept"] == ["torso"] and s["kept_faces"] == int(torso.sum()) and s["new_faces"] > 0
    assert _lifted_triangles(mesh, s["kept_faces"]) == _source_triangles(kenney, torso)


def test_best_mode_with_a_source_is_component_aware():
    assert best_mode(True) == ("component_aware", None)
    assert best_mode(False) == ("hull", None)


def test_components_are_found_by_name_or_by_their_learned_token():
    comps = component_lift.Components(("Hat Brim", "body"), torch.zeros(1, dtype=torch.int64))
    assert comps.index("hat brim") == 0 and comps.index("<hat_brim>") == 0 and comps.index("<BODY>") == 1
    assert comps.index("<hat>") is None
    assert component_lift.edited_by_prompt("a <body> wearing a crown", comps) == ("Hat Brim",)
    assert component_lift.edited_by_prompt("a robot", comps) == ()
    assert component_lift.split_names("<hat>, body;  ear ") == ("hat", "body", "ear")


def test_kept_faces_keep_the_source_texture_and_the_added_part_takes_the_views_colour(spot):
    from lift_eval import ADD_COLOR, make_edit

    from dreamedit3d_core.lifting.bake import rasterize_texture, source_surface_colors

    edit = make_edit(spot, "add")  # a red ball on spot's head
    mesh = lift_to_mesh(_views(edit.asset).rgb, CAMS, source=spot, mode="component_aware", grid=64, texture_size=512,
                        face_budget=20000)
    kept = mesh.stats["kept_faces"]
    frags = rasterize_texture(mesh.uv, mesh.faces, mesh.texture.shape[0])  # a canvas twice the atlas (source+atlas)
    covered = frags.face_id[0] >= 0
    face = frags.face_id[0][covered]
    got = mesh.texture[covered]
    old = face < kept  # kept faces come first, in the source's order (spot has no unused vertices or degenerate faces)
    truth = source_surface_colors(spot, face[old], frags.bary[0][covered][old])
    exact = float(((got[old] - truth).abs().amax(-1) <= 1e-6).float().mean())
    # the new part's texels that lie outside the source (the ball's visible cap) are the ball's red
    texel_pos = (mesh.vertices[mesh.faces[face[~old]]] * frags.bary[0][covered][~old][..., None]).sum(1)
    above = texel_pos[:, 1] > float(spot.vertices[:, 1].max()) + 0.02
    red = float(((got[~old][above] - torch.tensor(ADD_COLOR)).abs().amax(-1) < 0.1).float().mean())
    print("kept texels equal to the source texture", exact, "new texels above the head red", red)
    assert exact >= 0.95 and red >= 0.9, (exact, red)


def test_a_low_poly_asset_keyed_at_low_resolution_loses_no_component(tmp_path):
    """Keyed outlines move a low-poly part's corners and apexes off the silhouette by a pixel: no component goes
    (helper F's repro: nested_instanced.glb at 64 px removed torso, a leg and the tail tip)."""
    from _unseen_assets import BUILDERS

    from dreamedit3d_core.assets import load_asset

    path, options = BUILDERS["nested_instanced.glb"](tmp_path)
    asset = load_asset(path, **options)
    for res in (64, 128):
        mesh = lift_to_mesh(_views(asset, res).rgb, CAMS, source=asset, mode="component_aware", grid=32,
                            texture_size=0)
        assert mesh.stats["components_removed"] == [] and mesh.stats["components_trimmed"] == [], (res, mesh.stats)
        assert mesh.stats["kept_faces"] == asset.faces.shape[0]


def test_a_lift_of_source_faces_keeps_the_source_texture_layout_and_rebakes_only_what_changed(shared_assets):
    from lift_eval import RECOLOR, make_edit

    from dreamedit3d_core.assets import load_asset
    from dreamedit3d_core.lifting.bake import rasterize_texture

    fox = load_asset(shared_assets / "Fox.gltf")  # one 1024² texture over non-overlapping UVs
    image = fox.textures[0]
    none = lift_to_mesh(_views(fox).rgb, CAMS, source=fox, mode="component_aware", grid=64, texture_size=256)
    assert none.stats["texture_layout"] == "source" and none.texture.shape == image.shape
    assert torch.equal(none.uv, fox.uv) and torch.equal(none.faces, fox.faces)
    same = float(((none.texture - image).abs().amax(-1) <= 1e-4).float().mean())
    edit = make_edit(fox, "recolor")  # the top fifth turned blue
    recoloured = lift_to_mesh(_views(edit.asset).rgb, CAMS, source=fox, mode="component_aware", grid=64,
                              texture_size=256)
    assert recoloured.stats["texture_layout"] == "source"
    frags = rasterize_texture(fox.uv, fox.faces, image.shape[0])
    blue_face = (edit.asset.face_base_color == torch.tensor(RECOLOR)).all(-1)
    covered = frags.face_id[0] >= 0
    on_blue = covered & blue_face[frags.face_id[0].clamp(min=0)]
    blue = float(((recoloured.texture[on_blue] - torch.tensor(RECOLOR)).abs().amax(-1) < 0.15).float().mean())
    untouched = covered & ~on_blue
    kept = float(((recoloured.texture[untouched] - image[untouched]).abs().amax(-1) <= 1e-4).float().mean())
    print("no edit: texels equal to the source's", same, "recolour: blue", blue, "untouched texels kept", kept)
    assert same >= 0.97 and blue >= 0.8 and kept >= 0.9, (same, blue, kept)  # measured 0.974, 0.883, 0.923
    # a palette texture (kenney: each face's UVs on one swatch, shared) cannot be re-baked in place: its faces stay on
    # the source's image in a canvas beside an atlas (quadrants of 256: half kenney's 512² image; test_lift_texture.py)
    from dreamedit3d_core.assets import load_asset as load

    kenney = load(shared_assets / "kenney_character.glb")
    mesh = lift_to_mesh(_views(kenney).rgb, CAMS, source=kenney, mode="component_aware", grid=64, texture_size=256)
    assert mesh.stats["texture_layout"] == "source+atlas" and mesh.texture.shape[0] == 512


def test_a_reconstructor_shapes_only_the_new_part_and_the_kept_faces_stay_the_sources(kenney):
    """Issue 14 item 4: with a reconstructor (LGM in the graph), component-aware lifting takes the new part's shape
    from the reconstructor's mesh, inside the change region the silhouettes found; the kept components stay exact.
    A reconstructor that returns the edited ground truth recovers the added ball better than the silhouettes alone;
    one whose mesh has nothing where the ball is adds nothing, however the silhouettes grew."""
    from lift_eval import make_edit

    from _lift_helpers import inside_mesh
    from dreamedit3d_core.lifting import register_reconstructor, unregister_reconstructor

    edit = make_edit(kenney, "add")
    e = edit.asset
    pts, in_source, truth = _added_ball_samples(e, kenney)
    calls = []

    def ground_truth(rgb, alpha, cameras, grid, device):
        calls.append(grid)
        return e.vertices.double().numpy(), e.faces.numpy()

    def source_only(rgb, alpha, cameras, grid, device):  # a reconstruction that missed the added ball entirely
        return kenney.vertices.double().numpy(), kenney.faces.numpy()

    rgb = _views(e).rgb
    ious = {}
    for name, fn in (("truth", ground_truth), ("source_only", source_only), (None, None)):
        if fn is not None:
            register_reconstructor(f"test-{name}", fn, overwrite=True)
        try:
            mesh = lift_to_mesh(rgb, CAMS, source=kenney, mode="component_aware", grid=64, texture_size=0,
                                face_budget=20000, reconstructor=f"test-{name}" if fn is not None else None)
        finally:
            if fn is not None:
                unregister_reconstructor(f"test-{name}")
        s = mesh.stats
        assert s["kept_faces"] == kenney.faces.shape[0], s
        assert _lifted_triangles(mesh, s["kept_faces"]) == _source_triangles(kenney)
        assert s.get("reconstructor") == (f"test-{name}" if fn is not None else None)
        got = inside_mesh(mesh.vertices.numpy(), mesh.faces.numpy(), pts) & ~in_source
        ious[name] = (truth & got).sum() / max((truth | got).sum(), 1)
        if name == "source_only":
            assert s["new_faces"] == 0 or got.sum() < 0.05 * truth.sum(), (s["new_faces"], got.sum(), truth.sum())
    print("added-part IoU by reconstructor", ious)
    assert calls == [64]
    # measured: 0.912 with the true mesh, 0.935 from the silhouettes alone (rounded to the ellipse inscribed in their
    # slices: a ball is what that assumes), 0.0 from a mesh without the ball (the reconstructor's shape is what counts)
    assert ious["truth"] >= 0.9 and ious[None] >= 0.9, ious


def test_an_added_part_over_thin_legs_leaves_no_ghost_of_the_hull(shared_assets):
    from dreamedit3d_core.assets import load_asset

    from lift_eval import make_edit

    spider = load_asset(shared_assets / "spider.obj")  # thin legs: the four-view hull around them is mostly empty
    edit = make_edit(spider, "add")  # a ball on top: it covers the legs' hull in one direction only
    ball = edit.asset.vertices[edit.asset.faces[edit.asset.part_ids == edit.asset.num_parts - 1].reshape(-1)]
    centre, radius = ball.double().mean(0), float((ball.double() - ball.double().mean(0)).norm(dim=1).max())
    mesh = lift_to_mesh(_views(edit.asset).rgb, CAMS, source=spider, mode="component_aware", grid=128, texture_size=0)
    s = mesh.stats
    assert s["ghost_solids_dropped"] >= 1 and s["new_faces"] > 0, s
    new = mesh.vertices[mesh.faces[s["kept_faces"]:]].double().mean(1)
    # every new face belongs to the ball (before: 36 % of the new surface lay more than 2 radii away, by the body)
    assert float((new - centre).norm(dim=1).max()) < 1.5 * radius
