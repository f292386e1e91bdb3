"""Occupancy grids: the visual hull of the silhouettes, the source mesh's solid, and their source-guided combination.

All grids are soft occupancies in 0..1 sampled at the points ``lo + index * spacing`` of a :class:`VoxelGrid`, with
the surface at 0.5 (``../shared/design/render-lift.md`` §4 steps 1-2, §5 step 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..cameras import DEFAULT_HALF_EXTENT_AT_ORIGIN, MVCameras
from ..errors import LiftError
from ..types import MeshAsset

#: Half-size of the box searched for the object before the fine grid is fitted to it (world units; assets live in ±0.5).
SEARCH_HALF_EXTENT = 1.0
#: Resolution of the coarse search grid.
SEARCH_GRID = 40
#: Occupancy iso-level of the surface.
ISO_LEVEL = 0.5
#: Points projected per chunk (bounds memory at grid 256: 16.7M points).
POINT_CHUNK = 1 << 18
#: Gaussian smoothing of the hull occupancy, in voxels (render-lift.md §4 step 1).
HULL_SMOOTH_SIGMA = 0.6
#: Connected solids smaller than this fraction of the largest are dropped.
MIN_SOLID_FRACTION = 0.02


@dataclass(frozen=True)
class VoxelGrid:
    """Sample points ``lo + (i, j, k) * spacing`` for ``0 <= i < shape[0]`` etc. (world units, axes x, y, z)."""

    lo: tuple
    spacing: float
    shape: tuple

    def points_at(self, flat_index: torch.Tensor) -> torch.Tensor:
        """float32 [K, 3] positions of the samples with these flat indices (x slowest, as ``occ.reshape(-1)``)."""
        _, ny, nz = self.shape
        i = torch.div(flat_index, ny * nz, rounding_mode="floor")
        j = torch.div(flat_index, nz, rounding_mode="floor") % ny
        k = flat_index % nz
        ijk = torch.stack([i, j, k], -1).to(torch.float64)
        lo = torch.tensor(self.lo, dtype=torch.float64, device=flat_index.device)
        return (lo + ijk * self.spacing).to(torch.float32)

    def chunks(self, device=None, size: int = 0):
        """Yield (start, stop, points float32 [stop - start, 3]) over all samples, ``size`` at a time (bounded memory)."""
        size = size or POINT_CHUNK
        for start in range(0, self.num_points, size):
            stop = min(start + size, self.num_points)
            yield start, stop, self.points_at(torch.arange(start, stop, device=device))

    @property
    def num_points(self) -> int:
        return int(np.prod(self.shape))


def _cube_grid(half_extent: float, res: int) -> VoxelGrid:
    spacing = 2.0 * half_extent / (res - 1)
    return VoxelGrid((-half_extent,) * 3, spacing, (res,) * 3)


def sample_images(images: torch.Tensor, pixels: torch.Tensor, depth: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Sample [V, C, H, W] images at [V, N, 2] pixel positions (x = col, y = row); 0 outside the frame or behind the camera.

    Returns:
        [V, N, C].
    """
    _, _, h, w = images.shape
    grid = torch.stack([pixels[..., 0] / w * 2.0 - 1.0, pixels[..., 1] / h * 2.0 - 1.0], -1)[:, :, None]  # [V, N, 1, 2]
    out = F.grid_sample(images, grid.to(images.dtype), mode=mode, padding_mode="zeros", align_corners=False)
    out = out[..., 0].permute(0, 2, 1)
    return out * (depth > 0)[..., None].to(out.dtype)


def point_footprints(points: torch.Tensor, cameras: MVCameras, height: int, width: int) -> torch.Tensor:
    """bool [V, H, W]: the pixels each view sees ``points`` [N, 3] at, each point splatted 3x3 (a voxel's size in pixels
    at grid 128 / 256 px, so a solid's voxel centres cover its silhouette without holes)."""
    pix, depth = cameras.project(points, height, width)
    hit = torch.zeros(cameras.num_views, 1, height, width)
    for v in range(cameras.num_views):
        xy = pix[v][depth[v] > 0].round().long().cpu()
        ok = (xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height)
        hit[v, 0, xy[ok, 1], xy[ok, 0]] = 1.0
    return F.max_pool2d(hit, 3, stride=1, padding=1)[:, 0] > 0


