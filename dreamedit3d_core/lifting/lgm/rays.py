"""LGM's cameras for our four views: the similarity between our world and LGM's frame, Plücker rays, and the views
resampled to LGM's lens.

LGM was trained with fixed cameras (``../shared/design/lgm.md``; ``core/options.py``, ``core/provider_objaverse.py``
of 3DTopia/LGM): a 49.1° vertical field of view, the camera 1.5 from the origin, OpenGL camera axes, pixel centres at
+0.5, and the input poses normalised so that the first view's camera is the identity rotation at (0, 0, 1.5). Its
orbit helper (kiui ``orbit_camera``) puts a positive elevation *below* the object where MVDream puts it above; azimuths
agree (0 on +z, 90 on +x), and LGM's views go at azimuths 0, 90, 180, 270 in that order.

Our views (``cameras.py``) are front, right, back, left at MVDream azimuths 90, 180, 270, 0, elevation 15°, seen with
``MVCameras.fov_deg`` from ``MVCameras.radius``. We map our world into LGM's by a similarity ``p_lgm = s R p_ours`` that
carries each of our cameras onto a camera at distance 1.5 with the same orientation (``s = 1.5 / radius``):

* ``frame="first_view"`` (default, what LGM trained on): ``R`` takes our first (front) camera to the identity, so the
  front view is LGM's view 0 and the others follow in order, 90° apart, as in ``infer.py``'s ``[1, 2, 3, 0]`` reordering
  of MVDream outputs made with ``azimuth_start=0``. At elevation 0 this is a turn of -90° about +y; at elevation ``e``
  the whole rig is also tilted by ``e`` so the front camera sits level.
* ``frame="world"``: only the turn about +y, keeping our up axis: LGM's ``prepare_default_rays(elevation=-e)``.

Same camera centre and orientation, different focal length: a pinhole image only scales about its centre, so resampling
our view by ``f_lgm / f_ours`` (background outside) gives exactly what LGM's camera sees; every 3D point lands on the
same ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ...cameras import MVCameras
from ...errors import ConfigError, ShapeError
from .network import LGM_NUM_VIEWS

#: LGM's training lens and camera distance (core/options.py: fovy, cam_radius).
LGM_FOV_DEG = 49.1
LGM_CAMERA_RADIUS = 1.5
#: ImageNet statistics LGM normalises its input RGB with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FRAMES = ("first_view", "world")


def rotation_y(angle_deg: float) -> torch.Tensor:
    """float64 [3, 3] rotation by ``angle_deg`` about +y taking MVDream azimuth ``a`` to ``a + angle_deg``."""
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=torch.float64)


@dataclass(frozen=True)
class LGMFrame:
    """``p_lgm = scale * rotation @ p_ours`` (rotation float64 [3, 3]); Gaussians come back through :meth:`from_lgm`."""

    rotation: torch.Tensor
    scale: float

    def to_lgm(self, points: torch.Tensor) -> torch.Tensor:
        """Our world [..., 3] -> LGM's frame (computed in float64, returned in ``points``' dtype)."""
        r = self.rotation.to(points.device)
        return (self.scale * points.to(torch.float64) @ r.T).to(points.dtype)

    def from_lgm(self, points: torch.Tensor) -> torch.Tensor:
        """LGM's frame [..., 3] -> our world."""
        r = self.rotation.to(points.device)
        return (points.to(torch.float64) @ r / self.scale).to(points.dtype)

    def rotate_from_lgm(self, m: torch.Tensor) -> torch.Tensor:
        """Axes [..., 3, 3] (as columns) in LGM's frame -> ours, rotation only (``R^T M``)."""
        r = self.rotation.to(device=m.device)
        return (r.T @ m.to(torch.float64)).to(m.dtype)


def lgm_frame(cameras: MVCameras, frame: str = "first_view") -> LGMFrame:
    """The similarity from our world to LGM's for these views (see the module docstring)."""
    if frame not in FRAMES:
        raise ConfigError(f"unknown LGM frame {frame!r}; valid frames are {list(FRAMES)}")
    scale = LGM_CAMERA_RADIUS / float(cameras.radius)
    if frame == "world":
        # LGM's view 0 sits at azimuth 0, ours at cameras.azimuth_deg[0]
        return LGMFrame(rotation_y(-float(cameras.azimuth_deg[0])), scale)
    # R @ R_0 = I for the first camera's orientation R_0 (its c2w rotation), so R = R_0^T
    r0 = cameras.c2w(torch.float64)[0, :3, :3]
    return LGMFrame(r0.T.contiguous(), scale)


def lgm_camera_poses(cameras: MVCameras, frame: str = "first_view") -> torch.Tensor:
    """OpenGL camera-to-world float64 [V, 4, 4] of our cameras in LGM's frame (each at distance 1.5)."""
    fr = lgm_frame(cameras, frame)
    c2w = cameras.c2w(torch.float64)
    out = torch.zeros_like(c2w)
    out[:, :3, :3] = fr.rotation @ c2w[:, :3, :3]
    out[:, :3, 3] = fr.to_lgm(c2w[:, :3, 3])
    out[:, 3, 3] = 1.0
    return out


