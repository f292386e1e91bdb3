"""render_views against the camera math (analytic cube and textured quad), Embree ray casting on shared assets, and
re-projected 3D points for part ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from _render_helpers import embree_cast, lumpy_scene
from dreamedit3d_core.assets import asset_from_arrays, load_asset
from dreamedit3d_core.cameras import MVCameras
from dreamedit3d_core.errors import ConfigError
from dreamedit3d_core.render import AMBIENT, render_views

pytestmark = pytest.mark.numeric


def _bilinear(texture: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Reference bilinear sample (texel centres at (i+0.5)/W, v = 0 at the bottom row, clamp at the border)."""
    h, w, _ = texture.shape
    u, v = u - np.floor(u), v - np.floor(v)
    x = np.clip(u * w - 0.5, 0, w - 1)
    y = np.clip((1 - v) * h - 0.5, 0, h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = texture[y0, x0] * (1 - fx) + texture[y0, x1] * fx
    bottom = texture[y1, x0] * (1 - fx) + texture[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _cube_asset(colour=(0.2, 0.6, 0.9)):
    box = trimesh.creation.box((1.0, 1.0, 1.0))
    return asset_from_arrays(box.vertices, box.faces, face_base_color=colour, normalise=False)


def test_unit_cube_front_on_has_the_predicted_depth_normals_alpha_and_silhouette():
    cams = MVCameras.mvdream_default(elevation_deg=0.0)
    res = 64
    colour = np.array([0.2, 0.6, 0.9])
    r1 = render_views(_cube_asset(colour), cams, resolution=res, ssaa=1, lighting="unlit", background=(0, 0, 0))
    r2 = render_views(_cube_asset(colour), cams, resolution=res, ssaa=2, lighting="unlit", background=(1.0, 0.5, 0.0))
    r_lit = render_views(_cube_asset(colour), cams, resolution=res, ssaa=1, lighting="ambient_diffuse")
    f = cams.focal_px(res)
    near = cams.radius - 0.5
    half = f * 0.5 / near  # half side of the square silhouette, in pixels

    def covered(n):  # pixel-centre test of an n x n supersampled grid against the projected square
        c = (np.arange(res * n) + 0.5) / n - res / 2
        return (np.abs(c)[:, None] <= half) & (np.abs(c)[None, :] <= half)

    expect1 = covered(1)
    expect2 = covered(2).reshape(res, 2, res, 2).mean((1, 3))
    cam_dir = torch.nn.functional.normalize(cams.c2w()[:, :3, 3], dim=-1)  # the face a view sees has this normal
    for v in range(4):
        alpha = r1.alpha[v, 0].numpy()
        assert np.array_equal(alpha, expect1.astype(np.float32)), f"view {v}: silhouette differs from the camera math"
        assert abs(expect1[res // 2].sum() - 2 * half) <= 1.0
        np.testing.assert_allclose(r2.alpha[v, 0].numpy(), expect2, atol=1e-6)
        d = r1.depth[v, 0]
        torch.testing.assert_close(d[d > 0], torch.full_like(d[d > 0], near), atol=2e-6, rtol=0)
        assert torch.equal(d > 0, torch.from_numpy(expect1))
        n = r1.normals[v].permute(1, 2, 0)[torch.from_numpy(expect1)]
        torch.testing.assert_close(n, cam_dir[v].expand_as(n), atol=1e-6, rtol=0)
        assert float(r1.normals[v][:, ~torch.from_numpy(expect1)].abs().max()) == 0
        assert torch.equal(r1.part_id[v], torch.where(torch.from_numpy(expect1), 0, -1))
        # unlit colour is the base colour inside, the background outside
        rgb = r1.rgb[v].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(rgb[expect1], np.broadcast_to(colour, rgb[expect1].shape), atol=1e-6)
        assert np.all(rgb[~expect1] == 0)
        # headlight: the face is perpendicular to the view axis, so cos = 1 / |(x, y, 1)| for the ray through the pixel
        xc = (np.arange(res) + 0.5 - res / 2) / f
        cos = 1.0 / np.sqrt(1.0 + xc[None, :] ** 2 + xc[:, None] ** 2)
        lit = colour[None, None] * (AMBIENT + (1 - AMBIENT) * cos)[..., None]
        np.testing.assert_allclose(r_lit.rgb[v].permute(1, 2, 0).numpy()[expect1], lit[expect1], atol=1e-5)
        # SSAA colour = coverage-weighted mix of the colour and the background
        edge_row = r2.rgb[v, :, res // 2].numpy().T  # [W, 3]
        a = expect2[res // 2][:, None]
        np.testing.assert_allclose(edge_row, a * colour + (1 - a) * np.array([1.0, 0.5, 0.0]), atol=1e-5)


def test_textured_quad_shows_its_texture_at_the_analytic_uv():
    """A quad on the plane x = 0.5 facing the front camera, uv = (z + 0.5, y + 0.5)... seen from +x, image right is -z."""
    rng = np.random.default_rng(0)
    texture = rng.random((7, 5, 3)).astype(np.float32)  # different sizes per axis
    verts = np.array([[0.5, -0.5, -0.5], [0.5, -0.5, 0.5], [0.5, 0.5, 0.5], [0.5, 0.5, -0.5]])
    uv = np.stack([verts[:, 2] + 0.5, verts[:, 1] + 0.5], 1)
    asset = asset_from_arrays(verts, [[0, 1, 2], [0, 2, 3]], face_base_color=(1, 1, 1), uv=uv, textures=(texture,),
                              face_textures=[0, 0], normalise=False)
    cams = MVCameras.mvdream_default(num_views=1, elevation_deg=0.0)
    res = 48
    r = render_views(asset, cams, resolution=res, ssaa=1, lighting="unlit")
    f = cams.focal_px(res)
    t = cams.radius - 0.5
    c = (np.arange(res) + 0.5 - res / 2) / f
    xc, yc = np.meshgrid(c, -c)  # camera right = world -z, camera up = world +y
    z, y = -xc * t, yc * t
    inside = (np.abs(z) <= 0.5) & (np.abs(y) <= 0.5)
    expect = _bilinear(texture, z[inside] + 0.5, y[inside] + 0.5)
    got = r.rgb[0].permute(1, 2, 0).numpy()[inside]
    assert inside.sum() > 300
    np.testing.assert_allclose(got, expect, atol=1e-5)


def test_minified_textures_are_mipmapped_not_aliased():
    """A 1-texel checkerboard seen at ~5 texels per pixel averages to grey with mipmaps; without, it aliases."""
    checker = ((np.arange(128)[:, None] + np.arange(128)[None, :]) % 2).astype(np.float32)
    texture = np.repeat(checker[..., None], 3, -1)
    verts = np.array([[0.5, -0.5, -0.5], [0.5, -0.5, 0.5], [0.5, 0.5, 0.5], [0.5, 0.5, -0.5]])
    uv = np.stack([verts[:, 2] + 0.5, verts[:, 1] + 0.5], 1)
    asset = asset_from_arrays(verts, [[0, 1, 2], [0, 2, 3]], face_base_color=(1, 1, 1), uv=uv, textures=(texture,),
                              face_textures=[0, 0], normalise=False)
    cams = MVCameras.mvdream_default(num_views=1, elevation_deg=0.0)
    kwargs = dict(cameras=cams, resolution=48, ssaa=1, lighting="unlit", background=(0, 0, 0))
    mip = render_views(asset, **kwargs)
    raw = render_views(asset, mipmaps=False, **kwargs)
    inner = mip.alpha[0, 0] > 0
    inner[:, :] &= torch.roll(inner, 1, 0) & torch.roll(inner, -1, 0) & torch.roll(inner, 1, 1) & torch.roll(inner, -1, 1)
    grey = mip.rgb[0, 0][inner]
    assert inner.sum() > 200
    torch.testing.assert_close(grey, torch.full_like(grey, 0.5), atol=1e-3, rtol=0)
    assert float(raw.rgb[0, 0][inner].std()) > 0.1


def _reference_colour(asset, ref):
    """Unlit colour from Embree hits: base x vertex colour x texture at the hit's barycentric UV (numpy only)."""
    v = asset.vertices.double().numpy()
    fcs = asset.faces.numpy()
    hit = ref["face_id"] >= 0
    fid = ref["face_id"][hit]
    bary = trimesh.triangles.points_to_barycentric(v[fcs[fid]], ref["location"][hit])
    colour = asset.face_base_color.double().numpy()[fid]
    if asset.vertex_colors is not None:
        colour = colour * np.einsum("pk,pkc->pc", bary, asset.vertex_colors.double().numpy()[fcs[fid]])
    if asset.textures:
        uv = np.einsum("pk,pkc->pc", bary, asset.uv.double().numpy()[fcs[fid]])
        tex_of = asset.face_textures.numpy()[fid]
        for t, img in enumerate(asset.textures):
            sel = tex_of == t
            colour[sel] *= _bilinear(img.double().numpy(), uv[sel, 0], uv[sel, 1])
    return hit, colour


@pytest.mark.assets
@pytest.mark.parametrize("name", ["kenney_character.glb", "cesium_milk_truck.glb", "vertex_colors_reference.ply"])
def test_every_channel_matches_embree_ray_casting(shared_assets, name):
    asset = load_asset(shared_assets / name)
    cams = MVCameras.mvdream_default()
    res = 64
    # mipmaps off: the reference samples the full-resolution texture bilinearly
    r = render_views(asset, cams, resolution=res, ssaa=1, lighting="unlit", background=(0, 0, 0), mipmaps=False)
    ref = embree_cast(asset.vertices.double().numpy(), asset.faces.numpy(), cams, res, res)
    hit = ref["face_id"] >= 0
    assert np.array_equal(r.alpha[:, 0].numpy() > 0, hit), "coverage differs from Embree"
    np.testing.assert_allclose(r.depth[:, 0].numpy(), ref["depth"], atol=1e-5)
    # part ids: a different part may only win on an exact depth tie between two faces
    part_ref = np.where(hit, asset.part_ids.numpy()[np.maximum(ref["face_id"], 0)], -1)
    differ = r.part_id.numpy() != part_ref
    assert differ.mean() < 0.002, f"{differ.sum()} part-id pixels differ"
    # normals and colour where both saw the same face
    mesh = trimesh.Trimesh(asset.vertices.double().numpy(), asset.faces.numpy(), process=False)
    n_ref = mesh.face_normals[np.maximum(ref["face_id"], 0)]
    c2w = cams.c2w(torch.float64).numpy()
    to_cam = c2w[:, None, None, :3, 3] - ref["location"]
    n_ref = np.where(((n_ref * to_cam).sum(-1) < 0)[..., None], -n_ref, n_ref)
    _, colour_ref = _reference_colour(asset, ref)
    rgb = r.rgb.permute(0, 2, 3, 1).numpy()[hit]
    nrm = r.normals.permute(0, 2, 3, 1).numpy()
    # the rasterizer's face ids are internal; compare normals where the normal is unambiguous (smooth neighbourhood)
    good = hit & (np.linalg.norm(nrm - n_ref, axis=-1) < 1e-4)
    assert good.sum() / hit.sum() > 0.995
    close = np.abs(rgb - colour_ref).max(-1) < 2e-3
    assert close.mean() > 0.995, f"{(~close).sum()} of {close.size} pixels differ in colour from the reference"


def test_part_ids_match_the_part_a_reprojected_3d_point_lands_on_in_all_views():
    verts, faces, parts = lumpy_scene()
    asset = asset_from_arrays(verts, faces, part_ids=parts, part_names=("body", "box"), normalise=False)
    cams = MVCameras.mvdream_default()
    res = 96
    r = render_views(asset, cams, resolution=res, ssaa=1)
    rng = np.random.default_rng(1)
    # random points on the surface (barycentric samples), projected with the cameras' own math
    fid = np.concatenate([rng.choice(np.flatnonzero(parts == k), 3000) for k in (0, 1)])  # both parts well sampled
    b = rng.dirichlet(np.ones(3), len(fid))
    pts = torch.tensor(np.einsum("pk,pkc->pc", b, verts[faces[fid]]), dtype=torch.float64)
    pix, depth = cams.project(pts, res, res)
    checked = 0
    for v in range(4):
        col = pix[v, :, 0].floor().long()
        row = pix[v, :, 1].floor().long()
        ok = (col >= 1) & (col < res - 1) & (row >= 1) & (row < res - 1)
        col, row, d, part = col[ok], row[ok], depth[v][ok], torch.tensor(parts[fid])[ok]
        visible = (r.depth[v, 0, row, col].double() - d).abs() < 0.004
        # a point is unambiguous where its 3x3 neighbourhood shows a single part
        pid = r.part_id[v]
        neigh = torch.stack([pid[row + dy, col + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], 0)
        uniform = (neigh == neigh[0]).all(0)
        sel = visible & uniform
        assert (part[sel] == 1).sum() > 20 and (part[sel] == 0).sum() > 200, f"view {v}: too few visible points"

        assert torch.equal(pid[row[sel], col[sel]], part[sel]), f"view {v}: part ids disagree with 3D points"
        checked += int(sel.sum())
    assert checked > 1000


@pytest.mark.assets
@pytest.mark.parametrize("name", ["kenney_character.glb", "cesium_milk_truck.glb", "Fox.gltf", "spider.obj", "spot.obj",
                                  "lee_perry_smith_head.glb", "vertex_colors_reference.ply"])
def test_every_shared_asset_renders_non_empty_centred_and_inside_the_frame(shared_assets, name):
    r = render_views(load_asset(shared_assets / name), resolution=64, ssaa=1)
    for v in range(4):
        a = r.alpha[v, 0]
        assert a.sum() > 20, f"view {v} is empty"
        assert a[0].sum() == 0 and a[-1].sum() == 0 and a[:, 0].sum() == 0 and a[:, -1].sum() == 0, "touches the border"
        rows, cols = a.nonzero(as_tuple=True)
        centre = torch.stack([(rows.min() + rows.max()) / 2.0, (cols.min() + cols.max()) / 2.0]) + 0.5
        assert float((centre - 32).abs().max()) < 6, f"view {v} is off centre: {centre.tolist()}"
        assert torch.equal(r.part_id[v] >= 0, a > 0) and torch.equal(r.depth[v, 0] > 0, a > 0)


def test_a_million_faces_render_in_bounded_memory():
    n = 708  # 2 * 707^2 = 999,698 triangles on a sphere
    g = np.stack(np.meshgrid(np.linspace(0, np.pi, n), np.linspace(0, 2 * np.pi, n), indexing="ij"), -1).reshape(-1, 2)
    verts = np.stack([np.sin(g[:, 0]) * np.cos(g[:, 1]), np.cos(g[:, 0]), np.sin(g[:, 0]) * np.sin(g[:, 1])], -1)
    i = np.arange(n * n).reshape(n, n)
    a, b, c, d = i[:-1, :-1].ravel(), i[1:, :-1].ravel(), i[1:, 1:].ravel(), i[:-1, 1:].ravel()
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    asset = asset_from_arrays(verts, faces)
    r = render_views(asset, resolution=64, ssaa=1)
    # a sphere of radius 0.5: every view sees a disc of the same area
    area = r.alpha[:, 0].sum((1, 2))
    assert faces.shape[0] > 999_000 and float(area.min()) > 0.95 * float(area.max()) and float(area.min()) > 500


def test_options_are_checked():
    asset = _cube_asset()
    for kwargs, msg in [({"resolution": 100}, "multiple of 8"), ({"resolution": 2048}, "multiple of 8"),
                        ({"ssaa": 0}, "ssaa"), ({"lighting": "pbr"}, "lighting must be one of"),
                        ({"background": (2, 0, 0)}, "background")]:
        with pytest.raises(ConfigError, match=msg):
            render_views(asset, **kwargs)


@pytest.mark.gpu
def test_cuda_render_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    verts, faces, parts = lumpy_scene()
    asset = asset_from_arrays(verts, faces, part_ids=parts, part_names=("a", "b"))
    a = render_views(asset, resolution=64)
    b = render_views(asset, resolution=64, device="cuda")
    assert b.rgb.device.type == "cuda"
    assert (a.part_id == b.part_id.cpu()).float().mean() > 0.999
    torch.testing.assert_close(a.depth, b.depth.cpu(), atol=1e-5, rtol=0)
    assert (a.rgb - b.rgb.cpu()).abs().gt(1e-3).float().mean() < 0.002


def test_the_asset_front_faces_the_front_view(tmp_path):
    """glTF front (+z) marker -> visible in MVDream's front view (azimuth 90), hidden in the back view."""
    scene = trimesh.Scene()
    scene.add_geometry(trimesh.creation.box((1.0, 1.0, 1.0)), node_name="body")
    scene.add_geometry(trimesh.creation.box((0.3, 0.3, 0.2)), node_name="nose",
                       transform=trimesh.transformations.translation_matrix([0.0, 0.0, 0.6]))
    (tmp_path / "nosy.glb").write_bytes(scene.export(file_type="glb"))
    r = render_views(load_asset(tmp_path / "nosy.glb"), resolution=64, ssaa=1)
    nose = r.part_names.index("nose")
    seen = (r.part_id == nose).sum((1, 2))
    assert seen[0] > 30 and seen[2] == 0, seen.tolist()  # front sees it head-on, back not at all
    # and in the front view it sits in the middle of the image, in front of the body (smaller depth)
    rows, cols = (r.part_id[0] == nose).nonzero(as_tuple=True)
    assert abs(float(cols.float().mean()) - 31.5) < 2
    assert float(r.depth[0, 0][rows, cols].max()) < float(r.depth[0, 0][r.part_id[0] == 1 - nose].min())


def test_the_views_carry_the_assets_source_frame():
    from dreamedit3d_core.geometry import SourceFrame

    verts, faces, parts = lumpy_scene()
    asset = asset_from_arrays(verts * 3.0 + 1.0, faces, part_ids=parts, front_axis="-z")
    r = render_views(asset, resolution=16, ssaa=1)
    assert r.source_frame == asset.source_frame and r.source_frame != SourceFrame.gltf_unit()
    back = r.source_frame.to_source_frame(asset.vertices.double()).numpy()
    np.testing.assert_allclose(back, verts * 3.0 + 1.0, atol=1e-5)
    assert r.to(dtype=torch.float16).source_frame == asset.source_frame


def test_lighting_is_a_str_enum_and_the_plain_strings_render_the_same():
    from dreamedit3d_core.render import LIGHTING_MODES, LightingMode

    assert [m.value for m in LIGHTING_MODES] == ["ambient_diffuse", "unlit"]
    assert LightingMode.UNLIT == "unlit" and "unlit" in LIGHTING_MODES and "pbr" not in LIGHTING_MODES
    asset = _cube_asset()
    by_enum = render_views(asset, resolution=16, ssaa=1, lighting=LightingMode.UNLIT)
    by_text = render_views(asset, resolution=16, ssaa=1, lighting="unlit")
    lit = render_views(asset, resolution=16, ssaa=1, lighting="ambient_diffuse")
    assert torch.equal(by_enum.rgb, by_text.rgb) and not torch.equal(by_text.rgb, lit.rgb)
    with pytest.raises(ConfigError, match=r"lighting must be one of \['ambient_diffuse', 'unlit'\], got 'pbr'"):
        render_views(asset, lighting="pbr")
