"""3D Gaussians in our world frame, and from them a watertight mesh with no compiled extension.

Recipe (``../shared/design/lgm.md`` "From Gaussians to a mesh"): drop nearly transparent Gaussians; sum the Gaussians'
density ``sum_i o_i exp(-1/2 (x - mu_i)^T Sigma_i^-1 (x - mu_i))`` on a voxel grid, each Gaussian only over the voxels of
its 3-sigma box, in chunks (bounded memory; progress and interruption per chunk); turn it into an occupancy whose 0.5
level sits where the density falls to half its local ridge (LGM's Gaussians are surface splats, so the ridge is the
surface); fill the volume the shell encloses; intersect with the views' visual hull; marching cubes.

Sub-voxel splats would fall between grid samples, so each covariance is widened by ``(antialias * voxel)^2`` on its
diagonal before sampling (the 3D low-pass of Mip-Splatting, Yu et al. 2024); the surface moves out by about
``1.18 * antialias * voxel``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ...cameras import MVCameras
from ...errors import LiftError, ShapeError
from ..hull import ISO_LEVEL, VoxelGrid, fit_grid, keep_main_solids, silhouette_occupancy
from ..surface import marching_cubes
from .network import RawGaussians
from .rays import LGMFrame

#: Gaussians below this opacity are dropped (LGM's own ``save_ply`` pruning).
MIN_OPACITY = 0.005
#: Density is summed out to this many standard deviations.
CUTOFF_SIGMA = 3.0
#: Covariances are widened by (ANTIALIAS_VOXELS * voxel)^2 so thin splats register on the grid.
ANTIALIAS_VOXELS = 0.5
#: The occupancy's 0.5 level: density at this fraction of its local maximum (the splats' ridge) ...
RIDGE_FRACTION = 0.5
#: ... found within this many voxels ...
RIDGE_RADIUS_VOXELS = 3
#: ... but never below this absolute density (a faint lone Gaussian makes no surface).
MIN_SURFACE_DENSITY = 0.2
#: Shell gaps up to this many voxels are closed before the enclosed volume is filled.
CLOSE_GAPS_VOXELS = 2
#: The visual hull is widened by this many voxels before it cuts the density solid (about the surface correction).
HULL_WIDEN_VOXELS = 1
#: A Gaussian's window is at most this many voxels either side of its centre (larger ones are truncated and counted).
MAX_WINDOW_VOXELS = 32
#: Density evaluations per chunk (about 64 bytes each while a chunk is processed).
EVALS_PER_CHUNK = 1 << 21


def quaternion_matrix(q: torch.Tensor) -> torch.Tensor:
    """The 3DGS rasterizer's matrix of a quaternion (w, x, y, z) [..., 4] -> [..., 3, 3], taken as it is.

    Unit quaternions give rotations. The rasterizer does not normalise (``computeCov3D`` of diff-gaussian-rasterization),
    so the older LGM weights' small, non-unit quaternions give matrices near the identity, and so do they here.
    """
    w, x, y, z = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, -1).reshape(q.shape[:-1] + (3, 3))


@dataclass(frozen=True)
class Gaussians:
    """One object's 3D Gaussians in our world frame.

    Attributes:
        means: float32 [N, 3]; opacity: float32 [N] in 0..1; scales: float32 [N, 3] standard deviations along the
        columns of ``axes``; axes: float32 [N, 3, 3] with ``covariance = axes diag(scales^2) axes^T``; colors: float32
        [N, 3] in 0..1.
    """

    means: torch.Tensor
    opacity: torch.Tensor
    scales: torch.Tensor
    axes: torch.Tensor
    colors: torch.Tensor

    def __post_init__(self):
        n = self.means.shape[0] if isinstance(self.means, torch.Tensor) else -1
        want = {"means": (n, 3), "opacity": (n,), "scales": (n, 3), "axes": (n, 3, 3), "colors": (n, 3)}
        for name, shape in want.items():
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape or not torch.is_floating_point(t):
                got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ShapeError(f"Gaussians.{name} must be a float tensor {list(shape)}, got {got}")

    @property
    def num(self) -> int:
        return int(self.means.shape[0])

    def covariance(self) -> torch.Tensor:
        """float64 [N, 3, 3]."""
        a = self.axes.to(torch.float64)
        return (a * self.scales.to(torch.float64)[:, None, :] ** 2) @ a.transpose(1, 2)

    def select(self, keep: torch.Tensor) -> "Gaussians":
        return Gaussians(self.means[keep], self.opacity[keep], self.scales[keep], self.axes[keep], self.colors[keep])

    def to(self, device=None, dtype=torch.float32) -> "Gaussians":
        return Gaussians(*(getattr(self, k).to(device=device, dtype=dtype)
                           for k in ("means", "opacity", "scales", "axes", "colors")))

    def __repr__(self) -> str:
        return f"Gaussians(num={self.num}, device={self.means.device})"


def gaussians_from_lgm(raw: RawGaussians, frame: LGMFrame, index: int = 0) -> Gaussians:
    """Object ``index`` of LGM's output, moved from LGM's frame into ours (``frame.from_lgm``), as float32."""
    axes = frame.rotate_from_lgm(quaternion_matrix(raw.rotation[index].to(torch.float64)))
    return Gaussians(
        means=frame.from_lgm(raw.position[index].to(torch.float64)).float(),
        opacity=raw.opacity[index, :, 0].float(),
        scales=(raw.scale[index].to(torch.float64) / frame.scale).float(),
        axes=axes.float(),
        colors=raw.color[index].float(),
    )


def fit_gaussian_grid(g: Gaussians, resolution: int, min_opacity: float = 0.05,
                      within: Optional[VoxelGrid] = None) -> VoxelGrid:
    """A grid with ``resolution`` samples along the longest side of the box holding the visible Gaussians' 3-sigma
    extents (intersected with the box of ``within``, e.g. the visual hull's grid, when given).

    Raises:
        LiftError: no Gaussian is visible, or none inside ``within``.
    """
    keep = g.opacity >= min_opacity
    if not bool(keep.any()):
        raise LiftError(f"LGM predicted no Gaussian with opacity >= {min_opacity} (max {float(g.opacity.max()):.3g}): "
                        "nothing to mesh; check that the views show an object on a white background")
    sel = g.select(keep)
    reach = CUTOFF_SIGMA * sel.covariance().diagonal(dim1=1, dim2=2).clamp_min(0).sqrt()
    lo = (sel.means.double() - reach).amin(0).cpu()
    hi = (sel.means.double() + reach).amax(0).cpu()
    if within is not None:
        w_lo = torch.tensor(within.lo, dtype=torch.float64)
        w_hi = w_lo + torch.tensor([(n - 1) * within.spacing for n in within.shape], dtype=torch.float64)
        lo, hi = torch.maximum(lo, w_lo), torch.minimum(hi, w_hi)
        if bool((hi <= lo).any()):
            raise LiftError("LGM's Gaussians lie outside the views' visual hull: the views and the cameras disagree "
                            "(check the view order front, right, back, left and the elevation)")
    spacing = float((hi - lo).max()) / (resolution - 1)
    lo = lo - spacing
    shape = tuple(int(math.ceil(float(e) / spacing)) + 3 for e in (hi - lo))
    return VoxelGrid(tuple(float(x) for x in lo), spacing, shape)


def density_grid(g: Gaussians, grid: VoxelGrid, antialias_voxels: float = ANTIALIAS_VOXELS,
                 min_opacity: float = MIN_OPACITY, evals_per_chunk: int = EVALS_PER_CHUNK,
                 progress=None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Summed Gaussian density at the grid's samples, each Gaussian over its own 3-sigma window of voxels.

    Args:
        g: the Gaussians (on the device to compute on).
        grid: where to sample.
        antialias_voxels: covariance widening in voxels (module docstring).
        progress: a :class:`~dreamedit3d_core.progress.Progress`; ``check_interrupt`` is called per chunk and
            ``update(done, total, stage="lgm density")`` reports Gaussians done.

    Returns:
        (density float32 [X, Y, Z], thickness float32 [X, Y, Z]: the density-weighted mean of the contributing
        Gaussians' thinnest widened standard deviation (world units), stats), on ``g``'s device.
    """
    device = g.means.device
    sel = g.select(g.opacity >= min_opacity)
    h = float(grid.spacing)
    cov = sel.covariance() + (antialias_voxels * h) ** 2 * torch.eye(3, dtype=torch.float64, device=device)
    # q = (o + r)^T P (o + r) over window offsets o and the centre residual r (voxels), expanded into monomials of o so
    # that a chunk is one [W, 10] @ [10, n] product
    prec = (torch.linalg.inv(cov) * h * h).to(torch.float32)  # precision in voxel units
    thinnest = torch.linalg.eigvalsh(cov)[:, 0].clamp_min(0).sqrt().to(torch.float32)
    # the 3-sigma ellipsoid's bounding box, per axis (flat splats on axis-aligned faces get thin windows)
    reach_vox = CUTOFF_SIGMA * cov.diagonal(dim1=1, dim2=2).sqrt() / h  # [n, 3]
    window = reach_vox.ceil().clamp(1, MAX_WINDOW_VOXELS).to(torch.int64)
    truncated = int((reach_vox > MAX_WINDOW_VOXELS).any(-1).sum())
    lo = torch.tensor(grid.lo, dtype=torch.float64, device=device)
    pos = (sel.means.double() - lo) / h  # in voxels
    centre = torch.round(pos).to(torch.int64)
    resid = (centre.double() - pos).to(torch.float32)  # voxel centre minus mean, in voxels
    pr = torch.einsum("nij,nj->ni", prec, resid)
    coef = torch.cat([prec[:, [0, 1, 2], [0, 1, 2]], prec[:, [0, 0, 1], [1, 2, 2]], pr,
                      (pr * resid).sum(-1, keepdim=True)], dim=1).T.contiguous()  # [10, n]
    dims = torch.tensor(grid.shape, device=device)
    # a Gaussian centred more than its window outside the grid touches no sample
    near = ((centre >= -window) & (centre < dims + window)).all(-1)
    pad = 2 * int(window[near].max()) if bool(near.any()) else 0
    padded = tuple(int(d) + 2 * pad for d in grid.shape)
    strides = torch.tensor([padded[1] * padded[2], padded[2], 1], device=device)
    centre_flat = ((centre + pad) * strides).sum(-1)
    sums = torch.zeros(math.prod(padded), 2, dtype=torch.float32, device=device)  # density, density * thinnest sigma
    total, done = int(near.sum()), 0
    for k in torch.unique(window[near], dim=0).tolist():
        idx = ((window == torch.tensor(k, device=device)).all(-1) & near).nonzero()[:, 0]
        axes = [torch.arange(-kj, kj + 1, device=device) for kj in k]
        off = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        offset_flat = (off * strides).sum(-1)
        o = off.to(torch.float32)
        monomials = torch.cat([o * o, 2 * o[:, [0, 0, 1]] * o[:, [1, 2, 2]], 2 * o, torch.ones_like(o[:, :1])], 1)
        per_chunk = max(1, evals_per_chunk // off.shape[0])
        for start in range(0, idx.numel(), per_chunk):
            if progress is not None:
                progress.check_interrupt()
            i = idx[start:start + per_chunk]
            q = monomials @ coef[:, i]  # [W, n]
            val = sel.opacity[i][None] * torch.exp(-0.5 * q) * (q <= CUTOFF_SIGMA ** 2)
            flat = (offset_flat[:, None] + centre_flat[i][None]).reshape(-1)
            sums.index_add_(0, flat, torch.stack([val, val * thinnest[i][None]], -1).reshape(-1, 2))
            done += i.numel()
            if progress is not None:
                progress.update(done, total, None, stage="lgm density")
    crop = (slice(pad, pad + grid.shape[0]), slice(pad, pad + grid.shape[1]), slice(pad, pad + grid.shape[2]))
    sums = sums.reshape(padded + (2,))[crop]
    density = sums[..., 0].contiguous()
    thickness = (sums[..., 1] / density.clamp_min(1e-12)).contiguous()
    return density, thickness, {"gaussians_used": total, "windows_truncated": truncated}


def _max_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Cubic max filter of ``radius`` voxels, as three 1D passes."""
    x = x[None, None]
    k = 2 * radius + 1
    for kernel, pad in (((k, 1, 1), (radius, 0, 0)), ((1, k, 1), (0, radius, 0)), ((1, 1, k), (0, 0, radius))):
        x = F.max_pool3d(x, kernel, stride=1, padding=pad)
    return x[0, 0]


def _sheet_distance(density: torch.Tensor, thickness: torch.Tensor, ridge_fraction: float, ridge_radius: int,
                    min_density: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distance from the splats' sheet implied by the density, and where the surface level lies.

    Across a sheet the density is ``ridge * exp(-phi^2 / (2 sigma^2))`` at distance ``phi``, so
    ``phi = sigma * sqrt(2 ln(ridge / density))`` (with ``sigma`` the local ``thickness``); the level
    ``max(ridge_fraction * ridge, min_density)`` lies at ``phi_level``. Returns (phi, phi_level, has_surface).
    """
    ridge = _max_filter(density, ridge_radius)
    level = torch.maximum(ridge * ridge_fraction, torch.full_like(ridge, min_density))
    phi = thickness * torch.sqrt(2.0 * torch.log(ridge.clamp_min(1e-30) / density.clamp_min(1e-30)))
    phi = torch.where(density > 0, phi, torch.full_like(phi, math.inf))  # beyond every Gaussian's cut-off
    phi_level = thickness * torch.sqrt(2.0 * torch.log((ridge / level).clamp_min(1.0)))
    return phi, phi_level, ridge >= level


def surface_occupancy(density: torch.Tensor, thickness: torch.Tensor, voxel: float,
                      ridge_fraction: float = RIDGE_FRACTION, ridge_radius: int = RIDGE_RADIUS_VOXELS,
                      min_density: float = MIN_SURFACE_DENSITY, close_gaps: int = CLOSE_GAPS_VOXELS) -> torch.Tensor:
    """Soft occupancy in 0..1 whose 0.5 level is where the density falls to ``max(ridge_fraction * local max,
    min_density)``, linear in the distance from the sheet (so marching cubes interpolates it exactly) over about two
    voxels, with the volume the shell encloses (after closing gaps of ``close_gaps`` voxels) set to 1."""
    from scipy import ndimage

    phi, phi_level, has_surface = _sheet_distance(density, thickness, ridge_fraction, ridge_radius, min_density)
    occ = (0.5 + (phi_level - phi) / (2.0 * voxel)).clamp(0.0, 1.0) * has_surface
    solid = (occ >= ISO_LEVEL).cpu().numpy()
    pad = close_gaps + 1
    closed = ndimage.binary_closing(np.pad(solid, pad), structure=ndimage.generate_binary_structure(3, 1),
                                    iterations=close_gaps)[pad:-pad, pad:-pad, pad:-pad] if close_gaps else solid
    enclosed = ndimage.binary_fill_holes(closed | solid) & ~solid
    return torch.where(torch.from_numpy(enclosed).to(occ.device), torch.ones_like(occ), occ)


def _sample_grid(volume: torch.Tensor, grid: VoxelGrid, points: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of a [X, Y, Z] grid at world points [P, 3] (edge values outside)."""
    lo = torch.tensor(grid.lo, dtype=torch.float64, device=points.device)
    extent = torch.tensor([(n - 1) * grid.spacing for n in grid.shape], dtype=torch.float64, device=points.device)
    uvw = ((points.double() - lo) / extent * 2 - 1).flip(-1).to(torch.float32)  # grid_sample wants (z, y, x)
    out = F.grid_sample(volume[None, None].float(), uvw.reshape(1, -1, 1, 1, 3).to(volume.device), mode="bilinear",
                        padding_mode="border", align_corners=True)
    return out.reshape(-1).to(points.device)


def gaussians_to_mesh(g: Gaussians, resolution: int = 128, alpha: Optional[torch.Tensor] = None,
                      cameras: Optional[MVCameras] = None, progress=None,
                      antialias_voxels: float = ANTIALIAS_VOXELS) -> tuple[np.ndarray, np.ndarray, dict]:
    """A watertight triangle mesh of the Gaussians' surface in our world frame.

    The marching-cubes surface sits where the density has fallen to ``level`` outside the splats' ridge; across a
    sheet of splats the density is a Gaussian of the (widened) thinnest standard deviation ``sigma``, so that level
    lies ``phi_level = sigma * sqrt(2 ln(ridge / level))`` outside the sheet, and each vertex is moved back along its
    normal by that distance (trilinearly sampled at the vertex). A lone round blob has no sheet: it shrinks by the same
    rule (at most two voxels).

    Args:
        g: Gaussians in our frame.
        resolution: voxels along the longest side of the Gaussians' box.
        alpha, cameras: the views' silhouettes float [V, 1, H, W] and cameras; when given, the solid is intersected with
            their visual hull (Gaussians floating outside every view's silhouette are cut away).
        progress: interruption and progress hooks (see :func:`density_grid`).

    Returns:
        (vertices float64 [N, 3], faces int64 [M, 3] with outward winding, stats).

    Raises:
        LiftError: no visible Gaussian, or nothing left to mesh.
    """
    from ..bake import vertex_normals

    if (alpha is None) != (cameras is None):
        raise LiftError("gaussians_to_mesh needs both alpha and cameras to intersect with the visual hull, or neither")
    a = alpha.to(device=g.means.device, dtype=torch.float32) if alpha is not None else None
    hull_box = None
    if a is not None:
        hull_box = fit_grid(lambda gr: silhouette_occupancy(a, cameras, gr), int(resolution), "visual hull")
    grid = fit_gaussian_grid(g, int(resolution), within=hull_box)
    check = progress.check_interrupt if progress is not None else (lambda: None)
    density, thickness, stats = density_grid(g, grid, antialias_voxels=antialias_voxels, progress=progress)
    check()
    occ = surface_occupancy(density, thickness, grid.spacing)
    check()
    if alpha is not None:
        hull_occ = silhouette_occupancy(a, cameras, grid, check)
        # the density surface sits outside the splats until the vertex correction below moves it back; widen the hull
        # by that much first, so the hull (which touches the object along its limbs) does not cut the splats there
        occ = torch.minimum(occ, _max_filter(hull_occ, HULL_WIDEN_VOXELS))
    occ = keep_main_solids(occ)
    check()
    verts, faces = marching_cubes(occ, grid)
    # move the half-ridge surface back onto the splats' sheet (see above)
    _, phi_level, _ = _sheet_distance(density, thickness, RIDGE_FRACTION, RIDGE_RADIUS_VOXELS, MIN_SURFACE_DENSITY)
    v = torch.from_numpy(verts)
    shift = _sample_grid(phi_level, grid, v).double().clamp(0.0, grid.spacing * 2.0)  # never more than two voxels
    normals = vertex_normals(v.float(), torch.from_numpy(faces)).double()
    verts = (v - shift[:, None] * normals).numpy()
    stats.update({"grid_shape": list(grid.shape), "voxel_size": grid.spacing,
                  "mean_surface_shift": float(shift.mean())})
    return verts, faces, stats


def gaussian_colors_at(points: torch.Tensor, g: Gaussians, neighbours: int = 8, chunk: int = 512) -> torch.Tensor:
    """Colour of the Gaussians around each point: float32 [P, 3], the ``neighbours`` nearest visible centres weighted by
    opacity times their density at the point (the nearest one's colour where all weights vanish)."""
    sel = g.select(g.opacity >= MIN_OPACITY)
    if sel.num == 0:
        raise LiftError("no visible Gaussian to take colours from")
    k = min(neighbours, sel.num)
    precision = torch.linalg.inv(sel.covariance() + 1e-10 * torch.eye(3, dtype=torch.float64,
                                                                       device=sel.means.device)).float()
    out = torch.empty(points.shape[0], 3, dtype=torch.float32, device=points.device)
    pts = points.to(device=sel.means.device, dtype=torch.float32)
    for s in range(0, pts.shape[0], chunk):
        p = pts[s:s + chunk]
        dist, nn_idx = torch.cdist(p, sel.means).topk(k, largest=False)
        d = p[:, None, :] - sel.means[nn_idx]
        q = torch.einsum("pki,pkij,pkj->pk", d, precision[nn_idx], d)
        w = sel.opacity[nn_idx] * torch.exp(-0.5 * q.clamp_max(80.0))
        cols = sel.colors[nn_idx]
        weighted = (w[..., None] * cols).sum(1) / w.sum(1, keepdim=True).clamp_min(1e-12)
        out[s:s + chunk] = torch.where((w.sum(1) > 1e-8)[:, None], weighted, cols[:, 0]).to(out.device)
    return out
