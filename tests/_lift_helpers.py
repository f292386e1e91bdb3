"""Test helpers for lifting: synthetic assets, independent metrics (IoU, PSNR, Chamfer) and a lifted-mesh-to-asset bridge.

The metrics use trimesh sampling and scipy only; re-rendering goes through the render stage's ``render_views`` (not the
bake's own texture lookup), so a round trip checks the lift against an independent renderer.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dreamedit3d_core.types import LiftedMesh, MeshAsset


def asset_from_trimesh(mesh, face_colors=None, vertex_colors=None, part_ids=None, part_names=("body",)) -> MeshAsset:
    """A MeshAsset from a trimesh.Trimesh with optional per-face [M, 3] / per-vertex [N, 3] colours in 0..1."""
    v = torch.tensor(np.asarray(mesh.vertices), dtype=torch.float32)
    f = torch.tensor(np.asarray(mesh.faces), dtype=torch.int64)
    m = f.shape[0]
    fc = torch.ones(m, 3) if face_colors is None else torch.as_tensor(np.asarray(face_colors), dtype=torch.float32)
    vc = None if vertex_colors is None else torch.as_tensor(np.asarray(vertex_colors), dtype=torch.float32)
    pid = torch.zeros(m, dtype=torch.int64) if part_ids is None else torch.as_tensor(part_ids, dtype=torch.int64)
    return MeshAsset(vertices=v, faces=f, part_ids=pid, part_names=tuple(part_names), face_base_color=fc, vertex_colors=vc)


def lifted_as_asset(mesh: LiftedMesh) -> MeshAsset:
    """The lifted mesh as a MeshAsset (its texture, or its vertex colours) for ``render_views``."""
    m = mesh.faces.shape[0]
    kw = {}
    if mesh.texture is not None:
        kw = dict(uv=mesh.uv.float().cpu(), textures=(mesh.texture.float().cpu(),),
                  face_textures=torch.zeros(m, dtype=torch.int64))
    elif mesh.vertex_colors is not None:
        kw = dict(vertex_colors=mesh.vertex_colors.float().cpu())
    return MeshAsset(vertices=mesh.vertices.float().cpu(), faces=mesh.faces.long().cpu(),
                     part_ids=torch.zeros(m, dtype=torch.int64), part_names=("lifted",),
                     face_base_color=torch.ones(m, 3), **kw)


def box_with_nose():
    """A box (0.7 x 0.5 x 0.5) with a thin cylinder "nose" (r 0.07, length 0.25) pointing at +x, the front camera.

    Seen from the four MVDream views the nose hides inside the box's silhouette from the side views, so a pure
    visual hull turns it into a fin as wide as the box (render-lift.md §4 failure 2).
    Returns (trimesh.Trimesh, per-face colours [M, 3]).
    """
    import trimesh

    box = trimesh.creation.box(extents=(0.5, 0.5, 0.7))
    nose = trimesh.creation.cylinder(radius=0.07, height=0.25, sections=24)
    nose.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 2, (0, 1, 0)))
    nose.apply_translation((0.25 + 0.125, 0.0, 0.0))
    mesh = trimesh.util.concatenate([box, nose])
    colors = np.concatenate([np.tile([0.2, 0.6, 0.9], (len(box.faces), 1)), np.tile([0.9, 0.4, 0.1], (len(nose.faces), 1))])
    return mesh, colors


def silhouette_iou(a: torch.Tensor, b: torch.Tensor) -> list:
    """Per-view IoU of two [V, 1, H, W] masks (thresholded at 0.5)."""
    a, b = a[:, 0] > 0.5, b[:, 0] > 0.5
    return [float((a[i] & b[i]).sum()) / max(float((a[i] | b[i]).sum()), 1.0) for i in range(a.shape[0])]


def masked_psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> list:
    """Per-view PSNR (dB) of [V, 3, H, W] images in 0..1 over bool [V, H, W] ``mask``."""
    out = []
    for i in range(a.shape[0]):
        m = mask[i]
        mse = float(((a[i] - b[i]) ** 2).permute(1, 2, 0)[m].mean())
        out.append(10.0 * math.log10(1.0 / max(mse, 1e-12)))
    return out


def chamfer(verts_a, faces_a, verts_b, faces_b, samples: int = 20000, seed: int = 0) -> float:
    """Symmetric mean surface distance (mean of both directions) between two meshes, from area-uniform samples."""
    import trimesh
    from scipy.spatial import cKDTree

    def sample(v, f):
        mesh = trimesh.Trimesh(np.asarray(v, np.float64), np.asarray(f), process=False)
        pts, _ = trimesh.sample.sample_surface(mesh, samples, seed=seed)
        return pts

    pa, pb = sample(verts_a, faces_a), sample(verts_b, faces_b)
    return 0.5 * (cKDTree(pb).query(pa)[0].mean() + cKDTree(pa).query(pb)[0].mean())


def inside_mesh(vertices, faces, points: np.ndarray) -> np.ndarray:
    """Inside test by the generalised winding number (Jacobson et al. 2013), exact for closed meshes: bool [P]."""
    v = np.asarray(vertices, np.float64)
    tri = v[np.asarray(faces)]
    out = np.empty(len(points), bool)
    for s in range(0, len(points), 256):
        p = points[s:s + 256, None, None, :]
        a, b, c = (tri[None, :, i, :] - p[:, :, 0] for i in range(3))
        la, lb, lc = (np.linalg.norm(x, axis=-1) for x in (a, b, c))
        det = np.einsum("pfi,pfi->pf", a, np.cross(b, c))
        den = la * lb * lc + np.einsum("pfi,pfi->pf", a, b) * lc + np.einsum("pfi,pfi->pf", b, c) * la \
            + np.einsum("pfi,pfi->pf", c, a) * lb
        w = np.arctan2(det, den).sum(1) / (2.0 * np.pi)
        out[s:s + 256] = w > 0.5
    return out


def _closest_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Closest points on triangles (a, b, c) [..., 3] to points p [..., 3] (Ericson, Real-Time Collision Detection 5.1.5)."""
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = (ab * ap).sum(-1), (ac * ap).sum(-1)
    bp = p - b
    d3, d4 = (ab * bp).sum(-1), (ac * bp).sum(-1)
    cp = p - c
    d5, d6 = (ab * cp).sum(-1), (ac * cp).sum(-1)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = va + vb + vc
        v, w = vb / denom, vc / denom
        out = a + ab * v[..., None] + ac * w[..., None]  # inside the face
        t_ab = d1 / (d1 - d3)
        t_ac = d2 / (d2 - d6)
        t_bc = (d4 - d3) / ((d4 - d3) + (d5 - d6))
    regions = [  # later entries win: vertex regions, then edges, checked in Ericson's order reversed
        ((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), b + (c - b) * t_bc[..., None]),
        ((vb <= 0) & (d2 >= 0) & (d6 <= 0), a + ac * t_ac[..., None]),
        ((vc <= 0) & (d1 >= 0) & (d3 <= 0), a + ab * t_ab[..., None]),
        ((d6 >= 0) & (d5 <= d6), c),
        ((d3 >= 0) & (d4 <= d3), b),
        ((d1 <= 0) & (d2 <= 0), a),
    ]
    for cond, point in regions:
        out = np.where(cond[..., None], point, out)
    return out


