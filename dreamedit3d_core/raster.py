"""A small exact z-buffer triangle rasterizer in pure torch (CPU and CUDA).

Chosen by measurement over GL, Embree and the CUDA-only rasterizers (``../shared/design/render-lift.md`` §1-2): it needs no
package beyond torch, runs on whatever device the vertices are on, and matches Embree ray casting to the pixel.

How it works, per view:

1. Project camera-space vertices (OpenGL: x right, y up, looking down -z) to pixels: ``col = f·x/d + W/2``,
   ``row = -f·y/d + H/2`` with ``d = -z``; pixel ``(r, c)`` has its centre at ``(c + 0.5, r + 0.5)``
   (``geometry.pinhole_pixels``, as ``MVCameras.project``). :func:`rasterize_views` starts from world positions and
   ``MVCameras``; :func:`rasterize` from camera-space positions and a focal length.
2. For every triangle, the screen-space edge functions divided by the vertex depths (``q_i = λ_i / d_i``) are affine in the
   pixel position; their per-triangle plane coefficients are computed once in float64.
3. Triangles are processed in chunks whose bounding boxes hold at most ``max_pairs`` pixels (bounded memory for 10^6
   faces). For every triangle and pixel row, the span of pixel centres inside all three edges (``q_i >= 0``, inclusive
   with a 1e-9 px slack, so shared edges never leave gaps) is solved in closed form; each covered pixel is written to a
   z-buffer with one ``scatter_reduce(amin)`` of a 64-bit key ``(float32 depth bits << 32) | triangle index``. Positive float32 bit patterns sort
   like the floats, so the key picks the nearest surface and, on exact depth ties, the lowest face index: the result is
   deterministic and the same on CPU and CUDA up to float rounding at ties.
4. The winning triangle's perspective-correct barycentrics ``b_i = q_i / Σq`` and depth ``1 / Σq`` are evaluated once per pixel.

Two-sided, no culling. Triangles with a vertex at or behind the near plane are dropped, not clipped (cameras here look at the
object from outside it); degenerate (zero screen area) triangles cover nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence, Union

import torch

from .errors import ShapeError
from .geometry import pinhole_pixels

if TYPE_CHECKING:
    from .cameras import MVCameras

#: Vertices closer to the camera than this (in camera units) drop their triangle.
NEAR_PLANE = 1e-4
#: Default cap on (triangle, pixel) pairs tested at once: ~0.2 GB of temporaries on CPU.
DEFAULT_MAX_PAIRS = 1 << 21
_NO_HIT = torch.iinfo(torch.int64).max


@dataclass(frozen=True)
class Fragments:
    """What each pixel sees.

    Attributes:
        face_id: int64 [V, H, W] index of the visible face, -1 where nothing is hit.
        bary: float32 [V, H, W, 3] perspective-correct barycentric weights of the face's three vertices (0 where no hit).
        depth: float32 [V, H, W] positive view-axis distance of the visible surface, 0 where no hit.
    """

    face_id: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        """bool [V, H, W]: pixels that see a face."""
        return self.face_id >= 0


def _check_faces(faces: torch.Tensor, num_vertices: int) -> torch.Tensor:
    if not isinstance(faces, torch.Tensor) or faces.ndim != 2 or faces.shape[1] != 3:
        raise ShapeError(f"faces must be an integer tensor [M, 3], got {getattr(faces, 'shape', type(faces).__name__)}")
    if faces.is_floating_point():
        raise ShapeError(f"faces must be integer, got {faces.dtype}")
    faces = faces.long()
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= num_vertices):
        raise ShapeError(f"faces index vertices outside 0..{num_vertices - 1}")
    return faces


@dataclass(frozen=True)
class _TrianglePlanes:
    """The triangles of one view that can cover a pixel, with their screen-space plane equations.

    Attributes:
        index: int64 [T] face index of each kept triangle, ascending (so ties go to the lowest face index).
        coef: float64 [T, 3 (a, b, c), 3 (vertex)]: ``q_i(px, py) = a_i px + b_i py + c_i = lambda_i / d_i``.
        sum_q: float64 [T, 3]: the plane of ``sum_i q_i = 1 / depth``.
        col0, col1, row0: int64 [T] first and last pixel column and first pixel row of the bounding box.
        n_rows: int64 [T] pixel rows of the bounding box.
    """

    index: torch.Tensor
    coef: torch.Tensor
    sum_q: torch.Tensor
    col0: torch.Tensor
    col1: torch.Tensor
    row0: torch.Tensor
    n_rows: torch.Tensor


def _triangle_planes(xy: torch.Tensor, inv_d: torch.Tensor, faces: torch.Tensor, height: int, width: int
                     ) -> Optional[_TrianglePlanes]:
    """Plane coefficients of the triangles of one view (``xy`` [N, 2], ``inv_d`` [N]); None when none can cover a pixel.

    Dropped: zero or non-finite screen area, a vertex at or behind the near plane (``inv_d <= 0``), a bounding box
    between pixel centres.
    """
    tri = xy[faces]  # [M, 3, 2]
    tinv = inv_d[faces]  # [M, 3]
    x, y = tri[..., 0], tri[..., 1]
    # edge i is opposite vertex i; lambda_i(p) = ((x_j - px)(y_k - py) - (y_j - py)(x_k - px)) / area
    j, k = [1, 2, 0], [2, 0, 1]
    area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (y[:, 1] - y[:, 0]) * (x[:, 2] - x[:, 0])
    xmin = torch.ceil(x.min(1).values - 0.5).clamp(min=0)
    xmax = torch.floor(x.max(1).values - 0.5).clamp(max=width - 1)
    ymin = torch.ceil(y.min(1).values - 0.5).clamp(min=0)
    ymax = torch.floor(y.max(1).values - 0.5).clamp(max=height - 1)
    valid = (area != 0) & (tinv > 0).all(1) & (xmax >= xmin) & (ymax >= ymin) & torch.isfinite(area)
    idx = valid.nonzero().squeeze(1)  # ascending face order, so the key's tie-break is the lowest face index
    if idx.numel() == 0:
        return None
    x, y, area, tinv = x[idx], y[idx], area[idx], tinv[idx]
    # coefficients of q_i = lambda_i / d_i = a_i * px + b_i * py + c_i (float64: exact enough that shared edges agree)
    a = (y[:, j] - y[:, k]) / area[:, None] * tinv
    b = (x[:, k] - x[:, j]) / area[:, None] * tinv
    c = (x[:, j] * y[:, k] - y[:, j] * x[:, k]) / area[:, None] * tinv
    coef = torch.stack([a, b, c], dim=1)  # [T, 3 (a,b,c), 3 (vertex)]
    row0 = ymin[idx].long()
    return _TrianglePlanes(index=idx, coef=coef, sum_q=coef.sum(2), col0=xmin[idx].long(), col1=xmax[idx].long(),
                           row0=row0, n_rows=ymax[idx].long() - row0 + 1)


def _row_spans(planes: _TrianglePlanes, begin: int, end: int, row_starts: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One span per (triangle, pixel row) of triangles ``begin:end``: the pixel centres on the row inside all three edges.

    Returns:
        (triangle int64 [S] (position in ``planes``), row int64 [S], first covered column int64 [S],
        covered pixel count int64 [S], 0 for an empty span).
    """
    device = planes.coef.device
    nr = planes.n_rows[begin:end]
    n_spans = int(nr.sum())
    span_tri = torch.repeat_interleave(torch.arange(begin, end, device=device), nr, output_size=n_spans)
    py = planes.row0[span_tri] + torch.arange(n_spans, device=device) - (row_starts - row_starts[begin])[span_tri]
    yc = py.to(torch.float64) + 0.5
    lo = planes.col0[span_tri].to(torch.float64) + 0.5
    hi = planes.col1[span_tri].to(torch.float64) + 0.5
    cf = planes.coef[span_tri]  # [S, 3, 3]
    for vtx in range(3):  # q = a * x + s >= 0 with s = b * y + c
        a_v = cf[:, 0, vtx]
        s_v = cf[:, 1, vtx] * yc + cf[:, 2, vtx]
        bound = -s_v / torch.where(a_v == 0, torch.ones_like(a_v), a_v)
        lo = torch.where(a_v > 0, torch.maximum(lo, bound), lo)
        hi = torch.where(a_v < 0, torch.minimum(hi, bound), hi)
        hi = torch.where((a_v == 0) & (s_v < 0), lo - 1.0, hi)
    # slack of 1e-9 px keeps centres exactly on a shared edge in both triangles (no pinholes from rounding)
    px_lo = torch.ceil(lo - 0.5 - 1e-9).long()
    n_px = (torch.floor(hi - 0.5 + 1e-9).long() - px_lo + 1).clamp(min=0)
    return span_tri, py, px_lo, n_px


