"""MVDream's camera convention, and the render cameras that share it.

Conventions (bytedance/MVDream ``mvdream/camera_utils.py``; ``../shared/design/mvdream.md`` §3):

* World: OpenGL, y up. A camera at MVDream azimuth ``a`` and elevation ``e`` sits at
  ``(cos e · sin a, sin e, cos e · cos a)`` on the unit sphere: azimuth 0 is on +z, 90 on +x.
* Camera frame: OpenGL (x right, y up, looking down −z); c2w columns are [right, up, back, position].
* MVDream's 16-float camera input: the c2w left-multiplied by the blender swap ``(x, y, z) -> (x, -z, y)``
  (z-up world), flattened row-major with the bottom row ``0 0 0 1``.
* Our view order front, right, back, left = MVDream azimuths 90, 180, 270, 0 (``azimuth_start=90``): the
  asset's own front faces +x, where MVDream's front view camera sits.

Render cameras reuse exactly these orientations, placed at ``radius`` (not 1) and given a perspective
field of view; pixel centres are at +0.5, row 0 is the top of the image.

``MVCameras`` is the one home of the camera math every stage uses: ``world_to_camera`` (world -> each view's OpenGL
camera space), ``project`` (world -> pixel x = column, y = row, and view-axis depth) and ``unproject`` (pixel + depth ->
world), all computed in float64 with the pure formulas of ``geometry.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from .errors import ConfigError, ShapeError, check_keys
from .geometry import camera_to_pixels, pixels_to_camera, transform_points

NUM_VIEWS = 4
DEFAULT_ELEVATION_DEG = 15.0
#: Our view order front, right, back, left starts at MVDream azimuth 90.
PACK_AZIMUTH_START_DEG = 90.0
VIEW_NAMES = ("front", "right", "back", "left")
#: MVDream trained on renders with a field of view drawn from 15..60 degrees (bytedance/MVDream#12).
DEFAULT_FOV_DEG = 40.0
#: Half-size of the frame at the origin: MVDream-threestudio draws the camera distance as
#: (0.8..1.0)/tan(fovy/2); we use the middle. Assets are normalised into [-0.5, 0.5]^3.
DEFAULT_HALF_EXTENT_AT_ORIGIN = 0.9
#: Half-size of the cube assets are normalised into.
OBJECT_HALF_EXTENT = 0.5

_BLENDER_SWAP = torch.tensor(
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64
)


def _azimuths(num_views: int, azimuth_start: float, azimuth_span: float) -> torch.Tensor:
    # numpy.arange(start, start+span, span/num) as in MVDream; computed per index to avoid float drift
    step = azimuth_span / num_views
    return torch.tensor([azimuth_start + i * step for i in range(num_views)], dtype=torch.float64)


def look_at_c2w(position: torch.Tensor) -> torch.Tensor:
    """OpenGL camera-to-world matrices looking at the origin with up (0, 1, 0).

    Args:
        position: float [V, 3] camera centres (not on the y axis).

    Returns:
        float [V, 4, 4] with columns [right, up, back, position] (MVDream ``create_camera_to_world_matrix``).
    """
    position = position.to(torch.float64)
    back = torch.nn.functional.normalize(position, dim=-1)  # +z_cam points from target to camera
    up_world = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand_as(back)
    right = torch.nn.functional.normalize(torch.cross(up_world, back, dim=-1), dim=-1)
    up = torch.cross(back, right, dim=-1)
    c2w = torch.zeros(position.shape[0], 4, 4, dtype=torch.float64)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = up
    c2w[:, :3, 2] = back
    c2w[:, :3, 3] = position
    c2w[:, 3, 3] = 1.0
    return c2w


def orbit_c2w(elevation_deg: float, azimuth_deg: torch.Tensor, radius: float = 1.0) -> torch.Tensor:
    """MVDream OpenGL c2w for cameras on a sphere of ``radius`` (float64 [V, 4, 4])."""
    e = math.radians(elevation_deg)
    a = torch.deg2rad(azimuth_deg.to(torch.float64))
    pos = torch.stack(
        [math.cos(e) * torch.sin(a), torch.full_like(a, math.sin(e)), math.cos(e) * torch.cos(a)], dim=-1
    )
    return look_at_c2w(pos * radius)


def get_camera(
    num_views: int = 4,
    elevation: float = 15.0,
    azimuth_start: float = 0.0,
    azimuth_span: float = 360.0,
    blender_coord: bool = True,
) -> torch.Tensor:
    """MVDream's ``get_camera``: the camera input of the multi-view UNet.

    Same semantics and defaults as ``mvdream/camera_utils.py``. The pack calls it with
    ``azimuth_start=90`` so that its views are front, right, back, left.

    Returns:
        float32 [num_views, 16]: row-major flattened 4×4 c2w at unit distance (blender z-up world when
        ``blender_coord``).
    """
    if num_views < 1:
        raise ConfigError(f"num_views must be at least 1, got {num_views}")
    c2w = orbit_c2w(elevation, _azimuths(num_views, azimuth_start, azimuth_span), radius=1.0)
    if blender_coord:
        c2w = _BLENDER_SWAP @ c2w
    return c2w.reshape(num_views, 16).to(torch.float32)


def camera_embedding_for_batch(cameras: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Repeat per-view cameras [V, 16] for ``batch_size`` objects, view-contiguous (index = b·V + v)."""
    if cameras.ndim != 2 or cameras.shape[1] != 16:
        raise ShapeError(f"cameras must be [V, 16], got {tuple(cameras.shape)}")
    return cameras.repeat(batch_size, 1)


