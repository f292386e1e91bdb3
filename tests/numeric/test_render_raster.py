"""The torch rasterizer against the camera math (analytic cube) and against Embree ray casting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from _render_helpers import embree_cast, lumpy_scene, to_camera
from dreamedit3d_core.cameras import MVCameras
from dreamedit3d_core.errors import ShapeError
from dreamedit3d_core.raster import interpolate, rasterize, rasterize_uv, rasterize_views

pytestmark = pytest.mark.numeric


def _cube():
    box = trimesh.creation.box((1.0, 1.0, 1.0))
    return torch.tensor(box.vertices, dtype=torch.float32), torch.tensor(box.faces, dtype=torch.int64)


def test_unit_cube_front_on_matches_camera_math():
    """At elevation 0 every view looks straight at one cube face: a square of side f/(r-0.5) at depth r-0.5."""
    verts, faces = _cube()
    cams = MVCameras.mvdream_default(elevation_deg=0.0)
    h, w = 64, 80  # different sizes per axis
    frags = rasterize(to_camera(verts, cams), faces, h, w, cams.focal_px(h))
    near = cams.radius - 0.5
    half_px = cams.focal_px(h) * 0.5 / near
    # a pixel is covered iff its centre lies within the projected square
    cols = (np.arange(w) + 0.5 - w / 2)
    rows = (np.arange(h) + 0.5 - h / 2)
    expect = (np.abs(rows)[:, None] <= half_px) & (np.abs(cols)[None, :] <= half_px)
    for v in range(4):
        assert np.array_equal(frags.mask[v].numpy(), expect), f"view {v} silhouette differs from the camera math"
        d = frags.depth[v][frags.mask[v]]
        torch.testing.assert_close(d, torch.full_like(d, near), atol=2e-6, rtol=0)
        assert float(frags.depth[v][~frags.mask[v]].abs().max()) == 0.0
    side = int(expect[h // 2].sum())
    assert abs(side - 2 * half_px) <= 1.0, f"silhouette is {side} px wide, the camera math says {2 * half_px:.2f}"


def test_matches_embree_on_every_channel():
    verts, faces, _ = lumpy_scene()
    cams = MVCameras.mvdream_default()  # elevation 15, fov 40
    h, w = 48, 56
    vt = torch.tensor(verts, dtype=torch.float32)
    frags = rasterize(to_camera(vt, cams), torch.tensor(faces), h, w, cams.focal_px(h))
    ref = embree_cast(verts, faces, cams, h, w)
    assert np.array_equal(frags.mask.numpy(), ref["face_id"] >= 0), "coverage differs from Embree"
    same = frags.face_id.numpy() == ref["face_id"]
    # a different face may only win where both faces are at the same depth (shared edges/vertices)
    assert same.mean() > 0.99
    np.testing.assert_allclose(frags.depth.numpy(), ref["depth"], atol=1e-5, rtol=0)
    # perspective-correct barycentrics put the interpolated world position on the ray hit point
    pos = interpolate(vt.double(), torch.tensor(faces), frags).numpy()
    hit = frags.mask.numpy()
    np.testing.assert_allclose(pos[hit], ref["location"][hit], atol=1e-5, rtol=0)


def test_barycentrics_are_perspective_correct_not_affine():
    """A slanted quad: the interpolated camera-space z equals -depth only with perspective correction."""
    verts = torch.tensor([[-0.4, -0.4, -1.0], [0.4, -0.4, -3.0], [0.4, 0.4, -3.0], [-0.4, 0.4, -1.0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    frags = rasterize(verts, faces, 32, 32, 30.0)
    z = interpolate(verts, faces, frags)[..., 2]
    hit = frags.mask
    assert hit.sum() > 100
    torch.testing.assert_close(-z[hit], frags.depth[hit], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(frags.bary[hit].sum(-1), torch.ones(int(hit.sum())), atol=1e-6, rtol=0)


def test_chunking_does_not_change_the_result():
    verts, faces, _ = lumpy_scene(seed=1)
    cams = MVCameras.mvdream_default()
    vc = to_camera(torch.tensor(verts, dtype=torch.float32), cams)
    a = rasterize(vc, torch.tensor(faces), 40, 40, cams.focal_px(40))
    b = rasterize(vc, torch.tensor(faces), 40, 40, cams.focal_px(40), max_pairs=7)
    assert torch.equal(a.face_id, b.face_id) and torch.equal(a.depth, b.depth) and torch.equal(a.bary, b.bary)


def test_triangles_behind_the_camera_are_dropped_and_empty_input_is_fine():
    verts = torch.tensor([[-1.0, -1.0, 1.0], [1.0, -1.0, 1.0], [0.0, 1.0, 1.0]])
    frags = rasterize(verts, torch.tensor([[0, 1, 2]]), 8, 8, 10.0)
    assert not frags.mask.any()
    frags = rasterize(verts, torch.zeros(0, 3, dtype=torch.int64), 8, 8, 10.0)
    assert frags.face_id.shape == (1, 8, 8) and not frags.mask.any()
    with pytest.raises(ShapeError, match="faces index vertices"):
        rasterize(verts, torch.tensor([[0, 1, 3]]), 8, 8, 10.0)


def test_uv_layout_rasterization_uses_texel_centres_and_v_up():
    uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    frags = rasterize_uv(uv, faces, (6, 10))
    assert frags.mask.all()
    got = interpolate(uv, faces, frags)[0]
    cols = (torch.arange(10) + 0.5) / 10
    rows = 1 - (torch.arange(6) + 0.5) / 6  # row 0 is the top: v near 1
    torch.testing.assert_close(got[..., 0], cols[None].expand(6, 10), atol=1e-6, rtol=0)
    torch.testing.assert_close(got[..., 1], rows[:, None].expand(6, 10), atol=1e-6, rtol=0)
    # the triangle (0,0),(1,0),(1,1) covers v <= u: the bottom-right of the image (v = 0 is the bottom row)
    half = rasterize_uv(uv, faces[:1], 8)
    assert bool(half.mask[0, 7, 7]) and not bool(half.mask[0, 0, 0])


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    verts, faces, _ = lumpy_scene()
    cams = MVCameras.mvdream_default()
    vc = to_camera(torch.tensor(verts, dtype=torch.float32), cams)
    a = rasterize(vc, torch.tensor(faces), 64, 64, cams.focal_px(64))
    b = rasterize(vc.cuda(), torch.tensor(faces).cuda(), 64, 64, cams.focal_px(64))
    assert b.face_id.device.type == "cuda"
    assert (a.face_id == b.face_id.cpu()).float().mean() > 0.999
    torch.testing.assert_close(a.depth, b.depth.cpu(), atol=1e-5, rtol=0)


def test_rasterize_views_is_rasterize_on_the_cameras_and_unproject_lands_on_the_embree_hit_points():
    verts, faces, _ = lumpy_scene()
    cams = MVCameras.mvdream_default()
    h, w = 40, 48
    vt = torch.tensor(verts, dtype=torch.float32)
    frags = rasterize_views(vt, torch.tensor(faces), cams, (h, w))
    direct = rasterize(to_camera(vt, cams), torch.tensor(faces), h, w, cams.focal_px(h))
    assert torch.equal(frags.face_id, direct.face_id) and torch.equal(frags.depth, direct.depth)
    # a subset of views, in the order asked for
    some = rasterize_views(vt, torch.tensor(faces), cams, (h, w), views=[2, 0])
    assert torch.equal(some.face_id, direct.face_id[[2, 0]]) and torch.equal(some.depth, direct.depth[[2, 0]])
    # pixel centre + rendered depth -> world, against Embree's own ray hits
    ref = embree_cast(verts, faces, cams, h, w)
    cols, rows = torch.meshgrid(torch.arange(w) + 0.5, torch.arange(h) + 0.5, indexing="xy")
    pix = torch.stack([cols, rows], -1).reshape(1, -1, 2).expand(4, -1, -1).to(torch.float64)
    world = cams.unproject(pix, frags.depth.reshape(4, -1).to(torch.float64), h, w).reshape(4, h, w, 3).numpy()
    hit = frags.mask.numpy()
    np.testing.assert_allclose(world[hit], ref["location"][hit], atol=1e-5, rtol=0)