def _zbuffer(planes: _TrianglePlanes, height: int, width: int, max_pairs: int) -> torch.Tensor:
    """int64 [H * W] z-buffer of keys ``(float32 depth bits << 32) | triangle`` (``_NO_HIT`` where nothing is hit).

    Triangles go in chunks whose bounding boxes hold at most ``max_pairs`` pixels (bounded memory).
    """
    device = planes.coef.device
    counts = (planes.col1 - planes.col0 + 1) * planes.n_rows  # bounding-box area: an upper bound of the pixels covered
    zbuf = torch.full((height * width,), _NO_HIT, dtype=torch.int64, device=device)
    cum_cpu = counts.cumsum(0).cpu()
    row_starts = planes.n_rows.cumsum(0) - planes.n_rows
    n_tri, begin = planes.index.numel(), 0
    while begin < n_tri:
        base = int(cum_cpu[begin - 1]) if begin else 0
        end = int(torch.searchsorted(cum_cpu, base + max_pairs, right=True))
        end = min(max(end, begin + 1), n_tri)
        span_tri, py, px_lo, n_px = _row_spans(planes, begin, end, row_starts)
        # the covered pixels: depth from sum_i q_i, written with the nearest-then-lowest-face key
        n_pix = int(n_px.sum())
        if n_pix:
            span = torch.repeat_interleave(torch.arange(span_tri.numel(), device=device), n_px, output_size=n_pix)
            px = px_lo[span] + torch.arange(n_pix, device=device) - (n_px.cumsum(0) - n_px)[span]
            tri = span_tri[span]
            pyy = py[span]
            sq = planes.sum_q[tri]
            qs = sq[:, 0] * (px.to(torch.float64) + 0.5) + sq[:, 1] * (pyy.to(torch.float64) + 0.5) + sq[:, 2]
            ok = qs > 0
            d32 = (1.0 / qs[ok]).to(torch.float32)
            key = (d32.view(torch.int32).to(torch.int64) << 32) | tri[ok]
            zbuf.scatter_reduce_(0, pyy[ok] * width + px[ok], key, reduce="amin", include_self=True)
        begin = end
    return zbuf


