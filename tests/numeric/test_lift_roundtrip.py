"""Round trips on real assets: render the four views, lift them, re-render the lifted mesh with the same cameras.

The re-render goes through ``render_views`` (the render stage's own texture sampling), not the bake's lookup. Inputs are
rendered unlit: the render stage's light sits at each camera, so lit views disagree about a surface's brightness and no
single texture can match all four; unlit views isolate the lift's own error.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from _lift_helpers import asset_from_trimesh, box_with_nose, chamfer, lifted_as_asset, masked_psnr, silhouette_iou
from dreamedit3d_core.cameras import MVCameras
from dreamedit3d_core.errors import Interrupted
from dreamedit3d_core.lifting import export_mesh, lift_to_mesh, read_provenance
from dreamedit3d_core.progress import CallbackProgress

pytestmark = pytest.mark.numeric

CAMS = MVCameras.mvdream_default()
RES = 256
FAST = dict(grid=64, texture_size=256, face_budget=8000)


def _render(asset, lighting="unlit"):
    from dreamedit3d_core.render import render_views

    return render_views(asset, CAMS, resolution=RES, lighting=lighting)


def _scores(mesh, views):
    again = _render(lifted_as_asset(mesh))
    inside = (again.alpha[:, 0] > 0.99) & (views.alpha[:, 0] > 0.99)
    return silhouette_iou(again.alpha, views.alpha), masked_psnr(again.rgb, views.rgb, inside)


@pytest.fixture(scope="module")
def kenney(shared_assets):
    from dreamedit3d_core.assets import load_asset

    asset = load_asset(shared_assets / "kenney_character.glb")
    return asset, _render(asset)


@pytest.fixture(scope="module")
def kenney_hull(kenney):
    asset, views = kenney
    return lift_to_mesh(views.rgb, CAMS, alpha=views.alpha, **FAST)


def test_hull_round_trip_keeps_silhouettes_and_colour(kenney, kenney_hull):
    _, views = kenney
    iou, psnr = _scores(kenney_hull, views)
    # measured IoU 0.979-0.983, PSNR 23.0-26.7 dB (mean 24.5) at grid 64, texture 256
    print("kenney hull iou", iou, "psnr", psnr, kenney_hull.stats)
    assert min(iou) >= 0.95, iou
    assert np.mean(psnr) >= 23.0 and min(psnr) >= 21.5, psnr


def test_hull_mesh_is_watertight_and_within_budget(kenney_hull):
    import trimesh

    # the UV seams split vertices; merging them back by position must give a closed surface
    mesh = trimesh.Trimesh(kenney_hull.vertices.numpy(), kenney_hull.faces.numpy(), process=False)
    mesh.merge_vertices(merge_tex=True, merge_norm=True)
    assert mesh.is_watertight
    assert kenney_hull.faces.shape[0] <= FAST["face_budget"]
    assert kenney_hull.texture.shape == (256, 256, 3)
    assert 0.0 <= kenney_hull.stats["unseen_texel_fraction"] < 0.5


def test_keyed_background_gives_the_same_silhouettes_as_alpha(kenney):
    from dreamedit3d_core.render import render_views

    asset, views = kenney
    # a green screen: the robot has near-white parts on its outline that a white key would cut away
    green = render_views(asset, CAMS, resolution=RES, lighting="unlit", background=(0.0, 1.0, 0.0))
    keyed = lift_to_mesh(green.rgb, CAMS, alpha=None, background=(0, 1, 0), grid=64, texture_size=0, face_budget=8000)
    iou, _ = _scores(keyed, views)
    print("kenney keyed iou", iou)
    # measured 0.956-0.965: the 3x3 opening of the keyed masks trims the thinnest parts (antenna tip)
    assert min(iou) >= 0.94, iou


def test_keep_source_preserves_geometry_exactly(shared_assets):
    from dreamedit3d_core.assets import load_asset

    asset = load_asset(shared_assets / "cesium_milk_truck.glb")
    views = _render(asset)
    mesh = lift_to_mesh(views.rgb, CAMS, alpha=views.alpha, source=asset, mode="keep_source", grid=64, texture_size=256)
    # identity: every output vertex is a source vertex, every source face is kept (UV seams only split vertices)
    src = asset.vertices.double().numpy()
    out = mesh.vertices.double().numpy()
    assert mesh.faces.shape[0] == asset.faces.shape[0]
    tri_src = np.sort(src[asset.faces.numpy()].reshape(-1, 9), axis=0)
    tri_out = np.sort(out[mesh.faces.numpy()].reshape(-1, 9), axis=0)
    assert np.array_equal(tri_src, tri_out)
    iou, psnr = _scores(mesh, views)
    print("truck keep_source iou", iou, "psnr", psnr, mesh.stats)
    # measured IoU 1.0 and PSNR 22.8-24.5 dB (mean 23.5) at texture 256
    assert min(iou) >= 0.99, iou
    assert np.mean(psnr) >= 22.0, psnr


def test_source_guided_keeps_a_protrusion_the_hull_turns_into_a_fin():
    tm, colors = box_with_nose()
    asset = asset_from_trimesh(tm, face_colors=colors)
    views = _render(asset)
    kw = dict(alpha=views.alpha, grid=64, texture_size=0, face_budget=5000)
    hull = lift_to_mesh(views.rgb, CAMS, mode="hull", **kw)
    guided = lift_to_mesh(views.rgb, CAMS, mode="source_guided", source=asset, **kw)
    c_hull = chamfer(hull.vertices.numpy(), hull.faces.numpy(), tm.vertices, tm.faces)
    c_guided = chamfer(guided.vertices.numpy(), guided.faces.numpy(), tm.vertices, tm.faces)
    print("chamfer hull", c_hull, "source_guided", c_guided)
    # measured 0.026 (hull: the nose becomes a fin as wide as the box) vs 0.007 (source-guided)
    assert c_hull > 0.018
    assert c_guided < 0.5 * c_hull and c_guided < 0.011
    # the fin: the hull has material beside the nose (z = +-0.2, in front of the box), the guided mesh does not
    from _lift_helpers import inside_mesh

    probe = np.array([[0.33, 0.0, 0.2], [0.33, 0.0, -0.2]])
    assert inside_mesh(hull.vertices.numpy(), hull.faces.numpy(), probe).all()
    assert not inside_mesh(guided.vertices.numpy(), guided.faces.numpy(), probe).any()


def test_glb_reloads_with_texture_uvs_and_provenance(kenney_hull, tmp_path):
    import trimesh

    path = export_mesh(kenney_hull, tmp_path / "lifted", extras={"prompt": "a <hat> robot", "seed": 42})
    assert path.suffix == ".glb"
    loaded = trimesh.load(path, force="mesh", process=False)
    assert loaded.faces.shape[0] == kenney_hull.faces.shape[0]
    uv = np.asarray(loaded.visual.uv)
    np.testing.assert_allclose(uv, kenney_hull.uv.numpy(), atol=1e-6)
    tex = np.asarray(loaded.visual.material.baseColorTexture.convert("RGB"), np.float32) / 255.0
    np.testing.assert_allclose(tex, kenney_hull.texture.numpy(), atol=1.0 / 255 + 1e-6)
    prov = read_provenance(path)
    assert prov["prompt"] == "a <hat> robot" and prov["seed"] == 42
    assert prov["dreamedit3d_lift"]["num_faces"] == kenney_hull.faces.shape[0]


def test_obj_export_reloads_with_texture(kenney_hull, tmp_path):
    import trimesh

    path = export_mesh(kenney_hull, tmp_path / "lifted.obj", fmt="obj")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lifted.mtl", "lifted.obj", "lifted.png"]
    loaded = trimesh.load(path, force="mesh", process=False)
    assert loaded.visual.uv is not None and len(loaded.visual.uv) == len(loaded.vertices)
    assert loaded.visual.material.image.size == (256, 256)


def test_texture_refinement_lowers_the_photometric_loss(kenney):
    _, views = kenney
    mesh = lift_to_mesh(views.rgb, CAMS, alpha=views.alpha, grid=48, texture_size=128, face_budget=4000, refine_steps=10)
    first, last = mesh.stats["refine_loss_first"], mesh.stats["refine_loss_last"]
    print("refine L1", first, "->", last)
    assert math.isfinite(last) and last < 0.97 * first  # measured -5% in 10 steps


def test_progress_reports_stages_and_interrupts(kenney):
    _, views = kenney
    seen = []
    prog = CallbackProgress(on_update=lambda s, t, p, info: seen.append((s, t, info.get("stage"))),
                            should_stop=lambda: len(seen) >= 2)
    with pytest.raises(Interrupted):
        lift_to_mesh(views.rgb, CAMS, alpha=views.alpha, grid=32, texture_size=0, progress=prog)
    assert seen[:2] == [(1, 5, "silhouettes"), (2, 5, "geometry")]


def test_source_guided_adds_what_the_edit_added_and_drops_what_it_removed():
    import trimesh

    from _lift_helpers import inside_mesh

    source_tm, colors = box_with_nose()
    source = asset_from_trimesh(source_tm, face_colors=colors)
    # the "edit": the nose is gone and a ball (a hat) sits on top of the box
    box = trimesh.creation.box(extents=(0.5, 0.5, 0.7))
    hat = trimesh.creation.icosphere(subdivisions=3, radius=0.15)
    hat.apply_translation((0.0, 0.25 + 0.12, 0.0))
    edited_tm = trimesh.util.concatenate([box, hat])
    edited = asset_from_trimesh(edited_tm, face_colors=np.tile([0.3, 0.8, 0.3], (len(edited_tm.faces), 1)))
    views = _render(edited)
    mesh = lift_to_mesh(views.rgb, CAMS, alpha=views.alpha, source=source, mode="source_guided", grid=64,
                        texture_size=0, face_budget=5000)
    v, f = mesh.vertices.numpy(), mesh.faces.numpy()
    probes = np.array([[0.0, 0.40, 0.0],  # inside the hat
                       [0.40, 0.0, 0.0],  # where the removed nose was
                       [0.0, 0.0, 0.0]])  # inside the box
    assert inside_mesh(v, f, probes).tolist() == [True, False, True]
    assert mesh.stats["added_volume_fraction"] > 0.01
    c = chamfer(v, f, edited_tm.vertices, edited_tm.faces)
    print("edit chamfer", c, mesh.stats["added_volume_fraction"])
    assert c < 0.012


@pytest.mark.gpu
def test_cuda_lift_matches_the_cpu_lift(kenney):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    _, views = kenney
    kw = dict(alpha=views.alpha, grid=64, texture_size=256, face_budget=8000)
    cpu = lift_to_mesh(views.rgb, CAMS, **kw)
    gpu = lift_to_mesh(views.rgb.cuda(), CAMS, **{**kw, "alpha": views.alpha.cuda()})
    assert gpu.vertices.is_cuda and gpu.texture.is_cuda
    iou_c, psnr_c = _scores(cpu, views)
    iou_g, psnr_g = _scores(gpu.to("cpu"), views)
    assert min(iou_g) >= 0.95 and abs(np.mean(psnr_g) - np.mean(psnr_c)) < 0.5, (iou_g, psnr_g, psnr_c)


def test_keying_keeps_a_white_van_on_a_white_background(shared_assets):
    from dreamedit3d_core.assets import load_asset
    from dreamedit3d_core.lifting.views import key_background

    asset = load_asset(shared_assets / "cesium_milk_truck.glb")
    views = _render(asset, lighting="ambient_diffuse")
    noise = 0.015 * torch.randn(views.rgb.shape, generator=torch.Generator().manual_seed(0))
    noisy = (views.rgb + noise).clamp(0, 1)  # sampler-like background noise
    masks = key_background(noisy, (1, 1, 1))
    iou = silhouette_iou(masks, views.alpha)
    print("white van keyed mask iou", iou)
    # measured 0.966-0.989; a plain colour-distance key gets 0.61-0.87 (the white body touches the outline)
    assert min(iou) >= 0.94, iou
    mesh = lift_to_mesh(noisy, CAMS, grid=64, texture_size=0, face_budget=8000)
    assert min(_scores(mesh, views)[0]) >= 0.93


def test_default_lift_keys_sampler_like_views_on_grey(kenney):
    """Sampled views have no alpha and sit on the white or grey MVDream was trained with, never exactly the render's: the
    default ``lift_to_mesh`` reads each view's background off its border (before: "view 0 (front) is object everywhere").
    (The robot's white helmet on an off-white background is ambiguous to any colour key: measured IoU 0.86-0.88 at
    0.985 and 0.77-0.85 at 0.94 with this noise; white backgrounds are covered by the white-van test below.)"""
    from dreamedit3d_core.render import render_views

    asset, views = kenney
    g = torch.Generator().manual_seed(3)
    sampled = []
    for grey in (0.5, 0.75):
        r = render_views(asset, CAMS, resolution=RES, lighting="unlit", background=(grey,) * 3)
        brightness = torch.tensor([1.0, 1.03, 0.97, 1.0]).view(4, 1, 1, 1)  # per-view drift, as samples have
        sampled.append(((r.rgb * brightness) + 0.02 * torch.randn(r.rgb.shape, generator=g)).clamp(0, 1))
    for rgb in sampled:
        mesh = lift_to_mesh(rgb, CAMS, grid=64, texture_size=0, face_budget=8000)
        iou, _ = _scores(mesh, views)
        print("kenney sampled-like keyed iou", iou, mesh.stats["silhouettes"])
        assert mesh.stats["silhouettes"] == "keyed_auto"
        # measured 0.956-0.969 (0.5) and 0.96-0.97 (0.75); the render's own alpha gives 0.979-0.983
        assert min(iou) >= 0.93, iou
