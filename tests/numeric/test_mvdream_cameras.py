"""MVDream's camera input against the reference vectors of mvdream.md §3 (from bytedance/MVDream get_camera)."""

from __future__ import annotations

import pytest
import torch

from dreamedit3d_core.cameras import get_camera

pytestmark = pytest.mark.numeric

S, C = 0.258819, 0.965926  # sin 15°, cos 15°
AZ90 = [0, -S, C, C, 1, 0, 0, 0, 0, C, S, S, 0, 0, 0, 1]
AZ180 = [-1, 0, 0, 0, 0, -S, C, C, 0, C, S, S, 0, 0, 0, 1]
AZ270 = [0, S, -C, -C, -1, 0, 0, 0, 0, C, S, S, 0, 0, 0, 1]  # az 90 with rows 0 and 1 negated
AZ360 = [1, 0, 0, 0, 0, S, -C, -C, 0, C, S, S, 0, 0, 0, 1]


def test_pack_views_front_right_back_left_match_mvdream_reference_vectors():
    cams = get_camera(4, elevation=15, azimuth_start=90)
    expected = torch.tensor([AZ90, AZ180, AZ270, AZ360], dtype=torch.float32)
    assert cams.shape == (4, 16) and cams.dtype == torch.float32
    assert (cams - expected).abs().max().item() <= 1e-6


def test_mvdream_default_start_is_azimuth_zero():
    cams = get_camera(4)  # MVDream defaults: elevation 15, azimuth_start 0, span 360
    assert (cams[0] - torch.tensor(AZ360)).abs().max().item() <= 1e-6
    assert (cams[1] - torch.tensor(AZ90)).abs().max().item() <= 1e-6


def test_cfg_batch_repeats_the_same_cameras_for_both_halves():
    from dreamedit3d_core.cameras import camera_embedding_for_batch

    cams = get_camera(4, 15, 90)
    batch = camera_embedding_for_batch(cams, 2)  # [uncond x 4, cond x 4]
    assert torch.equal(batch[:4], batch[4:]) and torch.equal(batch[:4], cams)


# ---------------------------------------------------------------------------------------------------------------------
# world -> camera -> pixels and back: MVCameras' methods against the reference vectors and plain numpy pinhole math


def _reference_c2w_opengl(vector, radius):
    """OpenGL c2w [4, 4] from one MVDream reference vector (blender frame, unit distance), moved out to ``radius``."""
    import numpy as np

    c2w_blender = np.asarray(vector, np.float64).reshape(4, 4)
    # the blender swap takes OpenGL (x, y, z) to (x, -z, y); its inverse takes blender (x, y, z) back to (x, z, -y)
    unswap = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], np.float64)
    c2w = unswap @ c2w_blender
    c2w[:3, 3] *= radius
    return c2w