def _rasterize_screen(
    xy: torch.Tensor, inv_d: torch.Tensor, faces: torch.Tensor, height: int, width: int, max_pairs: int
) -> Fragments:
    """Z-buffer triangles given in pixel coordinates.

    Args:
        xy: float64 [V, N, 2] pixel positions (x = column, y = row; pixel centres at +0.5).
        inv_d: float64 [V, N] 1 / depth per vertex (all ones for an affine, depth-less layout); <= 0 marks a vertex to drop.
        faces: int64 [M, 3].
    """
    device = xy.device
    num_views = xy.shape[0]
    face_id = torch.full((num_views, height, width), -1, dtype=torch.int64, device=device)
    bary = torch.zeros((num_views, height, width, 3), dtype=torch.float32, device=device)
    depth = torch.zeros((num_views, height, width), dtype=torch.float32, device=device)
    if faces.shape[0] == 0:
        return Fragments(face_id, bary, depth)
    max_pairs = max(int(max_pairs), height * width)  # one triangle may cover the whole image
    for v in range(num_views):
        planes = _triangle_planes(xy[v], inv_d[v], faces, height, width)
        if planes is None:
            continue
        zbuf = _zbuffer(planes, height, width, max_pairs)
        # the winning triangle's perspective-correct barycentrics and depth, once per pixel
        pix = (zbuf != _NO_HIT).nonzero().squeeze(1)
        t = zbuf[pix] & 0xFFFFFFFF
        cf = planes.coef[t]
        pyc = torch.div(pix, width, rounding_mode="floor").to(torch.float64) + 0.5
        pxc = (pix % width).to(torch.float64) + 0.5
        # re-evaluate at the pixel centre, clamped: the inclusive test lets q_i be -0.0 on an edge
        q = (cf[:, 0] * pxc[:, None] + cf[:, 1] * pyc[:, None] + cf[:, 2]).clamp(min=0)
        qs = q.sum(1, keepdim=True)
        face_id[v].view(-1)[pix] = planes.index[t]
        bary[v].view(-1, 3)[pix] = (q / qs).to(torch.float32)
        depth[v].view(-1)[pix] = (1.0 / qs.squeeze(1)).to(torch.float32)
    return Fragments(face_id, bary, depth)