@dataclass(frozen=True)
class MVCameras:
    """The four (or V) cameras one object is seen with: MVDream's orientation plus a perspective lens.

    Attributes:
        elevation_deg: camera elevation above the horizon, degrees (MVDream default 15).
        azimuth_deg: float64 [V] MVDream azimuths (ours: 90, 180, 270, 0).
        fov_deg: vertical field of view of the render cameras, degrees.
        radius: distance of the render cameras from the origin (the MVDream embedding is always at 1).
    """

    elevation_deg: float = DEFAULT_ELEVATION_DEG
    azimuth_deg: torch.Tensor = field(
        default_factory=lambda: _azimuths(NUM_VIEWS, PACK_AZIMUTH_START_DEG, 360.0)
    )
    fov_deg: float = DEFAULT_FOV_DEG
    radius: float = 0.0  # 0 means the default framing distance for fov_deg: see framing_distance

    def __post_init__(self):
        az = torch.as_tensor(self.azimuth_deg, dtype=torch.float64).reshape(-1)
        object.__setattr__(self, "azimuth_deg", az)
        if not (1.0 <= self.fov_deg <= 120.0):
            raise ConfigError(f"fov_deg must be within 1..120 degrees, got {self.fov_deg}")
        if not (-89.0 <= self.elevation_deg <= 89.0):
            raise ConfigError(f"elevation_deg must be within -89..89 degrees, got {self.elevation_deg}")
        if self.radius == 0.0:
            object.__setattr__(self, "radius", framing_distance(self.fov_deg))
        if self.radius <= 0:
            raise ConfigError(f"radius must be positive, got {self.radius}")

    @classmethod
    def mvdream_default(cls, num_views: int = NUM_VIEWS, elevation_deg: float = DEFAULT_ELEVATION_DEG,
                        fov_deg: float = DEFAULT_FOV_DEG, radius: float = 0.0) -> "MVCameras":
        return cls(elevation_deg, _azimuths(num_views, PACK_AZIMUTH_START_DEG, 360.0), fov_deg, radius)

    @property
    def num_views(self) -> int:
        return int(self.azimuth_deg.shape[0])

    def select(self, views: Sequence[int]) -> "MVCameras":
        """The cameras of ``views`` (indices, in this order), with the same elevation, lens and distance."""
        index = [int(v) for v in views]
        if not index or any(not (0 <= v < self.num_views) for v in index):
            raise ShapeError(f"views {index} must be a non-empty list of indices in 0..{self.num_views - 1}")
        return MVCameras(self.elevation_deg, self.azimuth_deg[index], self.fov_deg, self.radius)

    def c2w(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """OpenGL camera-to-world [V, 4, 4] at ``radius``."""
        return orbit_c2w(self.elevation_deg, self.azimuth_deg, self.radius).to(dtype)

    def w2c(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """OpenGL world-to-camera [V, 4, 4] at ``radius``."""
        return torch.linalg.inv(orbit_c2w(self.elevation_deg, self.azimuth_deg, self.radius)).to(dtype)

    def embedding(self) -> torch.Tensor:
        """MVDream's [V, 16] camera input for these orientations (unit distance, blender frame)."""
        c2w = _BLENDER_SWAP @ orbit_c2w(self.elevation_deg, self.azimuth_deg, 1.0)
        return c2w.reshape(self.num_views, 16).to(torch.float32)

    def focal_px(self, height: int) -> float:
        """Focal length in pixels for an image ``height`` pixels tall (square pixels)."""
        return 0.5 * height / math.tan(math.radians(self.fov_deg) / 2.0)

    def positions(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Camera centres [V, 3] in world space."""
        return self.c2w(dtype)[:, :3, 3]

    def world_to_camera(self, points: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """World points into every view's OpenGL camera space (x right, y up, looking down -z; depth = -z).

        Args:
            points: float [N, 3] world positions.
            dtype: dtype of the result (default: ``points``' dtype); the transform is always computed in float64.

        Returns:
            float [V, N, 3] on ``points``' device.
        """
        _check_points(points)
        w2c = self.w2c(torch.float64).to(points.device)
        return transform_points(w2c, points.to(torch.float64)).to(points.dtype if dtype is None else dtype)

    def project(self, points: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Project world points into every view (the pinhole of ``geometry.camera_to_pixels`` with ``focal_px(height)``).

        Args:
            points: float [N, 3] world positions.

        Returns:
            (pixels float [V, N, 2] as (x = column, y = row) in pixel units, depth float [V, N], positive in front), in
            ``points``' dtype (computed in float64).
        """
        cam = self.world_to_camera(points, torch.float64)
        xy, depth = camera_to_pixels(cam, self.focal_px(height), height, width)
        return xy.to(points.dtype), depth.to(points.dtype)

    def unproject(self, pixels: torch.Tensor, depth: torch.Tensor, height: int, width: int,
                  view: Optional[int] = None) -> torch.Tensor:
        """World points seen at ``pixels`` with view-axis ``depth``: the inverse of :meth:`project`.

        Args:
            pixels: float [V, P, 2] (x = column, y = row, pixel centres at +0.5) in every view, or [P, 2] in ``view``.
            depth: float [V, P] (or [P]) view-axis distance, as :meth:`project` returns and ``MultiViewRender.depth``
                holds.
            view: the view index when ``pixels`` is [P, 2].

        Returns:
            float [V, P, 3] (or [P, 3]) world positions in ``pixels``' dtype (computed in float64).
        """
        one_view = view is not None
        want = 2 if one_view else 3
        if pixels.ndim != want or pixels.shape[-1] != 2 or tuple(depth.shape) != tuple(pixels.shape[:-1]):
            v = self.num_views
            layout = "[P, 2] with depth [P] (one view)" if one_view else f"[{v}, P, 2] with depth [{v}, P]"
            raise ShapeError(f"unproject needs pixels {layout}, got pixels {list(pixels.shape)} and depth "
                             f"{list(depth.shape)}")
        if one_view and not (0 <= int(view) < self.num_views):
            raise ShapeError(f"view {view} does not exist; these cameras have views 0..{self.num_views - 1}")
        if not one_view and pixels.shape[0] != self.num_views:
            raise ShapeError(f"pixels are given for {pixels.shape[0]} views, these cameras have {self.num_views}")
        cam = pixels_to_camera(pixels.to(torch.float64), depth.to(torch.float64), self.focal_px(height), height, width)
        c2w = self.c2w(torch.float64).to(pixels.device)
        return transform_points(c2w[int(view)] if one_view else c2w, cam).to(pixels.dtype)

    def to_dict(self) -> dict:
        return {
            "elevation_deg": float(self.elevation_deg),
            "azimuth_deg": [float(a) for a in self.azimuth_deg],
            "fov_deg": float(self.fov_deg),
            "radius": float(self.radius),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "MVCameras":
        keys = ("elevation_deg", "azimuth_deg", "fov_deg", "radius")
        check_keys("camera", data, keys, required=keys)
        return cls(data["elevation_deg"], torch.tensor(data["azimuth_deg"], dtype=torch.float64),
                   data["fov_deg"], data["radius"])


def framing_distance(fov_deg: float, half_extent_at_origin: float = DEFAULT_HALF_EXTENT_AT_ORIGIN) -> float:
    """Camera distance at which the frame shows ``±half_extent_at_origin`` at the origin.

    MVDream-threestudio places its cameras at ``(0.8..1.0) / tan(fovy/2)``; we take the middle, 0.9. Assets are
    normalised into the cube [-0.5, 0.5]³ (bounding radius ≤ 0.866 < 0.9), so every view frames the whole object
    with a margin, at any elevation.
    """
    return half_extent_at_origin / math.tan(math.radians(fov_deg) / 2.0)


def _check_points(points) -> None:
    if not isinstance(points, torch.Tensor):
        raise ShapeError(f"points must be a float tensor [N, 3] of world positions, got {type(points).__name__}")
    if points.ndim != 2 or points.shape[-1] != 3:
        raise ShapeError(f"points must be [N, 3], got {tuple(points.shape)}; flatten them to one row per point")


def view_names(num_views: int) -> Sequence[str]:
    return VIEW_NAMES if num_views == NUM_VIEWS else tuple(f"view{i}" for i in range(num_views))
