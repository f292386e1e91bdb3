"""From an occupancy grid to a clean, UV-mapped triangle mesh.

Marching cubes (scikit-image), Taubin smoothing (trimesh), quadric decimation (fast-simplification) and a UV atlas
(xatlas), as measured in ``../shared/design/render-lift.md`` §4 steps 2-4.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import LiftError
from .child_process import run_native
from .hull import ISO_LEVEL, VoxelGrid

#: Samples per marching-cubes call (about 0.2-0.5 s of native code); bigger grids are meshed in slabs.
MC_SLAB_VOXELS = 1 << 22
#: Taubin smoothing iterations after marching cubes (removes voxel terracing, keeps volume).
TAUBIN_ITERATIONS = 10


def marching_cubes(occ: torch.Tensor, grid: VoxelGrid,
                   check_interrupt: Optional[Callable[[], None]] = None) -> tuple[np.ndarray, np.ndarray]:
    """Surface of ``occ`` at the iso-level, closed by padding the grid with empty space.

    Grids above ``MC_SLAB_VOXELS`` are meshed in slabs along x (``check_interrupt`` polled between them: grid 512 is
    seconds of native code per call) whose shared planes are welded: both slabs interpolate the same edges from the
    same two samples, so the shared vertices are bit-identical (the result is the one-call surface up to float32 rounding
    of the interpolated positions, measured below 4e-6 voxels).

    Returns:
        (vertices float64 [N, 3] world, faces int64 [M, 3] with outward winding).

    Raises:
        LiftError: the grid holds no surface.
    """
    from skimage.measure import marching_cubes as skimage_mc

    vol = F.pad(occ.to(torch.float32), (1, 1, 1, 1, 1, 1)).cpu().numpy()
    if not (vol.max() > ISO_LEVEL):
        raise LiftError("the occupancy grid is empty after cleanup: nothing to mesh; check the silhouettes")
    layers = max(2, MC_SLAB_VOXELS // (vol.shape[1] * vol.shape[2]))
    pieces, offset = [], 0
    for x0 in range(0, vol.shape[0] - 1, layers - 1):
        if check_interrupt is not None:
            check_interrupt()
        slab = vol[x0:x0 + layers]
        if not (slab.max() > ISO_LEVEL and slab.min() <= ISO_LEVEL):
            continue
        v, f, _, _ = skimage_mc(slab, level=ISO_LEVEL, allow_degenerate=False)
        v = v.astype(np.float64)
        v[:, 0] += x0
        pieces.append((v, f.astype(np.int64) + offset))
        offset += len(v)
    verts = np.concatenate([p[0] for p in pieces])
    faces = np.concatenate([p[1] for p in pieces])
    if len(pieces) > 1:  # weld the vertices the slabs share on their common planes
        verts, inverse = np.unique(verts, axis=0, return_inverse=True)
        faces = inverse.reshape(-1)[faces]
    verts = verts * grid.spacing + (np.asarray(grid.lo) - grid.spacing)
    if _signed_volume(verts, faces) < 0:
        faces = faces[:, ::-1].copy()
    return verts, faces


def _signed_volume(verts: np.ndarray, faces: np.ndarray) -> float:
    a, b, c = (verts[faces[:, i]] for i in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def smooth_and_decimate(verts: np.ndarray, faces: np.ndarray, face_budget: int,
                        iterations: int = TAUBIN_ITERATIONS,
                        check_interrupt: Optional[Callable[[], None]] = None) -> tuple[np.ndarray, np.ndarray]:
    """Taubin smoothing then quadric decimation to at most ``face_budget`` faces (0 or less: no decimation).

    ``check_interrupt`` is polled between smoothing passes and before the decimation.
    """
    import trimesh
    from trimesh.smoothing import filter_taubin, laplacian_calculation

    check = check_interrupt or (lambda: None)
    mesh = trimesh.Trimesh(verts, faces, process=False)
    if iterations > 0:
        laplacian = laplacian_calculation(mesh)
        # trimesh alternates shrink (even pass) and inflate (odd pass): run it a pair at a time to poll in between
        for done in range(0, iterations, 2):
            check()
            filter_taubin(mesh, lamb=0.5, nu=0.53, iterations=min(2, iterations - done), laplacian_operator=laplacian)
    check()
    verts, faces = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)
    if 0 < face_budget < faces.shape[0]:
        out = run_native("decimate", {"verts": verts, "faces": faces, "target": np.int64(face_budget)}, len(faces),
                         check_interrupt)
        verts, faces = out["verts"], out["faces"]
    verts, faces = drop_unused_vertices(verts, faces)
    if faces.shape[0] == 0:
        raise LiftError("the mesh vanished during decimation; raise face_budget")
    return verts, faces


def drop_unused_vertices(verts: np.ndarray, faces: np.ndarray, return_face_index: bool = False):
    """Remove degenerate faces (repeated index) and vertices no face uses.

    Returns (vertices, faces), plus the kept faces' indices into ``faces`` (int64 [M']) with ``return_face_index``.
    """
    ok = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    faces = faces[ok]
    used, inverse = np.unique(faces.ravel(), return_inverse=True)
    if return_face_index:
        return verts[used], inverse.reshape(-1, 3).astype(np.int64), np.flatnonzero(ok)
    return verts[used], inverse.reshape(-1, 3).astype(np.int64)


#: Meshes above this many faces are cut into spatial blocks that xatlas charts separately before packing them together.
ATLAS_SPLIT_FACES = 10_000
#: Blocks per axis for that cut (at most 27 blocks).
ATLAS_SPLIT_BLOCKS = 3


def _spatial_blocks(verts: np.ndarray, faces: np.ndarray, blocks: int) -> list[np.ndarray]:
    """Face indices grouped by a ``blocks``^3 grid over the face centroids' bounding box (empty groups dropped)."""
    c = verts[faces].mean(1)
    lo, hi = c.min(0), c.max(0)
    cell = np.clip(((c - lo) / np.maximum(hi - lo, 1e-12) * blocks).astype(np.int64), 0, blocks - 1)
    key = (cell[:, 0] * blocks + cell[:, 1]) * blocks + cell[:, 2]
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.diff(key[order])) + 1
    return [g for g in np.split(order, bounds) if len(g)]