def rasterize(
    verts_cam: torch.Tensor,
    faces: torch.Tensor,
    height: int,
    width: int,
    focal_px: float,
    max_pairs: int = DEFAULT_MAX_PAIRS,
) -> Fragments:
    """Rasterize triangles seen by pinhole cameras (principal point at the image centre, square pixels).

    Args:
        verts_cam: float [V, N, 3] (or [N, 3] for one view) vertex positions in each view's OpenGL camera space
            (x right, y up, the camera looks down -z), e.g. ``MVCameras.world_to_camera(points)``; from world positions
            use :func:`rasterize_views`.
        faces: int [M, 3] vertex indices (winding is ignored: two-sided).
        height, width: image size in pixels; row 0 is the top of the image.
        focal_px: focal length in pixels (``MVCameras.focal_px(height)``).
        max_pairs: cap on (triangle, pixel) candidates tested at once; bounds memory, not the result.

    Returns:
        Fragments with face_id [V, H, W], bary [V, H, W, 3] (perspective-correct), depth [V, H, W] (= -z_cam, 0 = no hit),
        on ``verts_cam``'s device.
    """
    if verts_cam.ndim == 2:
        verts_cam = verts_cam[None]
    if verts_cam.ndim != 3 or verts_cam.shape[-1] != 3:
        raise ShapeError(f"verts_cam must be [V, N, 3], got {list(verts_cam.shape)}")
    if height < 1 or width < 1:
        raise ShapeError(f"image size must be positive, got {height}x{width}")
    faces = _check_faces(faces.to(verts_cam.device), verts_cam.shape[1])
    p = verts_cam.to(torch.float64)
    d = -p[..., 2]
    ok = d > NEAR_PLANE
    safe_d = torch.where(ok, d, torch.ones_like(d))  # dropped vertices get a finite placeholder position
    xy = pinhole_pixels(p[..., :2], safe_d, focal_px, height, width)
    inv_d = torch.where(ok, 1.0 / safe_d, torch.zeros_like(d))
    return _rasterize_screen(xy, inv_d, faces, int(height), int(width), max_pairs)


def rasterize_views(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    cameras: "MVCameras",
    resolution: Union[int, Sequence[int]],
    views: Optional[Sequence[int]] = None,
    max_pairs: int = DEFAULT_MAX_PAIRS,
) -> Fragments:
    """Rasterize a world-space mesh in the views of ``cameras`` (the one path from world to fragments).

    Args:
        vertices: float [N, 3] world positions (taken to each view with ``MVCameras.world_to_camera``, in float64,
            then back in ``vertices``' dtype).
        faces: int [M, 3] vertex indices (two-sided).
        cameras: the cameras; their ``focal_px(height)`` sets the lens.
        resolution: image size, an int (square) or (height, width).
        views: indices of the views to rasterize, in this order (default all); e.g. one at a time to bound memory.
        max_pairs: see :func:`rasterize`.

    Returns:
        Fragments [len(views), H, W] on ``vertices``' device.
    """
    height, width = (int(resolution), int(resolution)) if isinstance(resolution, int) else \
        (int(resolution[0]), int(resolution[1]))
    if views is not None:
        cameras = cameras.select(views)
    return rasterize(cameras.world_to_camera(vertices), faces, height, width, cameras.focal_px(height), max_pairs)


