"""Pure point geometry shared by the cameras, the rasterizer and the source frame (torch only, any device).

Conventions (the ones ``cameras.MVCameras`` documents):

* Transforms are 4x4 affine matrices acting on column vectors, ``p' = M[:3, :3] @ p + M[:3, 3]``.
* Camera space is OpenGL: x right, y up, the camera looks down -z; **depth** is the view-axis distance ``d = -z``.
* Pinhole pixels: principal point at the image centre, square pixels, focal length ``f`` in pixels:
  ``col = f·x/d + W/2``, ``row = -f·y/d + H/2``; pixel ``(r, c)`` has its centre at ``(c + 0.5, r + 0.5)``, row 0 at the top.

These functions compute in the dtype they are given (callers choose float64 where precision matters), so a caller that
needs bit-identical results across refactors gets them.
"""

from __future__ import annotations

import torch

from .errors import ShapeError


def transform_points(matrices: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply affine 4x4 transforms to 3D points.

    Args:
        matrices: float [4, 4] (one transform) or [V, 4, 4] (one per view).
        points: float [N, 3]; with [V, 4, 4] matrices also [V, N, 3] (points per view).

    Returns:
        [N, 3] for one matrix, [V, N, 3] for V matrices, in the tensors' (common) dtype.
    """
    if matrices.shape[-2:] != (4, 4) or matrices.ndim not in (2, 3):
        raise ShapeError(f"transforms must be [4, 4] or [V, 4, 4], got {list(matrices.shape)}")
    if points.shape[-1:] != (3,) or points.ndim not in (2, 3):
        raise ShapeError(f"points must be [N, 3] or [V, N, 3], got {list(points.shape)}")
    if matrices.ndim == 2:
        if points.ndim != 2:
            raise ShapeError(f"one transform applies to points [N, 3], got {list(points.shape)}")
        return points @ matrices[:3, :3].t() + matrices[:3, 3]
    if points.ndim == 2:
        return torch.einsum("vij,nj->vni", matrices[:, :3, :3], points) + matrices[:, None, :3, 3]
    if points.shape[0] != matrices.shape[0]:
        raise ShapeError(f"{matrices.shape[0]} transforms for points of {points.shape[0]} views")
    return torch.einsum("vij,vnj->vni", matrices[:, :3, :3], points) + matrices[:, None, :3, 3]


def pinhole_pixels(xy_cam: torch.Tensor, depth: torch.Tensor, focal_px: float, height: int, width: int) -> torch.Tensor:
    """Pixel coordinates [..., 2] (x = column, y = row) of camera-space ``xy_cam`` [..., 2] at ``depth`` [...] (> 0)."""
    return torch.stack([focal_px * xy_cam[..., 0] / depth + width / 2.0,
                        -focal_px * xy_cam[..., 1] / depth + height / 2.0], -1)


def camera_to_pixels(points_cam: torch.Tensor, focal_px: float, height: int, width: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Project camera-space points [..., 3] to (pixels [..., 2], depth [...]); depth <= 0 is behind the camera."""
    depth = -points_cam[..., 2]
    return pinhole_pixels(points_cam[..., :2], depth, focal_px, height, width), depth


def pixels_to_camera(pixels: torch.Tensor, depth: torch.Tensor, focal_px: float, height: int, width: int) -> torch.Tensor:
    """Camera-space points [..., 3] on the rays through ``pixels`` [..., 2] at view-axis ``depth`` [...].

    With ``depth`` = 1 this is the (unnormalised) ray direction through the pixel. Inverse of :func:`camera_to_pixels`.
    """
    return torch.stack([(pixels[..., 0] - width / 2.0) / focal_px * depth,
                        -(pixels[..., 1] - height / 2.0) / focal_px * depth, -depth], -1)
