"""LGM through ``lift_to_mesh(reconstructor=...)``: a network whose Gaussians are a known sphere in LGM's frame comes
back as that sphere in ours (cut by the hull), and a tiny weight file runs the whole path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from _lift_helpers import asset_from_trimesh
from dreamedit3d_core.cameras import MVCameras
from dreamedit3d_core.errors import Interrupted, ShapeError
from dreamedit3d_core.lifting import lift_to_mesh, unregister_reconstructor
from dreamedit3d_core.lifting.lgm import (LGMConfig, LGMNetwork, LGMReconstructor, RawGaussians, gaussians_from_lgm,
                                          lgm_frame, lgm_input, register_lgm, save_lgm)
from dreamedit3d_core.testing.lgm import tiny_lgm
from dreamedit3d_core.progress import CallbackProgress
from dreamedit3d_core.render import render_views

pytestmark = pytest.mark.numeric

SMALL = LGMConfig(down_channels=(32, 64, 64), down_attention=(False, True, True), mid_attention=True,
                  up_channels=(64, 64), up_attention=(True, False), input_size=32)
RADIUS = 0.3


@pytest.fixture(scope="module")
def sphere_views():
    asset = asset_from_trimesh(trimesh.creation.icosphere(4, radius=RADIUS))
    cams = MVCameras.mvdream_default()
    r = render_views(asset, cams, resolution=96)
    return r.rgb, r.alpha, cams


class ShellInLGMFrame(LGMNetwork):
    """Returns flat splats on a sphere of radius RADIUS (our frame) expressed in LGM's frame, plus a stray blob that
    every view's silhouette excludes; records its input."""

    def __init__(self, cams: MVCameras):
        super().__init__(SMALL)
        self.cams = cams
        self.seen = None

    def forward(self, views):
        from scipy.spatial.transform import Rotation

        self.seen = views
        fr = lgm_frame(self.cams, "first_view")
        n = 2500
        i = torch.arange(n, dtype=torch.float64) + 0.5
        phi, theta = torch.acos(1 - 2 * i / n), math.pi * (1 + 5 ** 0.5) * i
        nrm = torch.stack([torch.cos(theta) * torch.sin(phi), torch.sin(theta) * torch.sin(phi), torch.cos(phi)], -1)
        t1 = torch.nn.functional.normalize(torch.cross(nrm, torch.tensor([[0.3, 0.5, 0.8]], dtype=torch.float64)
                                                       .expand(n, 3), dim=-1), dim=-1)
        axes_ours = torch.stack([t1, torch.cross(nrm, t1, dim=-1), nrm], -1)
        axes_lgm = fr.rotation @ axes_ours
        xyzw = torch.from_numpy(Rotation.from_matrix(axes_lgm.numpy()).as_quat())
        quat = torch.cat([xyzw[:, 3:], xyzw[:, :3]], -1)
        pos = fr.to_lgm(torch.cat([RADIUS * nrm, torch.tensor([[0.0, 0.62, 0.0]], dtype=torch.float64)]))
        quat = torch.cat([quat, torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64)])
        scale = torch.tensor([0.024, 0.024, 0.002], dtype=torch.float64).expand(n, 3) * fr.scale
        scale = torch.cat([scale, torch.full((1, 3), 0.09 * fr.scale, dtype=torch.float64)])
        return RawGaussians(position=pos[None].float(), opacity=torch.full((1, n + 1, 1), 0.9),
                            scale=scale[None].float(), rotation=quat[None].float(),
                            color=torch.full((1, n + 1, 3), 0.5))


def test_gaussians_of_a_known_sphere_come_back_as_that_sphere_through_lift_to_mesh(sphere_views):
    rgb, alpha, cams = sphere_views
    net = ShellInLGMFrame(cams)
    rec = register_lgm(net, name="lgm_sphere_test", overwrite=True)
    try:
        mesh = lift_to_mesh(rgb, cams, alpha=alpha, reconstructor="lgm_sphere_test", grid=80, texture_size=0,
                            face_budget=0)
    finally:
        unregister_reconstructor("lgm_sphere_test")
    assert mesh.stats["reconstructor"] == "lgm_sphere_test"
    dist = mesh.vertices.double().norm(dim=-1)
    assert (dist / RADIUS - 1).abs().max() < 0.012  # the stray blob above the sphere is cut by the hull
    assert net.seen.shape == (1, 4, 9, 32, 32)
    assert rec.last_gaussians.num == 2501 and rec.last_stats["gaussians_used"] == 2501
    # the mesh without the hull keeps the blob: the hull is what removed it
    rec_no_hull = LGMReconstructor(net, hull=False)
    verts, _ = rec_no_hull(rgb, alpha, cams, grid=80)
    assert np.linalg.norm(verts, axis=1).max() > RADIUS * 1.3


def test_tiny_weight_file_runs_the_whole_path(tmp_path, sphere_views):
    rgb, alpha, cams = sphere_views
    net = tiny_lgm(2, SMALL)
    path = save_lgm(net, tmp_path / "model_fp16_fixrot.safetensors", dtype=torch.float16)
    rec = register_lgm(path, name="lgm_tiny_test", overwrite=True, hull=False)
    try:
        mesh = lift_to_mesh(rgb, cams, alpha=alpha, reconstructor="lgm_tiny_test", grid=32, texture_size=0)
    finally:
        unregister_reconstructor("lgm_tiny_test")
    assert mesh.faces.shape[0] > 0 and mesh.vertex_colors is not None
    # the reconstructor's Gaussians are the network's on the views composited on white, mapped into our frame
    on_white = rgb * alpha + (1 - alpha)
    with torch.no_grad():
        raw = rec.network()(lgm_input(on_white, cams, SMALL.input_size))
    want = gaussians_from_lgm(raw, lgm_frame(cams))
    assert torch.allclose(rec.last_gaussians.means, want.means, atol=1e-5)
    assert torch.allclose(rec.last_gaussians.colors, want.colors, atol=1e-5)
    loaded = rec.network()
    assert all(torch.equal(a, b.half().float()) for a, b in zip(loaded.state_dict().values(),
                                                                 net.state_dict().values()))


