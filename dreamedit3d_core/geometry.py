"""Pure point geometry shared by the cameras, the rasterizer and the source frame (torch only, any device).

Conventions (the ones ``cameras.MVCameras`` documents):

* Transforms are 4x4 affine matrices acting on column vectors, ``p' = M[:3, :3] @ p + M[:3, 3]``.
* Camera space is OpenGL: x right, y up, the camera looks down -z; **depth** is the view-axis distance ``d = -z``.
* Pinhole pixels: principal point at the image centre, square pixels, focal length ``f`` in pixels:
  ``col = f·x/d + W/2``, ``row = -f·y/d + H/2``; pixel ``(r, c)`` has its centre at ``(c + 0.5, r + 0.5)``, row 0 at the top.

These functions compute in the dtype they are given (callers choose float64 where precision matters), so a caller that
needs bit-identical results across refactors gets them.

The **internal frame** everything between OrthoRender and LiftToMesh works in is MVDream's: OpenGL y up, the asset's front
facing +x (MVDream's front camera), the object inside ``[-0.5, 0.5]^3``. :class:`SourceFrame` records where that frame sits in
an asset's own coordinates, so results can be written back in them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import ConfigError, ShapeError, check_keys

#: Axis names accepted for an asset's front and up directions.
AXES = {"+x": (1, 0, 0), "-x": (-1, 0, 0), "+y": (0, 1, 0), "-y": (0, -1, 0), "+z": (0, 0, 1), "-z": (0, 0, -1)}
#: glTF's convention for an asset's own axes: +Y up, front +Z.
GLTF_FRONT_AXIS, GLTF_UP_AXIS = "+z", "+y"


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


def _axis(name: str, what: str) -> torch.Tensor:
    if name not in AXES:
        raise ConfigError(f"{what} must be one of {sorted(AXES)}, got {name!r}")
    return torch.tensor(AXES[name], dtype=torch.float64)


def axes_rotation(front_axis: str = GLTF_FRONT_AXIS, up_axis: str = GLTF_UP_AXIS) -> torch.Tensor:
    """Rotation float64 [3, 3] taking an asset's ``front_axis`` to +x and its ``up_axis`` to +y (det +1).

    Raises:
        ConfigError: an unknown axis name, or front and up not perpendicular.
    """
    front, up = _axis(front_axis, "front_axis"), _axis(up_axis, "up_axis")
    if abs(float(front @ up)) > 0:
        raise ConfigError(f"front_axis {front_axis!r} and up_axis {up_axis!r} must be perpendicular")
    return torch.stack([front, up, torch.linalg.cross(front, up)])  # rows: R @ front = ex, R @ up = ey


def _apply(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``matrix`` (float64 [4, 4]) applied to points [..., 3] in float64, returned in ``points``' dtype."""
    if not isinstance(points, torch.Tensor) or points.shape[-1:] != (3,):
        seen = list(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise ShapeError(f"points must be a float tensor [..., 3], got {seen}")
    flat = points.reshape(-1, 3).to(torch.float64)
    out = transform_points(matrix.to(points.device), flat)
    return out.reshape(points.shape).to(points.dtype if points.is_floating_point() else torch.float64)


@dataclass(frozen=True, eq=False)
class SourceFrame:
    """Where our internal frame sits in a source asset's own coordinates (its axes and units as loaded).

    Attributes:
        to_internal: float64 [4, 4] affine transform from the source's coordinates to the internal frame: the
            normalisation ``load_asset`` applied (rotation of the asset's front to +x and up to +y, centring, uniform
            scale into ``[-0.5, 0.5]^3``). Kept on the CPU in float64 whatever device or dtype the data moves to.
    """

    to_internal: torch.Tensor = field(default_factory=lambda: torch.eye(4, dtype=torch.float64))

    def __post_init__(self):
        m = torch.as_tensor(self.to_internal).detach().to("cpu", torch.float64).clone()
        if m.shape != (4, 4):
            raise ShapeError(f"a source frame's to_internal must be a 4x4 matrix, got {list(m.shape)}")
        if not bool(torch.isfinite(m).all()) or not torch.equal(m[3], torch.tensor([0.0, 0.0, 0.0, 1.0],
                                                                                 dtype=torch.float64)):
            raise ShapeError(f"a source frame's to_internal must be a finite affine 4x4 (last row 0 0 0 1), got "
                             f"{m.tolist()}")
        if abs(float(torch.linalg.det(m[:3, :3]))) < 1e-300:
            raise ShapeError("a source frame's to_internal is singular (zero scale); it cannot be inverted")
        object.__setattr__(self, "to_internal", m)

    def __eq__(self, other) -> bool:
        return isinstance(other, SourceFrame) and torch.equal(self.to_internal, other.to_internal)

    __hash__ = None  # compared by the matrix's values, so not hashable

    @classmethod
    def gltf_unit(cls) -> "SourceFrame":
        """The frame used when there is no source: glTF's convention (+Y up, front +Z) at the internal unit size."""
        m = torch.eye(4, dtype=torch.float64)
        m[:3, :3] = axes_rotation(GLTF_FRONT_AXIS, GLTF_UP_AXIS)
        return cls(m)

    def to_source(self) -> torch.Tensor:
        """float64 [4, 4] from the internal frame back to the source's coordinates (the inverse of ``to_internal``)."""
        return torch.linalg.inv(self.to_internal)

    def to_source_frame(self, points: torch.Tensor) -> torch.Tensor:
        """Internal-frame points [..., 3] in the source's own coordinates (computed in float64, ``points``' dtype)."""
        return _apply(self.to_source(), points)

    def from_source_frame(self, points: torch.Tensor) -> torch.Tensor:
        """Source-coordinate points [..., 3] in the internal frame (computed in float64, ``points``' dtype)."""
        return _apply(self.to_internal, points)

    @property
    def mirrors(self) -> bool:
        """True when the transform flips handedness, so triangle winding must be reversed to keep faces outward."""
        return float(torch.linalg.det(self.to_internal[:3, :3])) < 0

    def to_dict(self) -> dict:
        return {"to_internal": [float(x) for x in self.to_internal.reshape(-1)]}

    @classmethod
    def from_dict(cls, data: dict) -> "SourceFrame":
        check_keys("source frame", data, ("to_internal",), required=("to_internal",))
        values = torch.as_tensor(data["to_internal"], dtype=torch.float64)
        if values.numel() != 16:
            raise ConfigError(f"a source frame's to_internal needs 16 numbers (row-major 4x4), got {values.numel()}")
        return cls(values.reshape(4, 4))