def silhouette_occupancy(alpha: torch.Tensor, cameras: MVCameras, grid: VoxelGrid,
                         check_interrupt: Optional[Callable[[], None]] = None,
                         where: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Visual hull: at each grid point the minimum over views of the bilinearly sampled silhouette.

    Args:
        alpha: float [V, 1, H, W] in 0..1.
        cameras: the views' cameras.
        grid: where to sample.
        where: optional bool [X, Y, Z]: only these points are evaluated, the rest are 0.

    Returns:
        float32 [X, Y, Z] in 0..1 on ``alpha``'s device.
    """
    return silhouette_occupancies(alpha, cameras, grid, check_interrupt, where)[0]


def silhouette_occupancies(masks: torch.Tensor, cameras: MVCameras, grid: VoxelGrid,
                           check_interrupt: Optional[Callable[[], None]] = None,
                           where: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`silhouette_occupancy` of each channel of ``masks`` float [V, C, H, W] (several silhouettes of the same
    views: the grid is projected once for all): float32 [C, X, Y, Z]."""
    h, w = masks.shape[-2:]
    c = masks.shape[1]
    a = masks.to(torch.float32)
    if where is not None:
        sel = where.reshape(-1).to(masks.device).nonzero().squeeze(1)
        out = torch.zeros(c, grid.num_points, dtype=torch.float32, device=masks.device)
        for start in range(0, sel.numel(), POINT_CHUNK):
            if check_interrupt is not None:
                check_interrupt()
            idx = sel[start:start + POINT_CHUNK]
            pix, depth = cameras.project(grid.points_at(idx), h, w)
            out[:, idx] = sample_images(a, pix, depth).amin(0).T
        return out.reshape(c, *grid.shape)
    out = torch.empty(c, grid.num_points, dtype=torch.float32, device=masks.device)
    for start, stop, p in grid.chunks(masks.device):
        if check_interrupt is not None:
            check_interrupt()
        pix, depth = cameras.project(p, h, w)
        out[:, start:stop] = sample_images(a, pix, depth).amin(0).T
    return out.reshape(c, *grid.shape)


def _carving_cameras() -> list[MVCameras]:
    """22 viewpoints spread over the sphere (two rings above, two below, near-poles) for carving a mesh's solid."""
    az = lambda n, off: torch.arange(n, dtype=torch.float64) * (360.0 / n) + off  # noqa: E731
    cams = [MVCameras(elevation_deg=e, azimuth_deg=a)
            for e, a in ((-50.0, az(4, 45.0)), (-12.0, az(6, 0.0)), (12.0, az(6, 30.0)), (50.0, az(4, 0.0)))]
    cams.append(MVCameras(elevation_deg=-88.0, azimuth_deg=torch.tensor([0.0])))
    cams.append(MVCameras(elevation_deg=88.0, azimuth_deg=torch.tensor([0.0])))
    return cams


def mesh_occupancy(vertices: torch.Tensor, faces: torch.Tensor, grid: VoxelGrid, where: Optional[torch.Tensor] = None,
                   check_interrupt: Optional[Callable[[], None]] = None) -> torch.Tensor:
    """Solid of a triangle mesh by depth carving from 22 viewpoints.

    A point is outside when some view sees background there or sees a surface in front of it. Robust to meshes that are
    not watertight (unlike parity or winding tests on broken assets); concavities no viewpoint sees into stay filled.
    The occupancy is soft across the surface (depth difference over one voxel), so marching cubes places it sub-voxel.
    Depth maps are rendered at two pixels per voxel and grown by one pixel at their silhouettes, so the discrete
    silhouettes of grazing views do not erode edges and corners.

    Args:
        vertices: float [N, 3] world positions; faces: int64 [M, 3].
        where: optional bool [X, Y, Z]; only these points are evaluated, the rest are 0 (saves time where the result
            is masked anyway).

    Returns:
        float32 [X, Y, Z] in 0..1 on ``vertices``' device.
    """
    from ..raster import rasterize_views

    device = vertices.device
    res = int(min(768, max(64, math.ceil(4.0 * DEFAULT_HALF_EXTENT_AT_ORIGIN / grid.spacing))))
    sel = (torch.arange(grid.num_points, device=device) if where is None
           else where.reshape(-1).to(device).nonzero().squeeze(1))
    pts = grid.points_at(sel)
    occ = torch.ones(pts.shape[0], dtype=torch.float32, device=device)
    v32 = vertices.to(torch.float32)
    for cams in _carving_cameras():
        if check_interrupt is not None:
            check_interrupt()
        surf = rasterize_views(v32, faces, cams, res).depth[:, None]  # [V, 1, R, R], 0 = background
        surf = torch.where(surf > 0, surf, F.max_pool2d(surf, 3, stride=1, padding=1))
        for start in range(0, pts.shape[0], POINT_CHUNK):
            if check_interrupt is not None:
                check_interrupt()
            pix, depth = cams.project(pts[start:start + POINT_CHUNK], res, res)
            d_surf = sample_images(surf, pix, depth, mode="nearest")[..., 0]
            inside = ((depth - d_surf) / grid.spacing + 0.5).clamp(0.0, 1.0) * (d_surf > 0)
            occ[start:start + POINT_CHUNK] = torch.minimum(occ[start:start + POINT_CHUNK], inside.amin(0))
    full = torch.zeros(grid.num_points, dtype=torch.float32, device=device)
    full[sel] = occ
    return full.reshape(grid.shape)


def gaussian_smooth(occ: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable 3D Gaussian blur of an [X, Y, Z] grid (zero padding)."""
    if sigma <= 0:
        return occ
    radius = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=occ.dtype, device=occ.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    out = occ[None, None]
    for dim in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + dim] = k.numel()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - dim)] = pad[2 * (2 - dim) + 1] = radius
        out = F.conv3d(F.pad(out, pad), k.view(shape))
    return out[0, 0]


def _max_pool(occ: torch.Tensor, radius: int) -> torch.Tensor:
    return F.max_pool3d(occ[None, None], 2 * radius + 1, stride=1, padding=radius)[0, 0]


def open_solid(occ: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Morphological opening (erode then dilate) of a soft grid: removes shells thinner than ``2 * radius`` voxels."""
    if radius <= 0:
        return occ
    return _max_pool(-_max_pool(-occ, radius), radius)


def source_guided_occupancy(hull_edited: torch.Tensor, hull_source: torch.Tensor, source_solid: torch.Tensor,
                            added_opening: int = 1, smooth_sigma: float = HULL_SMOOTH_SIGMA) -> torch.Tensor:
    """``(source ∧ hull(edited)) ∨ (hull(edited) ∧ ¬hull(source))`` on soft grids (min = and, max = or, 1 - x = not).

    The source solid keeps its concavities and the parts the edited silhouettes still cover; material only where the
    edited silhouettes grow past the source's comes from the edited hull. That added part is smoothed like a pure hull
    and opened by ``added_opening`` voxels, so silhouettes a pixel wider than the source's add no thin shell around the
    whole object; the kept source part is cut by the unsmoothed hull, so thin source parts (legs, ears) survive.
    """
    added = torch.minimum(gaussian_smooth(hull_edited, smooth_sigma), 1.0 - hull_source)
    added = open_solid(added, added_opening)
    return torch.maximum(torch.minimum(source_solid, hull_edited), added)


def fit_grid(occupancy_fn: Callable[[VoxelGrid], torch.Tensor], resolution: int, what: str) -> VoxelGrid:
    """The fine grid: ``resolution`` samples along the longest side of the object's box found on a coarse search grid.

    Raises:
        LiftError: nothing is occupied on the search grid.
    """
    coarse = _cube_grid(SEARCH_HALF_EXTENT, SEARCH_GRID)
    occ = occupancy_fn(coarse)
    idx = (occ > ISO_LEVEL).nonzero()
    if idx.shape[0] == 0:
        raise LiftError(f"the {what} is empty: the silhouettes do not intersect in space. Check that the views are of one "
                        "object, in the order front, right, back, left, and made with these cameras (elevation, fov)")
    lo = idx.amin(0).cpu().double() * coarse.spacing - SEARCH_HALF_EXTENT - 1.5 * coarse.spacing
    hi = idx.amax(0).cpu().double() * coarse.spacing - SEARCH_HALF_EXTENT + 1.5 * coarse.spacing
    spacing = float((hi - lo).max()) / (resolution - 1)
    shape = tuple(int(math.ceil(float(e) / spacing)) + 1 for e in (hi - lo))
    return VoxelGrid(tuple(float(x) for x in lo), spacing, shape)


def keep_main_solids(occ: torch.Tensor) -> torch.Tensor:
    """Drop solids smaller than ``MIN_SOLID_FRACTION`` of the largest and fill internal cavities (watertight output)."""
    from scipy import ndimage

    inside = (occ > ISO_LEVEL).cpu().numpy()
    labels, n = ndimage.label(inside)
    if n == 0:
        return occ
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.isin(labels, np.flatnonzero(sizes >= MIN_SOLID_FRACTION * sizes.max()) + 1)
    filled = ndimage.binary_fill_holes(keep)
    dropped = torch.from_numpy(inside & ~keep).to(occ.device)
    cavity = torch.from_numpy(filled & ~keep).to(occ.device)
    occ = torch.where(dropped, torch.zeros_like(occ), occ)
    return torch.where(cavity, torch.ones_like(occ), occ)


def source_silhouette_dilation(height: int) -> int:
    """Pixels by which the source's silhouettes are dilated before they are compared with edited ones (keying and
    antialiasing move an outline by a pixel or two: that is no change)."""
    return max(2, height // 96)


def source_silhouettes(source: MeshAsset, cameras: MVCameras, height: int, width: int, dilate_px: int = 0) -> torch.Tensor:
    """Silhouettes of ``source`` seen by ``cameras``: float32 [V, 1, H, W] in {0, 1}, dilated by ``dilate_px``."""
    return mesh_silhouettes(source.vertices, source.faces, cameras, height, width, dilate_px)


@dataclass(frozen=True)
class SourceViews:
    """The source seen by the views' cameras at the views' size, made once per lift (:func:`source_views`) for every
    stage that compares the views with the source (registration, keying help, what was kept, removed, grown).

    ``face_id`` int64 [V, H, W]: the source face at each pixel centre (-1: background), ``depth`` float32 [V, H, W] its
    view-axis distance (0: background); ``rgb`` float32 [V, 3, H, W] and
    ``alpha`` [V, 1, H, W]: its unlit colour over black (coverage x colour) and coverage, antialiased as the render
    stage makes them; None when the views' size is not one the render stage makes (square, 8 px multiples to 1024)."""

    face_id: torch.Tensor
    depth: torch.Tensor
    rgb: Optional[torch.Tensor] = None
    alpha: Optional[torch.Tensor] = None
    normals: Optional[torch.Tensor] = None  # float32 [V, 3, H, W] world-frame, towards the camera (with ``rgb``)

    def silhouettes(self, dilate_px: int = 0) -> torch.Tensor:
        """float32 [V, 1, H, W] in {0, 1}, dilated by ``dilate_px`` (:func:`source_silhouettes`)."""
        mask = (self.face_id >= 0)[:, None].to(torch.float32)  # on the face ids' device
        if dilate_px > 0:
            mask = F.max_pool2d(mask, 2 * dilate_px + 1, stride=1, padding=dilate_px)
        return mask


def source_views(source: MeshAsset, cameras: MVCameras, height: int, width: int, colour: bool = True) -> SourceViews:
    """:class:`SourceViews` of ``source`` (on its device), with its unlit colour when ``colour`` and the size allows."""
    from ..raster import rasterize_views
    from ..render import render_views

    frags = rasterize_views(source.vertices.to(torch.float32), source.faces, cameras, (height, width))
    if not colour or height != width or height % 8 or height > 1024:
        return SourceViews(frags.face_id, frags.depth)
    r = render_views(source, cameras, resolution=height, background=(0.0, 0.0, 0.0), lighting="unlit")
    return SourceViews(frags.face_id, frags.depth, r.rgb, r.alpha, r.normals)


def mesh_silhouettes(vertices: torch.Tensor, faces: torch.Tensor, cameras: MVCameras, height: int, width: int,
                     dilate_px: int = 0) -> torch.Tensor:
    """Silhouettes of a mesh (vertices float [N, 3], faces int64 [M, 3]) seen by ``cameras``: float32 [V, 1, H, W] in
    {0, 1}, dilated by ``dilate_px``."""
    from ..raster import rasterize_views

    frags = rasterize_views(vertices.to(torch.float32), faces, cameras, (height, width))
    mask = frags.mask[:, None].to(torch.float32)
    if dilate_px > 0:
        mask = F.max_pool2d(mask, 2 * dilate_px + 1, stride=1, padding=dilate_px)
    return mask


__all__ = ["VoxelGrid", "silhouette_occupancy", "silhouette_occupancies", "mesh_occupancy", "source_guided_occupancy",
           "point_footprints", "fit_grid", "keep_main_solids", "gaussian_smooth", "source_silhouettes",
           "source_silhouette_dilation", "mesh_silhouettes", "SourceViews", "source_views"]


@dataclass(frozen=True)
class EditedAndSource:
    """The edited views' visual hull, the source's (from its silhouettes, dilated by a couple of pixels so keying
    and antialiasing do not read as change) and the source's solid, on one fine grid fitted to the edited hull."""

    grid: VoxelGrid
    hull_edited: torch.Tensor  # float32 [X, Y, Z] soft occupancies
    hull_source: torch.Tensor
    source_solid: torch.Tensor  # evaluated only where the edited hull reaches (0 elsewhere)


def edited_and_source_solids(alpha: torch.Tensor, cameras: MVCameras, source: MeshAsset, resolution: int,
                             check_interrupt: Optional[Callable[[], None]] = None,
                             seen: Optional[SourceViews] = None) -> EditedAndSource:
    """:class:`EditedAndSource` for the edited silhouettes ``alpha`` [V, 1, H, W] of ``source``: what source-guided and
    component-aware lifting compare to find where the edit changed the shape. ``seen``: the source's
    :class:`SourceViews` at the views' size, when the caller has them."""
    h, w = alpha.shape[-2:]
    fine = fit_grid(lambda g: silhouette_occupancy(alpha, cameras, g, check_interrupt), resolution, "visual hull")
    dilate = source_silhouette_dilation(h)
    src_sil = (seen.silhouettes(dilate) if seen is not None and tuple(seen.face_id.shape[-2:]) == (h, w)
               else source_silhouettes(source, cameras, h, w, dilate_px=dilate))
    # both hulls from one projection of the grid
    hull_edited, hull_source = silhouette_occupancies(torch.cat([alpha.to(torch.float32), src_sil.to(alpha.device)], 1),
                                                      cameras, fine, check_interrupt)
    solid = mesh_occupancy(source.vertices, source.faces, fine, where=hull_edited > 0.01, check_interrupt=check_interrupt)
    return EditedAndSource(fine, hull_edited, hull_source, solid)