def test_reconstructor_checks_views_and_polls_interrupts(sphere_views):
    rgb, alpha, cams = sphere_views
    rec = LGMReconstructor(ShellInLGMFrame(cams))
    with pytest.raises(ShapeError, match="exactly 4 views"):
        rec(rgb[:3], alpha[:3], MVCameras(azimuth_deg=torch.tensor([90.0, 180.0, 270.0])), grid=32)
    polls = []
    stop = CallbackProgress(should_stop=lambda: polls.append(1) or len(polls) > 1)
    with pytest.raises(Interrupted):
        rec(rgb, alpha, cams, grid=48, progress=stop)


def test_vertices_no_view_sees_take_the_gaussians_colour(sphere_views):
    from dreamedit3d_core.lifting import bake
    from dreamedit3d_core.lifting.lgm import Gaussians, bake_vertex_colors_with_gaussians

    rgb, alpha, cams = sphere_views
    sphere = trimesh.creation.icosphere(3, radius=RADIUS)
    v = torch.tensor(np.asarray(sphere.vertices), dtype=torch.float32)
    f = torch.tensor(np.asarray(sphere.faces), dtype=torch.int64)
    normals = bake.vertex_normals(v, f)
    views_rgb = torch.zeros_like(rgb)
    views_rgb[:, 1] = 1.0  # the views say green
    frags = bake.render_fragments(v, f, cams, rgb.shape[-2], rgb.shape[-1])
    view_sets = [bake.ViewSet(views_rgb, bake.feathered_mask(alpha, 1, 1), cams, frags.depth)]
    n = v.shape[0]
    red = Gaussians(means=v * 1.0, opacity=torch.full((n,), 0.9), scales=torch.full((n, 3), 0.02),
                    axes=torch.eye(3).expand(n, 3, 3).contiguous(), colors=torch.tensor([1.0, 0.0, 0.0]).expand(n, 3))
    colors, stats = bake_vertex_colors_with_gaussians(v, normals, view_sets, red)
    bottom = v[:, 1] < -0.29  # the four views look down 15 degrees: the bottom cap is unseen
    band = v[:, 1].abs() < 0.1  # the equator faces the cameras
    assert 0.0 < stats["unseen_vertex_fraction"] < 0.5
    assert torch.allclose(colors[bottom], torch.tensor([1.0, 0.0, 0.0]).expand(int(bottom.sum()), 3), atol=1e-4)
    assert torch.allclose(colors[band], torch.tensor([0.0, 1.0, 0.0]).expand(int(band.sum()), 3), atol=1e-4)


def test_registering_the_same_file_again_reuses_the_loaded_network(tmp_path):
    import os

    from dreamedit3d_core.lifting.lgm import cached_lgm_reconstructor

    path = save_lgm(tiny_lgm(4, SMALL), tmp_path / "model_fp16_fixrot.safetensors")
    first = register_lgm(path, name="lgm_cache_test", overwrite=True)
    try:
        net = first.network()
        again = register_lgm(str(path), name="lgm_cache_test", overwrite=True)
        assert again is first and again.network() is net
        assert cached_lgm_reconstructor(path, hull=False) is not first  # other options: another reconstructor
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))  # the file changed on disk
        assert cached_lgm_reconstructor(path) is not first
    finally:
        unregister_reconstructor("lgm_cache_test")


def test_held_tensors_are_the_network_weights_and_the_last_gaussians(sphere_views):
    # what a GPU run leaves behind is judged from this list (tests/fakecuda: after offload() none is on the device;
    # tests/numeric/test_lgm_cuda.py on a real GPU)
    rgb, alpha, cams = sphere_views
    net = ShellInLGMFrame(cams)
    rec = LGMReconstructor(net)
    assert [k for k, _ in rec.held_tensors()] == list(net.state_dict())
    rec(rgb, alpha, cams, grid=32)
    held = dict(rec.held_tensors())
    g = rec.last_gaussians
    for name in ("means", "opacity", "scales", "axes", "colors"):
        assert held[f"last_gaussians.{name}"] is getattr(g, name)
    assert all(held[k].data_ptr() == v.data_ptr() for k, v in net.state_dict().items())  # the weights themselves
    rec.offload()
    assert torch.equal(rec.last_gaussians.means, g.means)  # moved (here: CPU to CPU), not dropped


def test_offload_keeps_the_network_dtype():
    # offload() used to upcast to float32 on the CPU: twice the host memory of the released float16 weights (1.66 GB)
    net = tiny_lgm(0).half()
    rec = LGMReconstructor(net)
    rec.offload()
    offloaded = rec.held_tensors()
    assert offloaded and all(t.dtype == torch.float16 and t.device.type == "cpu" for _, t in offloaded)
    assert all(torch.equal(t, w) for (_, t), w in zip(offloaded, net.state_dict().values()))
    assert next(rec.network("cpu").parameters()).dtype == torch.float32  # a CPU run still computes in float32
