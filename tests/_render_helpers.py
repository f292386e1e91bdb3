"""Independent references for the render tests: Embree ray casting (trimesh + embreex) and small synthetic assets.

Nothing here uses dreamedit3d_core's rasterizer; the ray caster shares only the camera convention (``MVCameras``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch


def embree_intersector(vertices: np.ndarray, faces: np.ndarray):
    """A trimesh Embree ray intersector (skips the test when embreex is missing)."""
    import trimesh

    try:
        from trimesh.ray.ray_pyembree import RayMeshIntersector
    except Exception as exc:  # embreex not importable
        pytest.skip(f"embreex is not installed: {exc}")
    mesh = trimesh.Trimesh(vertices=np.asarray(vertices, np.float64), faces=np.asarray(faces), process=False)
    return mesh, RayMeshIntersector(mesh)


def embree_cast(vertices, faces, cameras, height: int, width: int):
    """Cast one ray through every pixel centre of every view.

    Returns:
        dict of numpy arrays: face_id int [V, H, W] (-1 miss), depth float [V, H, W] view-axis distance (0 miss),
        location float [V, H, W, 3] world hit point.
    """
    mesh, caster = embree_intersector(vertices, faces)
    c2w = cameras.c2w(torch.float64).numpy()
    f = cameras.focal_px(height)
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    d_cam = np.stack([(cols - width / 2) / f, -(rows - height / 2) / f, -np.ones_like(cols)], -1).reshape(-1, 3)
    out = {k: [] for k in ("face_id", "depth", "location")}
    for v in range(c2w.shape[0]):
        rot, origin = c2w[v, :3, :3], c2w[v, :3, 3]
        dirs = d_cam @ rot.T
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        origins = np.broadcast_to(origin, dirs.shape).copy()
        tri, ray, loc = caster.intersects_id(origins, dirs, multiple_hits=False, return_locations=True)
        fid = np.full(height * width, -1, np.int64)
        depth = np.zeros(height * width)
        location = np.zeros((height * width, 3))
        fid[ray] = tri
        location[ray] = loc
        depth[ray] = -((loc - origin) @ rot[:, 2])  # camera looks down -z_cam
        out["face_id"].append(fid.reshape(height, width))
        out["depth"].append(depth.reshape(height, width))
        out["location"].append(location.reshape(height, width, 3))
    return {k: np.stack(v) for k, v in out.items()}


def to_camera(vertices: torch.Tensor, cameras) -> torch.Tensor:
    """World [N, 3] -> OpenGL camera space [V, N, 3] of every view."""
    w2c = cameras.w2c(torch.float64).to(vertices.device)
    p = vertices.to(torch.float64)
    return (torch.einsum("vij,nj->vni", w2c[:, :3, :3], p) + w2c[:, None, :3, 3]).to(vertices.dtype)


def lumpy_scene(seed: int = 0):
    """A lumpy closed mesh (a perturbed icosphere) plus a box sitting on top of it: many depth overlaps, 2 parts.

    Returns (vertices float64 [N, 3], faces int64 [M, 3], part per face int64 [M]).
    """
    import trimesh

    rng = np.random.default_rng(seed)
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.35)
    v = sphere.vertices * (1 + 0.15 * rng.standard_normal((len(sphere.vertices), 1)))
    box = trimesh.creation.box((0.3, 0.25, 0.3))  # a "hat" on top: seen from every MVDream view
    bv = box.vertices + np.array([0.05, 0.4, 0.0])
    verts = np.concatenate([v, bv])
    faces = np.concatenate([sphere.faces, box.faces + len(v)])
    parts = np.concatenate([np.zeros(len(sphere.faces), np.int64), np.ones(len(box.faces), np.int64)])
    return verts, faces.astype(np.int64), parts
