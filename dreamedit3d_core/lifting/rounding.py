"""Rounding new parts: the roundest solid their silhouettes allow.

Four views around an object see a ball as two crossed cylinders: in every horizontal slice the four-view hull of a round
part is the rectangle its silhouettes' runs bound, and its corners stick out from every camera between the four (a
red ball becomes a cushion from 45 degrees). The ellipse inscribed in that rectangle touches the same four sides, so it
explains every silhouette just as well, and it IS the part when the part is round -- which hats, balls, heads, ears and
horns are. This module cuts each new solid down to that inscribed shape, slice by slice.

A view sees a point's slice along its row: a point's offset from the centre of the silhouette run on its row, divided by
the run's half-length, is ``u`` (0 at the centre, 1 at the silhouette). Views whose image x-axes are parallel (front and
back) see the same direction, and the largest ``u`` of a group counts. A point is kept when the squares of the
groups' ``u`` add up to at most half the number of groups: for two perpendicular directions that is the inscribed
ellipse, for evenly spread directions the inscribed circle of each slice. Views look down at an elevation, so a row
is not a horizontal slice: a point is read in each view where it would be if it sat at the part's centre depth along
that view (measured on an added ball: without this, a 15 degree elevation squeezes it and loses 1 dB from 45 degrees;
with it, the ball's novel-view IoU is 0.992-0.999).

The prior is that of round things, and the views can refute it: they look down at the part, so a round part's top
outline is an arc (a ball's, or a cylinder's top seen as an ellipse) while a box's is one straight edge across its whole
width. A solid whose top outline is straight (:func:`flat_top_fraction`) in at least half the views that see it whole
is left as its hull, which is the box (an added box hat, measured: rounded 18 dB from the held-out cameras, as its hull
25 dB). A solid seen by views along one direction only is left as it is.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from ..cameras import MVCameras
from .hull import ISO_LEVEL, VoxelGrid, point_footprints, sample_images

#: ``u`` given to pixels outside every silhouette run (anything above 1 is outside; 2 keeps bilinear sampling across a
#: run's end a steep ramp).
OUTSIDE = 2.0
#: Views whose image x-axes' directions agree to this cosine see the same direction (front and back).
PARALLEL_COSINE = 0.9
#: A top outline is straight when this fraction of the part's columns have their top pixel within ``FLAT_TOP_PX`` of the
#: highest one: a box's ~0.95 (its corners' antialiasing), a cylinder's top ellipse ~0.6 and a ball's ~0.3 at 256 px.
FLAT_TOP_FRACTION = 0.85
FLAT_TOP_PX = 1
#: Parts narrower than this in a view say nothing about their top's shape there (every small outline looks flat).
FLAT_TOP_MIN_WIDTH_PX = 12


def run_coordinates(mask: torch.Tensor) -> torch.Tensor:
    """Each silhouette pixel's place in its row's run: ``|x - centre| / half-length`` (0 at the run's centre, 1 at its
    ends, measured between pixel centres with half a pixel added at each end); ``OUTSIDE`` off the silhouette.

    Args:
        mask: bool [V, H, W].

    Returns:
        float32 [V, H, W] on ``mask``'s device.
    """
    m = mask.detach().cpu().numpy().astype(bool)
    w = m.shape[-1]
    padded = np.pad(m, ((0, 0), (0, 0), (1, 1)))
    starts = m & ~padded[..., :-2]  # run starts: the pixel on the left is off
    ends = m & ~padded[..., 2:]  # run ends: the pixel on the right is off
    x = np.broadcast_to(np.arange(w, dtype=np.float64), m.shape)
    # runs in raster order: the k-th start and the k-th end belong to the same run
    x0, x1 = x[starts], x[ends]
    run = np.cumsum(starts.ravel()).reshape(m.shape) - 1
    centre = 0.5 * (x0 + x1)
    half = 0.5 * (x1 - x0 + 1.0)
    u = np.full(m.shape, OUTSIDE, np.float32)
    r = run[m]
    u[m] = (np.abs(x[m] - centre[r]) / half[r]).astype(np.float32)
    return torch.from_numpy(u).to(mask.device)


def flat_top_fraction(part: torch.Tensor) -> Optional[float]:
    """The fraction of a part's columns in one view whose topmost pixel lies within ``FLAT_TOP_PX`` rows of the part's
    highest: near 1 for a straight top edge, low for an arc. None when the view cannot tell: the part is narrower than
    ``FLAT_TOP_MIN_WIDTH_PX`` or touches the top of the frame.

    Args:
        part: bool [H, W], the part's pixels in the view.
    """
    rows_in = part.any(1).nonzero().squeeze(1)
    if rows_in.numel() == 0 or bool(part[0].any()):
        return None
    # the columns of the part's upper half: a rim of hull slack where it meets the object below is wider than the part
    # and has no top to judge
    columns = part[: int(rows_in[0] + rows_in[-1]) // 2 + 1].any(0)
    if int(columns.sum()) < FLAT_TOP_MIN_WIDTH_PX:
        return None
    rows = torch.arange(part.shape[0], device=part.device)[:, None].expand_as(part)
    top = torch.where(part, rows, torch.full_like(rows, part.shape[0])).amin(0)[columns]
    return float((top <= top.min() + FLAT_TOP_PX).to(torch.float32).mean())


def _flat_topped(points: torch.Tensor, silhouettes: torch.Tensor, cameras: MVCameras) -> bool:
    """Whether a solid's top outline is straight in at least half of the views that can tell, and in two or more."""
    h, w = silhouettes.shape[-2:]
    footprint = point_footprints(points, cameras, h, w) & silhouettes
    fractions = [f for f in (flat_top_fraction(footprint[v]) for v in range(footprint.shape[0])) if f is not None]
    flat = sum(f >= FLAT_TOP_FRACTION for f in fractions)
    return flat >= 2 and 2 * flat >= len(fractions)