def test_world_to_camera_and_project_match_the_reference_vectors_and_the_pinhole_formula():
    import numpy as np

    from dreamedit3d_core.cameras import MVCameras

    cams = MVCameras.mvdream_default()
    h, w = 48, 64
    f = 0.5 * h / np.tan(np.radians(cams.fov_deg) / 2)
    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.5, 0.5, (200, 3))
    cam = cams.world_to_camera(torch.tensor(pts, dtype=torch.float64)).numpy()
    pix, depth = cams.project(torch.tensor(pts, dtype=torch.float64), h, w)
    assert cam.shape == (4, 200, 3) and pix.shape == (4, 200, 2) and depth.shape == (4, 200)
    for v, vector in enumerate([AZ90, AZ180, AZ270, AZ360]):
        c2w = _reference_c2w_opengl(vector, cams.radius)
        expect = (pts - c2w[:3, 3]) @ c2w[:3, :3]  # R^T (p - t), row vectors; the reference vectors have 6 digits
        np.testing.assert_allclose(cam[v], expect, atol=5e-6, rtol=0)
        d = -cam[v, :, 2]
        np.testing.assert_allclose(depth[v].numpy(), d, atol=0, rtol=1e-12)
        np.testing.assert_allclose(pix[v, :, 0].numpy(), f * cam[v, :, 0] / d + w / 2, atol=1e-9, rtol=0)
        np.testing.assert_allclose(pix[v, :, 1].numpy(), h / 2 - f * cam[v, :, 1] / d, atol=1e-9, rtol=0)
    # the origin is seen at the image centre, at the camera distance; the front camera (view 0) sits on +x
    pix0, depth0 = cams.project(torch.zeros(1, 3, dtype=torch.float64), h, w)
    torch.testing.assert_close(pix0[:, 0], torch.tensor([[w / 2, h / 2]] * 4, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(depth0[:, 0], torch.full((4,), cams.radius, dtype=torch.float64), atol=1e-12, rtol=0)
    assert cams.positions(torch.float64)[0, 0] > 0.9 * cams.radius
    # float32 in, float32 out; the camera centre maps to the camera-space origin
    assert cams.world_to_camera(torch.zeros(2, 3)).dtype == torch.float32
    centre = cams.world_to_camera(cams.positions(torch.float64))
    torch.testing.assert_close(centre[torch.arange(4), torch.arange(4)], torch.zeros(4, 3, dtype=torch.float64),
                               atol=1e-12, rtol=0)


def test_unproject_inverts_project_in_every_view_and_in_one_view():
    from dreamedit3d_core.cameras import MVCameras

    cams = MVCameras(elevation_deg=-20.0, azimuth_deg=torch.tensor([15.0, 130.0, 250.0]), fov_deg=30.0)
    gen = torch.Generator().manual_seed(0)
    pts = torch.rand(500, 3, generator=gen, dtype=torch.float64) - 0.5
    pix, depth = cams.project(pts, 40, 56)
    back = cams.unproject(pix, depth, 40, 56)
    assert back.shape == (3, 500, 3)
    torch.testing.assert_close(back, pts.expand(3, -1, -1), atol=1e-12, rtol=0)
    for v in range(3):
        torch.testing.assert_close(cams.unproject(pix[v], depth[v], 40, 56, view=v), pts, atol=1e-12, rtol=0)
    # the pixel grid goes out along the rays and comes back to the same pixels
    cols, rows = torch.meshgrid(torch.arange(56.0) + 0.5, torch.arange(40.0) + 0.5, indexing="xy")
    grid = torch.stack([cols, rows], -1).reshape(-1, 2).to(torch.float64)
    world = cams.unproject(grid, torch.full((grid.shape[0],), 2.5, dtype=torch.float64), 40, 56, view=1)
    again, d = cams.project(world, 40, 56)
    torch.testing.assert_close(again[1], grid, atol=1e-9, rtol=0)
    torch.testing.assert_close(d[1], torch.full_like(d[1], 2.5), atol=1e-12, rtol=0)


def test_camera_methods_refuse_wrong_shapes_with_one_line():
    from dreamedit3d_core.cameras import MVCameras
    from dreamedit3d_core.errors import ShapeError

    cams = MVCameras.mvdream_default()
    with pytest.raises(ShapeError, match=r"points must be \[N, 3\], got \(4, 2\)"):
        cams.project(torch.zeros(4, 2), 8, 8)
    with pytest.raises(ShapeError, match="points must be a float tensor"):
        cams.world_to_camera([[0.0, 0.0, 0.0]])
    with pytest.raises(ShapeError, match=r"unproject needs pixels \[4, P, 2\] with depth \[4, P\]"):
        cams.unproject(torch.zeros(4, 3, 2), torch.zeros(4, 2), 8, 8)
    with pytest.raises(ShapeError, match=r"pixels are given for 2 views, these cameras have 4"):
        cams.unproject(torch.zeros(2, 3, 2), torch.zeros(2, 3), 8, 8)
    with pytest.raises(ShapeError, match=r"view 5 does not exist; these cameras have views 0\.\.3"):
        cams.unproject(torch.zeros(3, 2), torch.zeros(3), 8, 8, view=5)


def test_select_keeps_the_chosen_views_in_order():
    from dreamedit3d_core.cameras import MVCameras
    from dreamedit3d_core.errors import ShapeError

    cams = MVCameras(elevation_deg=10.0, azimuth_deg=torch.tensor([0.0, 45.0, 200.0]), fov_deg=35.0, radius=2.0)
    two = cams.select([2, 0])
    assert two.azimuth_deg.tolist() == [200.0, 0.0] and (two.elevation_deg, two.fov_deg, two.radius) == (10.0, 35.0, 2.0)
    torch.testing.assert_close(two.c2w(torch.float64), cams.c2w(torch.float64)[[2, 0]], atol=0, rtol=0)
    with pytest.raises(ShapeError, match=r"views \[3\] must be a non-empty list of indices in 0\.\.2"):
        cams.select([3])