def plucker_rays(c2w: torch.Tensor, size: int, fov_deg: float = LGM_FOV_DEG) -> torch.Tensor:
    """Per-pixel Plücker coordinates (o x d, d) of OpenGL cameras: float32 [V, 6, size, size].

    Pixel (row i, column j) looks through its centre (j + 0.5, i + 0.5), row 0 at the top; ``d`` is unit length.
    """
    if c2w.ndim != 3 or tuple(c2w.shape[1:]) != (4, 4):
        raise ShapeError(f"camera poses must be [V, 4, 4], got {list(c2w.shape)}")
    c2w = c2w.to(torch.float64)
    focal = 0.5 * size / math.tan(math.radians(fov_deg) / 2.0)
    centres = (torch.arange(size, dtype=torch.float64, device=c2w.device) + 0.5 - 0.5 * size) / focal
    y, x = torch.meshgrid(-centres, centres, indexing="ij")  # camera y is up, image rows go down
    d_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # the camera looks down -z
    d = F.normalize(torch.einsum("vij,hwj->vhwi", c2w[:, :3, :3], d_cam), dim=-1)
    o = c2w[:, None, None, :3, 3].expand_as(d)
    return torch.cat([torch.cross(o, d, dim=-1), d], dim=-1).permute(0, 3, 1, 2).to(torch.float32).contiguous()


def lens_zoom(cameras: MVCameras) -> float:
    """How much larger our image content appears than in LGM's lens at the same centre: ``f_ours / f_lgm`` (> 1 when
    our field of view is narrower)."""
    return math.tan(math.radians(LGM_FOV_DEG) / 2.0) / math.tan(math.radians(cameras.fov_deg) / 2.0)


def resample_to_lgm_lens(images: torch.Tensor, cameras: MVCameras, size: int,
                         fill: Sequence[float] | torch.Tensor = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """Our views as LGM's camera (same centre and orientation, 49.1° lens, ``size`` px) sees them.

    Args:
        images: float [V, C, H, W] (square) in our cameras.
        fill: per-channel value where LGM's wider lens sees beyond our frame (the background).

    Returns:
        float32 [V, C, size, size]: pixel u' of LGM's image shows our pixel ``c + (u' - c) * f_ours / f_lgm``.
    """
    v, c, h, w = images.shape
    k = lens_zoom(cameras)  # LGM normalised coordinate -> ours
    # normalised device coordinates of LGM's pixel centres (align_corners=False: -1..1 spans the pixel edges)
    t = (torch.arange(size, dtype=torch.float64, device=images.device) + 0.5) / size * 2.0 - 1.0
    gy, gx = torch.meshgrid(t * k, t * k, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1).to(torch.float32)[None].expand(v, size, size, 2)
    fill_t = torch.as_tensor(fill, dtype=torch.float32, device=images.device).reshape(1, -1, 1, 1)
    # sample (image - fill) with zero padding and add fill back: outside the frame is exactly the fill value
    out = F.grid_sample(images.to(torch.float32) - fill_t, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    return out + fill_t


def check_lgm_views(rgb: torch.Tensor, cameras: MVCameras) -> None:
    """Four square float views [4, 3, H, W] in 0..1 with matching cameras, else :class:`ShapeError`."""
    if not isinstance(rgb, torch.Tensor) or rgb.ndim != 4 or rgb.shape[1] != 3:
        got = list(rgb.shape) if isinstance(rgb, torch.Tensor) else type(rgb).__name__
        raise ShapeError(f"LGM needs the views as float [4, 3, H, W] (front, right, back, left), got {got}")
    if rgb.shape[0] != LGM_NUM_VIEWS or cameras.num_views != LGM_NUM_VIEWS:
        raise ShapeError(f"LGM reconstructs from exactly {LGM_NUM_VIEWS} views (front, right, back, left), got "
                         f"{rgb.shape[0]} views and {cameras.num_views} cameras; sample four MVDream views")
    if rgb.shape[-1] != rgb.shape[-2] or rgb.shape[-1] < 32:
        raise ShapeError(f"LGM needs square views of at least 32 px, got {rgb.shape[-2]}x{rgb.shape[-1]} px; use "
                         "MVDream's 256x256 outputs")
    if not torch.is_floating_point(rgb) or not torch.isfinite(rgb).all():
        raise ShapeError("LGM views must be finite floats in 0..1 (NaN/inf or an integer dtype seen)")


def lgm_input(rgb: torch.Tensor, cameras: MVCameras, size: int = 256, frame: str = "first_view",
              background: Sequence[float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """The network input for one object: float32 [1, 4, 9, size, size].

    Args:
        rgb: float [4, 3, H, W] in 0..1, our views in camera order (front, right, back, left), on a flat
            ``background`` (LGM was trained on white).
        cameras: the views' cameras.
        size: LGM's input side (256 for the released weights).
        frame: "first_view" or "world" (module docstring).
    """
    check_lgm_views(rgb, cameras)
    views = resample_to_lgm_lens(rgb.clamp(0.0, 1.0), cameras, size, background)
    mean = torch.tensor(IMAGENET_MEAN, device=views.device).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=views.device).reshape(1, 3, 1, 1)
    rays = plucker_rays(lgm_camera_poses(cameras, frame).to(views.device), size)
    return torch.cat([(views - mean) / std, rays], dim=1)[None]