def direction_groups(cameras: MVCameras) -> list:
    """The views grouped by the direction their image x-axis runs along (front and back share one): lists of indices."""
    right = cameras.c2w(torch.float64)[:, :3, 0]
    groups: list = []
    for i in range(right.shape[0]):
        for g in groups:
            if abs(float((right[g[0]] * right[i]).sum())) > PARALLEL_COSINE:
                g.append(i)
                break
        else:
            groups.append([i])
    return groups


def _horizontal_view_directions(cameras: MVCameras) -> torch.Tensor:
    """Unit [V, 3]: each camera's viewing direction with its vertical component removed (y up)."""
    forward = -cameras.c2w(torch.float32)[:, :3, 2]
    flat = forward * torch.tensor([1.0, 0.0, 1.0])
    return torch.nn.functional.normalize(flat, dim=-1)


def round_solids(occupancy: torch.Tensor, alpha: torch.Tensor, cameras: MVCameras, grid: VoxelGrid,
                 check_interrupt: Optional[Callable[[], None]] = None, shown: Optional[torch.Tensor] = None,
                 behind: Optional[torch.Tensor] = None, margin: float = 0.0) -> torch.Tensor:
    """Each connected solid of ``occupancy`` cut down to the ellipse inscribed in its silhouettes, slice by slice (see
    the module docstring).

    Args:
        occupancy: float [X, Y, Z] soft occupancy on ``grid`` (inside above ``hull.ISO_LEVEL``): new material inside the
            views' hull.
        alpha: float [V, 1, H, W] the silhouettes the solids were carved from; cameras: their cameras.
        shown, behind: bool [V, H, W] where the views show new material, and float [V, H, W] the view-axis depth of
            the surface the solids are new against (the source's; 0 where none). Given, a solid's silhouette in a view
            is where the view shows new material, or the source more than ``margin`` in front of the solid's centre
            (which may hide it: the body, seen from behind a ball held in front of it), not all of ``alpha`` (the
            ball from the front: its own disc, not the body's width).

    Returns:
        float32 [X, Y, Z]: ``occupancy`` where kept, 0 where cut. Never adds material. A solid with a straight top
        outline (a box) is kept whole.
    """
    from scipy import ndimage

    groups = direction_groups(cameras)
    if len(groups) < 2:
        return occupancy
    h, w = alpha.shape[-2:]
    u_maps = run_coordinates(alpha[:, 0] > 0.5).to(torch.float32).cpu()[:, None] - OUTSIDE  # 0 off-frame -> OUTSIDE
    directions = _horizontal_view_directions(cameras)
    labels, n = ndimage.label((occupancy > ISO_LEVEL).cpu().numpy())
    flat_labels = torch.from_numpy(labels.reshape(-1))
    order = torch.argsort(flat_labels)
    counts = torch.bincount(flat_labels, minlength=n + 1).tolist()
    keep = torch.zeros(grid.num_points, dtype=torch.bool)
    start = counts[0]
    for k in range(1, n + 1):
        if check_interrupt is not None:
            check_interrupt()
        idx = order[start:start + counts[k]]
        start += counts[k]
        points = grid.points_at(idx)
        centre = points.mean(0)
        u = torch.empty(cameras.num_views, idx.numel())
        maps, mine = u_maps, alpha[:, 0].cpu() > 0.5
        if shown is not None and behind is not None:
            _, centre_depth = cameras.project(centre[None], h, w)
            front = behind.to(torch.float32).cpu()
            hiding = (front > 0) & (front < centre_depth.cpu()[:, :1, None] - margin)  # [V, H, W]
            mine = shown.cpu() | (mine & hiding)
            maps = run_coordinates(mine).to(torch.float32)[:, None] - OUTSIDE
        if _flat_topped(points, mine, cameras):
            keep[idx] = True
            continue
        for v in range(u.shape[0]):
            d = directions[v]
            moved = points - ((points - centre) @ d)[:, None] * d  # at the solid's centre depth along this view
            pix, depth = cameras.project(moved, h, w)
            u[v] = sample_images(maps[v:v + 1], pix[v:v + 1], depth[v:v + 1])[0, :, 0] + OUTSIDE
        per_direction = torch.stack([u[g].amax(0) for g in groups])
        keep[idx] = (per_direction ** 2).sum(0) <= 0.5 * len(groups)
    keep = keep.reshape(grid.shape).to(occupancy.device)
    return torch.where(keep, occupancy.to(torch.float32), torch.zeros((), device=occupancy.device))


__all__ = ["round_solids", "run_coordinates", "direction_groups", "flat_top_fraction"]
