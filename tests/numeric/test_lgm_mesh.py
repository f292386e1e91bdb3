"""Gaussians -> mesh without extensions: analytic shells, a brute-force density reference, progress and interruption."""

from __future__ import annotations

import math

import pytest
import torch

from _lgm_helpers import sphere_shell
from dreamedit3d_core.errors import Interrupted, LiftError
from dreamedit3d_core.lifting.hull import VoxelGrid
from dreamedit3d_core.lifting.lgm import Gaussians, density_grid, gaussian_colors_at, gaussians_to_mesh
from dreamedit3d_core.progress import CallbackProgress

pytestmark = pytest.mark.numeric


def test_shell_of_gaussians_on_a_sphere_gives_that_sphere_within_one_percent():
    radius, centre = 0.35, torch.tensor([0.05, -0.03, 0.02], dtype=torch.float64)
    g = sphere_shell(radius, tuple(centre.tolist()))
    verts, faces, stats = gaussians_to_mesh(g, resolution=96)
    dist = torch.from_numpy(verts).sub(centre).norm(dim=-1)
    assert faces.shape[0] > 10000 and stats["windows_truncated"] == 0
    assert (dist / radius - 1).abs().max() < 0.01
    # watertight, one closed surface: V - E + F = 2 and every edge shared by two faces
    import trimesh

    mesh = trimesh.Trimesh(verts, faces, process=True)
    assert mesh.is_watertight and mesh.euler_number == 2
    assert abs(mesh.volume / (4 / 3 * math.pi * radius ** 3) - 1) < 0.03  # filled, not a hollow double shell


def test_colours_come_from_the_gaussians_around_a_point():
    radius = 0.3
    g = sphere_shell(radius, centre=(0.0, 0.0, 0.0))
    dirs = torch.nn.functional.normalize(torch.randn(50, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    cols = gaussian_colors_at(dirs * radius, g)
    assert (cols - (0.5 + 0.5 * dirs)).abs().max() < 0.05


def test_density_grid_matches_a_brute_force_sum():
    gen = torch.Generator().manual_seed(4)
    n = 40
    q = torch.nn.functional.normalize(torch.randn(n, 4, generator=gen, dtype=torch.float64), dim=-1)
    from dreamedit3d_core.lifting.lgm import quaternion_matrix

    g = Gaussians(means=(torch.rand(n, 3, generator=gen) * 0.5 - 0.25), opacity=torch.rand(n, generator=gen),
                  scales=torch.rand(n, 3, generator=gen) * 0.04 + 0.005, axes=quaternion_matrix(q).float(),
                  colors=torch.rand(n, 3, generator=gen))
    grid = VoxelGrid((-0.3, -0.31, -0.29), 0.02, (31, 29, 33))
    got, thickness, stats = density_grid(g, grid, antialias_voxels=0.5)
    assert stats["gaussians_used"] == n
    # reference: every Gaussian at every sample, float64, the same widening and 3-sigma cut-off
    idx = torch.stack(torch.meshgrid(*(torch.arange(s) for s in grid.shape), indexing="ij"), -1).reshape(-1, 3)
    pts = torch.tensor(grid.lo, dtype=torch.float64) + idx.double() * grid.spacing
    cov = g.covariance() + (0.5 * grid.spacing) ** 2 * torch.eye(3, dtype=torch.float64)
    d = pts[:, None, :] - g.means.double()[None]
    m = torch.einsum("pni,nij,pnj->pn", d, torch.linalg.inv(cov), d)
    w = g.opacity.double()[None] * torch.exp(-0.5 * m) * (m <= 9.0)
    want = w.sum(1).reshape(grid.shape)
    assert want.max() > 1.0
    assert (got.double() - want).abs().max() <= 1e-4 * want.max()
    thin = torch.linalg.eigvalsh(cov)[:, 0].sqrt()
    want_thick = (w * thin[None]).sum(1).reshape(grid.shape) / want.clamp_min(1e-12)
    seen = want > 1e-3
    assert torch.allclose(thickness.double()[seen], want_thick[seen], rtol=1e-3)


def test_density_evaluation_reports_progress_and_stops_on_interrupt():
    g = sphere_shell(0.3, sigma_t=0.03)
    calls = []
    grid = VoxelGrid((-0.4, -0.4, -0.4), 0.02, (41, 41, 41))
    density_grid(g, grid, evals_per_chunk=1 << 16,
                 progress=CallbackProgress(on_update=lambda s, t, p, info: calls.append((s, t, info["stage"]))))
    assert len(calls) > 3 and calls[-1] == (g.num, g.num, "lgm density")
    assert all(a[0] < b[0] for a, b in zip(calls, calls[1:]))
    polls = []
    stop = CallbackProgress(should_stop=lambda: polls.append(1) or len(polls) > 2)
    with pytest.raises(Interrupted):
        gaussians_to_mesh(g, resolution=40, progress=stop)
    assert len(polls) == 3


def test_no_visible_gaussian_is_a_clear_error():
    g = sphere_shell(0.3)
    faint = Gaussians(g.means, torch.full_like(g.opacity, 0.01), g.scales, g.axes, g.colors)
    with pytest.raises(LiftError, match="no Gaussian with opacity >= 0.05 \\(max 0.01\\)"):
        gaussians_to_mesh(faint, resolution=32)


def test_gaussians_outside_the_visual_hull_are_a_clear_error():
    from dreamedit3d_core.cameras import MVCameras

    g = sphere_shell(0.1, centre=(0.0, 0.0, 0.0))
    far = Gaussians(g.means + torch.tensor([0.0, 0.0, 1.5]), g.opacity, g.scales, g.axes, g.colors)
    alpha = torch.zeros(4, 1, 32, 32)
    alpha[:, :, 12:20, 12:20] = 1.0  # a small object at the centre of every view
    with pytest.raises(LiftError, match="outside the views' visual hull"):
        gaussians_to_mesh(far, resolution=32, alpha=alpha, cameras=MVCameras.mvdream_default())
    with pytest.raises(LiftError, match="both alpha and cameras"):
        gaussians_to_mesh(g, resolution=32, alpha=alpha)