def point_to_mesh_distance(points, vertices, faces, candidates: int = 48) -> np.ndarray:
    """Exact distance of each point [P, 3] to the surface of a triangle mesh.

    A close upper bound first (the ``candidates`` triangles whose centroids are nearest, and those around the nearest
    vertex); then every triangle whose bounding box reaches within that bound of the point (an R-tree over the
    triangles' boxes), so a big triangle among many small ones is never missed.
    """
    from scipy.spatial import cKDTree

    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    p = np.asarray(points, np.float64)
    tri = v[f]
    k = min(candidates, len(f))
    _, near = cKDTree(tri.mean(1)).query(p, k=k)
    near = near.reshape(len(p), k)
    # triangles around the nearest vertex (a big triangle's centroid can be far from the point it is closest to)
    order = np.argsort(f.ravel(), kind="stable")
    starts = np.searchsorted(f.ravel()[order], np.arange(len(v) + 1))
    _, nv = cKDTree(v).query(p)
    ring_max = int(np.diff(starts).max())
    ring = np.full((len(p), ring_max), -1, np.int64)
    for i in range(ring_max):
        has = starts[nv] + i < starts[nv + 1]
        ring[has, i] = order[starts[nv[has]] + i] // 3
    cand = np.concatenate([near, np.where(ring >= 0, ring, near[:, :1])], 1)
    bound = np.empty(len(p))
    for s in range(0, len(p), 4096):
        t = tri[cand[s:s + 4096]]  # [B, C, 3, 3]
        q = p[s:s + 4096, None, :]
        closest = _closest_on_triangles(q, t[..., 0, :], t[..., 1, :], t[..., 2, :])
        bound[s:s + 4096] = np.linalg.norm(closest - q, axis=-1).min(1)
    return _within_bound(p, tri, bound)


def _within_bound(p: np.ndarray, tri: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """The exact distance of each point to the triangles, given an upper bound of it: only triangles whose bounding box
    lies within ``bound`` of the point can be nearer, and an R-tree over the boxes finds them all."""
    import rtree

    lo, hi = tri.min(1), tri.max(1)
    props = rtree.index.Property()
    props.dimension = 3
    index = rtree.index.Index(((i, (*lo[i], *hi[i]), None) for i in range(len(tri))), properties=props)
    reach = bound * (1 + 1e-9) + 1e-12
    found = [np.fromiter(index.intersection((*(q - r), *(q + r))), np.int64) for q, r in zip(p, reach)]
    counts = np.array([len(c) for c in found])
    out = bound.copy()
    if counts.sum() == 0:
        return out
    owner = np.repeat(np.arange(len(p)), counts)
    tris = np.concatenate(found)
    dist = np.empty(len(tris))
    for s in range(0, len(tris), 65536):
        t, q = tri[tris[s:s + 65536]], p[owner[s:s + 65536]]
        dist[s:s + 65536] = np.linalg.norm(_closest_on_triangles(q, t[:, 0], t[:, 1], t[:, 2]) - q, axis=-1)
    np.minimum.at(out, owner, dist)
    return out


def surface_chamfer(verts_a, faces_a, verts_b, faces_b, samples: int = 20000, seed: int = 0) -> tuple:
    """(Chamfer, distances a->b, distances b->a): mean of both directions of point-to-surface distances from
    area-uniform samples of each mesh to the other's surface (no sampling noise on the receiving side)."""
    import trimesh

    def sample(v, f):
        mesh = trimesh.Trimesh(np.asarray(v, np.float64), np.asarray(f), process=False)
        return trimesh.sample.sample_surface(mesh, samples, seed=seed)[0]

    d_ab = point_to_mesh_distance(sample(verts_a, faces_a), verts_b, faces_b)
    d_ba = point_to_mesh_distance(sample(verts_b, faces_b), verts_a, faces_a)
    return 0.5 * (d_ab.mean() + d_ba.mean()), d_ab, d_ba