def uv_atlas(verts: np.ndarray, faces: np.ndarray, texture_size: int,
             check_interrupt: Optional[Callable[[], None]] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas charts packed for a ``texture_size`` square texture with a few texels of padding.

    Big meshes are charted in a child process (``child_process.run_native``) that ``check_interrupt`` can stop.

    xatlas's chart growing is superlinear in the face count, so big meshes are cut into up to 27 spatial blocks that are
    charted separately and packed into one atlas (measured on a 50k-face hull: 2-2.5x faster, same chart count and
    packing efficiency); the cuts only add chart seams.

    Returns:
        (vertex map int64 [N'] into ``verts``, faces int64 [M, 3] into the new vertices, uv float32 [N', 2] in 0..1; any
        layout in 0..1 is valid, bake and export read it with v = 0 at the texture's bottom). Face order is kept.
    """
    groups = (_spatial_blocks(verts, faces, ATLAS_SPLIT_BLOCKS) if faces.shape[0] > ATLAS_SPLIT_FACES
              else [np.arange(faces.shape[0])])
    arrays = {"count": np.int64(len(groups)), "texture_size": np.int64(texture_size)}
    used_per_group = []
    for i, g in enumerate(groups):
        used, local = np.unique(faces[g].ravel(), return_inverse=True)
        used_per_group.append(used)
        arrays[f"verts{i}"], arrays[f"faces{i}"] = verts[used], local.reshape(-1, 3)
    charts = run_native("atlas", arrays, len(faces), check_interrupt)
    vmaps, out_faces, uvs = [None] * len(groups), np.empty_like(faces), []
    offset = 0
    for i, (g, used) in enumerate(zip(groups, used_per_group)):
        vmap = charts[f"vmap{i}"]
        vmaps[i] = used[vmap]
        out_faces[g] = charts[f"faces{i}"] + offset
        uvs.append(charts[f"uv{i}"])
        offset += len(vmap)
    return np.concatenate(vmaps), out_faces, np.concatenate(uvs)