def rasterize_uv(
    uv: torch.Tensor, faces: torch.Tensor, size: Union[int, Sequence[int]], max_pairs: int = DEFAULT_MAX_PAIRS
) -> Fragments:
    """Rasterize a mesh's UV layout into texture space (for baking).

    Texel ``(row, col)`` of a ``H x W`` texture covers ``u in [col/W, (col+1)/W]`` and ``v in [1 - (row+1)/H, 1 - row/H]``:
    v = 0 is the bottom row of the image (glTF/trimesh convention, as in ``MeshAsset.uv``).

    Args:
        uv: float [N, 2] in 0..1.
        faces: int [M, 3] (the faces indexing ``uv``).
        size: texture size, an int or (height, width).

    Returns:
        Fragments with V = 1: face_id [1, H, W], bary [1, H, W, 3] (affine in UV), depth [1, H, W] = 1 where covered.
        Where UV islands overlap, the lowest face index wins.
    """
    if uv.ndim != 2 or uv.shape[1] != 2:
        raise ShapeError(f"uv must be [N, 2], got {list(uv.shape)}")
    h, w = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise ShapeError(f"texture size must be positive, got {h}x{w}")
    faces = _check_faces(faces.to(uv.device), uv.shape[0])
    u = uv.to(torch.float64)
    xy = torch.stack([u[:, 0] * w, (1.0 - u[:, 1]) * h], -1)[None]
    return _rasterize_screen(xy, torch.ones_like(xy[..., 0]), faces, h, w, max_pairs)


def interpolate(attr: torch.Tensor, faces: torch.Tensor, fragments: Fragments) -> torch.Tensor:
    """Interpolate per-vertex attributes with the fragments' barycentrics (differentiable in ``attr``).

    Args:
        attr: float [N, C] shared by all views, or [V, N, C] per view.
        faces: int [M, 3] the faces the fragments index.
        fragments: from :func:`rasterize` / :func:`rasterize_uv`.

    Returns:
        [V, H, W, C] in ``attr``'s dtype, 0 where nothing is hit.
    """
    num_views, h, w = fragments.face_id.shape
    if attr.ndim == 2:
        attr = attr[None].expand(num_views, -1, -1)
    if attr.ndim != 3 or attr.shape[0] != num_views:
        raise ShapeError(f"attr must be [N, C] or [{num_views}, N, C], got {list(attr.shape)}")
    faces = faces.to(attr.device).long()
    fid = fragments.face_id.to(attr.device)
    hit = fid >= 0
    out = attr.new_zeros(num_views, h, w, attr.shape[-1])
    view = torch.arange(num_views, device=attr.device)[:, None, None].expand_as(fid)[hit]
    corner = faces[fid[hit]]  # [P, 3]
    vals = attr[view[:, None], corner]  # [P, 3, C]
    weights = fragments.bary.to(attr.device)[hit].to(attr.dtype)
    out[hit] = (vals * weights[..., None]).sum(1)
    return out


def face_values(values: torch.Tensor, fragments: Fragments, fill: Optional[float] = 0) -> torch.Tensor:
    """Gather per-face values ([M, ...]) into the image ([V, H, W, ...]); ``fill`` where nothing is hit."""
    fid = fragments.face_id.to(values.device)
    out = values[fid.clamp(min=0)]
    hit = (fid >= 0).reshape(fid.shape + (1,) * (values.ndim - 1))
    return torch.where(hit, out, torch.as_tensor(fill, dtype=values.dtype, device=values.device))
