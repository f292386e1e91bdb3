"""Carrying pixels between views through a render's depth: lift a view's pixels to the surface, project points into every
view with an occlusion test, and the cross-view disagreement of a set of masks.

The camera math itself is ``MVCameras.project`` / ``unproject``; this module adds what needs the render (its depth and
normals): which surface a pixel shows and whether a view sees a point.
"""

from __future__ import annotations

import math

import torch

from ..errors import ShapeError
from ..types import MultiViewRender

#: Default depth tolerance (object units; the object spans 1) for "this 3D point is the surface the view sees".
DEFAULT_DEPTH_TOLERANCE = 0.02


def _pixel_cells(xy: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pixel holding each point of ``xy`` [..., 2] (x = column, y = row): (row, col) clamped into the image, and
    whether the point lies inside it."""
    col, row = xy[..., 0].floor().long(), xy[..., 1].floor().long()
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    return row.clamp(0, height - 1), col.clamp(0, width - 1), inside


def lift_pixels(render: MultiViewRender, view: int, xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lift image points of one view to the 3D surface it shows.

    Args:
        render: the views (depth, cameras).
        view: index of the view the points are on.
        xy: float [P, 2] pixel coordinates (x = column, y = row; pixel centres at +0.5, as ``MVCameras.project``).

    Returns:
        (points float64 [P, 3] world positions, valid bool [P]: the point is inside the image and on the object).
        The depth of the pixel containing the point is used along the exact ray through ``xy``.
    """
    h, w = render.size
    xy = torch.as_tensor(xy, dtype=torch.float64, device=render.depth.device).reshape(-1, 2)
    row, col, inside = _pixel_cells(xy, h, w)
    d = render.depth[view, 0, row, col].to(torch.float64)
    valid = inside & (d > 0)
    return render.cameras.unproject(xy, d, h, w, view=view), valid


def project_visible(render: MultiViewRender, points: torch.Tensor,
                    depth_tolerance: float = DEFAULT_DEPTH_TOLERANCE) -> tuple[torch.Tensor, torch.Tensor]:
    """Project 3D points into every view and test whether each view sees them (not occluded, inside the image).

    A view sees a point when the depth it shows at the point's pixel is within ``depth_tolerance`` plus the depth change
    across one pixel of that surface (``pixel size x tan(angle to the view ray)``, from the render's normals), so points on
    surfaces seen at a grazing angle are not mistaken for occluded ones.

    Args:
        points: float [P, 3] world positions.
        depth_tolerance: object units (the object spans 1).

    Returns:
        (xy float64 [V, P, 2] pixel coordinates, visible bool [V, P]).
    """
    h, w = render.size
    pts = torch.as_tensor(points, dtype=torch.float64, device=render.depth.device).reshape(-1, 3)
    xy, depth = render.cameras.project(pts, h, w)
    row, col, inside = _pixel_cells(xy, h, w)
    v_idx = torch.arange(xy.shape[0], device=pts.device)[:, None].expand_as(col)
    seen = render.depth[v_idx, 0, row, col].to(torch.float64)
    normal = render.normals[v_idx, :, row, col].to(torch.float64)  # [V, P, 3]
    to_cam = torch.nn.functional.normalize(render.cameras.positions(torch.float64)[:, None].to(pts.device) - pts[None],
                                           dim=-1)
    cos = (normal * to_cam).sum(-1).abs().clamp(min=0.1)
    slope = torch.sqrt(1.0 - cos ** 2) / cos
    tolerance = depth_tolerance + seen / render.cameras.focal_px(h) * slope
    visible = inside & (depth > 0) & (seen > 0) & ((seen - depth).abs() <= tolerance)
    return xy, visible


def mask_disagreement(render: MultiViewRender, masks: torch.Tensor, max_points: int = 4000,
                      depth_tolerance: float = DEFAULT_DEPTH_TOLERANCE) -> torch.Tensor:
    """Cross-view disagreement of component masks, measured by re-projection.

    For every component and ordered view pair (a, b): pixels of the mask in view a are lifted to 3D with a's depth and
    projected into b; of those b sees (not occluded), the share that falls outside b's mask is the disagreement.
    Pooled over all pairs. Mask edges alone give a few percent.

    Args:
        masks: bool [K, V, H, W].
        max_points: pixels sampled per mask and view (evenly strided, deterministic).

    Returns:
        float32 [K] in 0..1; NaN for a component no two views see together.
    """
    if masks.ndim != 4 or masks.shape[1:] != render.part_id.shape:
        raise ShapeError(f"masks must be [K, {', '.join(map(str, render.part_id.shape))}], got {list(masks.shape)}")
    k_count, num_views = masks.shape[:2]
    h, w = render.size
    out = torch.full((k_count,), math.nan, dtype=torch.float32)
    for k in range(k_count):
        agree = total = 0
        for a in range(num_views):
            pix = (masks[k, a] & (render.depth[a, 0] > 0)).nonzero()
            if pix.shape[0] == 0:
                continue
            pix = pix[:: max(1, pix.shape[0] // max_points)]
            pts, _ = lift_pixels(render, a, pix.flip(1).to(torch.float64) + 0.5)
            xy, visible = project_visible(render, pts, depth_tolerance)
            for b in range(num_views):
                if b == a:
                    continue
                sel = visible[b]
                if not bool(sel.any()):
                    continue
                row, col, _ = _pixel_cells(xy[b, sel], h, w)  # visible points lie inside view b
                agree += int(masks[k, b, row, col].sum())
                total += int(sel.sum())
        if total:
            out[k] = 1.0 - agree / total
    return out.to(masks.device)
