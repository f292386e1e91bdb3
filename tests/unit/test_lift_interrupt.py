"""Every long step of lifting stops on interrupt (issue 17): polled loops (grids, bands of the UV raster, colour chunks,
marching-cubes slabs, smoothing passes) and the native steps that cannot poll (xatlas, decimation), which run in a child
process that is killed."""

from __future__ import annotations

import subprocess
import traceback

import numpy as np
import pytest
import torch

from dreamedit3d_core.cameras import MVCameras
from dreamedit3d_core.errors import Interrupted
from dreamedit3d_core.lifting import child_process, lift_to_mesh, surface
from dreamedit3d_core.lifting.hull import VoxelGrid

CAMS = MVCameras.mvdream_default()


class StopAfter:
    """A Progress that raises Interrupted at the ``n``-th interruption check after ``stage`` was reported."""

    def __init__(self, stage: str, n: int):
        self.stage, self.n, self.armed, self.checks, self.stages = stage, n, False, 0, []

    def update(self, step, total, preview=None, **info):
        self.stages.append(info.get("stage"))
        self.armed = self.armed or info.get("stage") == self.stage

    def check_interrupt(self):
        if self.armed:
            self.checks += 1
            if self.checks >= self.n:
                raise Interrupted("stopped on request")


def _sphere(subdivisions: int):
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.4)
    return np.asarray(m.vertices, np.float64), np.asarray(m.faces, np.int64)


def test_a_large_texture_bake_stops_inside_the_uv_raster():
    h = w = 64
    rows = torch.arange(h).float()[:, None] + 0.5
    disc = (((rows - h / 2) ** 2 + (rows.T - w / 2) ** 2) <= 14.0 ** 2).float()
    alpha = disc.expand(4, 1, h, w).clone()
    rgb = (0.4 * alpha + (1 - alpha)).expand(4, 3, h, w).contiguous()
    prog = StopAfter("cleanup", 6)
    with pytest.raises(Interrupted) as err:
        lift_to_mesh(rgb, CAMS, alpha=alpha, grid=24, texture_size=4096, face_budget=0, progress=prog)
    # after cleanup: checks before the vertex colours, per colour chunk, around the UV atlas; then 4096^2 texels are
    # rasterized in bands with a check before each, so the sixth check is inside the bake's UV raster, after one band
    # and long before the texture (tens of seconds on a CPU) is done
    frames = [f.name for f in traceback.extract_tb(err.value.__traceback__)]
    assert "rasterize_texture" in frames, frames
    assert "texture" not in prog.stages and prog.stages[-1] == "cleanup"


def test_native_steps_in_a_child_give_the_in_process_result():
    verts, faces = _sphere(5)  # 20480 faces: above IN_PROCESS_FACES, so the child runs
    assert len(faces) >= child_process.IN_PROCESS_FACES
    arrays = {"verts": verts, "faces": faces, "target": np.int64(3000)}
    polled = []
    child = child_process.run_native("decimate", arrays, len(faces), lambda: polled.append(1))
    here = child_process.OPERATIONS["decimate"](arrays)
    assert np.array_equal(child["faces"], here["faces"]) and np.allclose(child["verts"], here["verts"], atol=0)
    v_child = surface.uv_atlas(verts, faces, 512, check_interrupt=lambda: None)
    v_here = surface.uv_atlas(verts, faces, 512)
    assert all(np.array_equal(a, b) for a, b in zip(v_child, v_here))


def test_an_interrupt_kills_the_native_child_at_once(monkeypatch):
    verts, faces = _sphere(6)  # 81920 faces: xatlas takes seconds
    started = []
    real_popen = subprocess.Popen

    def recording_popen(*args, **kwargs):
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(child_process.subprocess, "Popen", recording_popen)
    polls = []

    def stop_on_second_poll():
        polls.append(1)
        if len(polls) >= 2:
            raise Interrupted("stopped on request")

    with pytest.raises(Interrupted):
        surface.uv_atlas(verts, faces, 2048, check_interrupt=stop_on_second_poll)
    (proc,) = started
    assert proc.returncode is not None and proc.returncode < 0, "the child was not killed"


def test_a_failing_child_reports_its_error_in_one_line():
    from dreamedit3d_core.errors import LiftError

    verts, faces = _sphere(5)
    bad = {"verts": verts, "faces": faces}  # no "target"
    with pytest.raises(LiftError, match="the decimate step failed in its worker process: KeyError"):
        child_process.run_native("decimate", bad, len(faces), lambda: None)


def test_marching_cubes_in_slabs_is_the_one_call_surface_and_polls_between_slabs():
    from scipy.spatial import cKDTree

    g = torch.Generator().manual_seed(0)
    occ = torch.nn.functional.avg_pool3d(torch.rand(1, 1, 41, 30, 36, generator=g), 5, 1, 2)[0, 0]
    occ = (occ - occ.mean()) * 8 + 0.5
    grid = VoxelGrid((-0.3, -0.2, -0.25), 0.01, tuple(occ.shape))
    v1, f1 = surface.marching_cubes(occ, grid)
    polled = []
    old = surface.MC_SLAB_VOXELS
    surface.MC_SLAB_VOXELS = 32 * 38 * 6  # 6 layers per slab
    try:
        v2, f2 = surface.marching_cubes(occ, grid, lambda: polled.append(1))
    finally:
        surface.MC_SLAB_VOXELS = old
    assert len(polled) >= 8
    assert v1.shape == v2.shape and f1.shape == f2.shape
    # same surface: every vertex matches (to float32 rounding of the interpolation) and the welded mesh is closed
    assert cKDTree(v1).query(v2)[0].max() < 1e-6 and cKDTree(v2).query(v1)[0].max() < 1e-6
    import trimesh

    assert trimesh.Trimesh(v2, f2, process=False).is_watertight
    assert np.isclose(trimesh.Trimesh(v2, f2, process=False).volume, trimesh.Trimesh(v1, f1, process=False).volume)
