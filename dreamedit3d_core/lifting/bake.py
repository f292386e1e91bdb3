"""Colour from the views onto a mesh: a texture atlas bake, vertex colours, and an optional texture refinement.

Per surface sample and view (``../shared/design/render-lift.md`` §4 steps 5-8): project, keep it where the lifted mesh's own
depth in that view says it is visible, weight by facing angle ``cos^p`` times the view's silhouette eroded and feathered
(so view boundaries blend instead of leaving seams), and average. Samples no view sees take the colour of the nearest seen
sample in 3D; texels outside the charts are padded from their neighbours so filtering never reads black.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..cameras import MVCameras
from ..raster import Fragments, interpolate, rasterize_uv, rasterize_views
from .hull import sample_images

#: Exponent of the facing weight cos(angle between normal and view ray).
COS_POWER = 4.0
#: Weight sums below this count as "no view sees it".
MIN_WEIGHT = 1e-8
#: Seen samples used to fill unseen ones are thinned to at most this many (keeps the 3D nearest fill cheap).
MAX_FILL_SOURCES = 50_000
#: Nearest seen samples averaged (inverse distance) to colour an unseen one.
FILL_NEIGHBOURS = 4
#: Surface samples projected into the views per chunk (bounds memory, and the time between interruption checks).
SAMPLE_CHUNK = 1 << 18
#: A texel agrees with the source when the views' colour is within this of the source's (max over channels, 0..1).
KEEP_TEXTURE_TOLERANCE = 0.12
#: A component keeps the source's texture when at least this fraction of its seen texels agree (measured on unlit renders
#: of unedited parts: 0.67-0.94 of texels within 0.12, the renders' mipmapping blurs small texture swatches; a recoloured
#: part: 0.17).
KEEP_TEXTURE_AGREEMENT = 0.5
#: ... but a seen texel of a kept component that differs by more than this keeps the views' colour (it was edited).
KEEP_TEXTURE_CHANGED = 0.3
#: Texels rasterized per band of the UV layout (512 rows of a 4096^2 texture).
UV_BAND_TEXELS = 1 << 21
#: Texel rings of gutter padding around the charts.
GUTTER_TEXELS = 4


@dataclass(frozen=True)
class ViewSet:
    """Views to project colour from: rgb [V,3,H,W], soft weight mask [V,1,H,W], cameras, surface depth [V,H,W] for the
    visibility test (0 = nothing), a global weight (1 for the views, small for a prior), and optionally the coverage
    alpha [V,1,H,W] the rgb was composited with over ``background`` (an RGB triple, or [V, 3] rows: one per view;
    un-premultiplied when sampling, so antialiased silhouette pixels give the object's colour rather than a mix with the
    background)."""

    rgb: torch.Tensor
    weight_mask: torch.Tensor
    cameras: MVCameras
    depth: torch.Tensor
    weight: float = 1.0
    alpha: Optional[torch.Tensor] = None
    background: Optional[Union[Sequence[float], torch.Tensor]] = None
    #: True when ``depth`` is another surface's (a prior's: the source's): a sample counts as seen only ON that surface,
    #: not in front of it (new geometry in front of the source must not take the colour of what it hides).
    on_surface_only: bool = False


def render_fragments(verts: torch.Tensor, faces: torch.Tensor, cameras: MVCameras, height: int, width: int) -> Fragments:
    """Rasterize the mesh in every view of ``cameras`` (float32 world positions)."""
    return rasterize_views(verts.to(torch.float32), faces, cameras, (height, width))


def feathered_mask(alpha: torch.Tensor, erode_px: int, feather_px: int) -> torch.Tensor:
    """Silhouette eroded by ``erode_px`` then blurred over ``feather_px``: float [V, 1, H, W] in 0..1, 0 near the edge.

    Erosion keeps colour bleeding from the background and grazing edge pixels out of the bake; the blur turns the step at
    each view's silhouette into a ramp, which is what blends seams between views.
    """
    m = (alpha > 0.5).to(torch.float32)
    if erode_px > 0:
        m = -F.max_pool2d(-m, 2 * erode_px + 1, stride=1, padding=erode_px)
    if feather_px > 0:
        # two box blurs of radius r reach 2r outwards: erode by 2r first, so the ramp ends at the eroded edge and no
        # weight lands where bilinear colour samples would mix in the background
        r2 = 2 * feather_px
        m = -F.max_pool2d(-m, 2 * r2 + 1, stride=1, padding=r2)
        for _ in range(2):
            m = F.avg_pool2d(F.pad(m, (feather_px,) * 4, mode="replicate"), 2 * feather_px + 1, stride=1)
    return m


def project_colors(points: torch.Tensor, normals: torch.Tensor, view_sets: Sequence[ViewSet],
                   cos_power: float = COS_POWER, check_interrupt: Optional[Callable[[], None]] = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted colour of surface samples from several view sets, ``SAMPLE_CHUNK`` samples at a time.

    Args:
        points: float32 [K, 3] world positions on the surface; normals: float32 [K, 3] unit outward normals.
        check_interrupt: polled before every chunk (a 4096^2 texture has ~10M samples).

    Returns:
        (colour float32 [K, 3], weight sum float32 [K]).
    """
    colors = torch.empty(points.shape[0], 3, dtype=torch.float32, device=points.device)
    wsum = torch.empty(points.shape[0], dtype=torch.float32, device=points.device)
    for start in range(0, points.shape[0], SAMPLE_CHUNK):
        if check_interrupt is not None:
            check_interrupt()
        stop = start + SAMPLE_CHUNK
        colors[start:stop], wsum[start:stop] = _project_chunk(points[start:stop], normals[start:stop], view_sets,
                                                              cos_power)
    return colors, wsum


def _project_chunk(points: torch.Tensor, normals: torch.Tensor, view_sets: Sequence[ViewSet],
                   cos_power: float) -> tuple[torch.Tensor, torch.Tensor]:
    acc = torch.zeros(points.shape[0], 3, dtype=torch.float32, device=points.device)
    wsum = torch.zeros(points.shape[0], dtype=torch.float32, device=points.device)
    for vs in view_sets:
        h, w = vs.rgb.shape[-2:]
        pix, depth = vs.cameras.project(points, h, w)
        d_surf = sample_images(vs.depth[:, None].to(torch.float32), pix, depth, mode="nearest")[..., 0]
        px_size = depth / vs.cameras.focal_px(h)
        visible = (d_surf > 0) & (depth <= d_surf + 0.01 + 3.0 * px_size)
        if vs.on_surface_only:
            visible = visible & (depth >= d_surf - 0.01 - 3.0 * px_size)
        cam_pos = vs.cameras.c2w()[:, :3, 3].to(points.device)
        to_cam = F.normalize(cam_pos[:, None] - points[None], dim=-1)
        cos = (to_cam * normals[None]).sum(-1).clamp(min=0.0)
        mask_w = sample_images(vs.weight_mask.to(torch.float32), pix, depth)[..., 0]
        wgt = cos.pow(cos_power) * mask_w * visible * vs.weight  # [V, K]
        col = sample_images(vs.rgb.to(torch.float32), pix, depth)  # [V, K, 3]
        if vs.alpha is not None and vs.background is not None:
            # rgb = a * colour + (1 - a) * background at antialiased edges: solve for colour where coverage is enough
            a = sample_images(vs.alpha.to(torch.float32), pix, depth)
            bg = torch.as_tensor(vs.background, dtype=col.dtype, device=col.device)
            bg = bg[:, None] if bg.ndim == 2 else bg  # one colour per view [V, 3] -> [V, 1, 3]
            unmixed = ((col - (1.0 - a) * bg) / a.clamp(min=1e-6)).clamp(0.0, 1.0)
            col = torch.where(a > 0.25, unmixed, col)
            wgt = wgt * (a[..., 0] > 0.25)
        acc += (wgt[..., None] * col).sum(0)
        wsum += wgt.sum(0)
    return acc / wsum.clamp(min=1e-12)[:, None], wsum


def colors_with_prior(points: torch.Tensor, normals: torch.Tensor, view_sets: Sequence[ViewSet],
                      prior_sets: Sequence[ViewSet] = (), check_interrupt: Optional[Callable[[], None]] = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour from the views where any view sees a sample; from the prior views (the source) only where none does.

    A prior blended in at a small weight still tinted samples the views see at grazing angles (measured: a flat white
    object re-rendered at 41 dB instead of exactly), so it is a fallback, not a blend.

    Returns:
        (colour float32 [K, 3], weight float32 [K]: the views' weight sum, or the prior's where the views have none).
    """
    colors, wsum = project_colors(points, normals, view_sets, check_interrupt=check_interrupt)
    if not prior_sets:
        return colors, wsum
    seen = wsum > MIN_WEIGHT
    if bool(seen.all()):
        return colors, wsum
    p_colors, p_wsum = project_colors(points, normals, prior_sets, check_interrupt=check_interrupt)
    return torch.where(seen[:, None], colors, p_colors), torch.where(seen, wsum, p_wsum)


def _fill_sources(seen: torch.Tensor) -> torch.Tensor:
    """Indices of the ``seen`` samples a fill looks up, thinned out evenly to ``MAX_FILL_SOURCES`` (the fill is
    guesswork, it need not be dense)."""
    src = seen.nonzero().squeeze(1)
    if src.numel() > MAX_FILL_SOURCES:
        src = src[torch.linspace(0, src.numel() - 1, MAX_FILL_SOURCES, device=src.device).long()]
    return src


def fill_unseen(points: torch.Tensor, colors: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """Colour unseen samples from their nearest seen samples in 3D (inverse-distance mean of a few, via cKDTree)."""
    from scipy.spatial import cKDTree

    if bool(seen.all()) or not bool(seen.any()):
        return colors
    src = _fill_sources(seen)
    dst = (~seen).nonzero().squeeze(1)
    tree = cKDTree(points[src].cpu().double().numpy())
    k = min(FILL_NEIGHBOURS, src.numel())
    dist, idx = tree.query(points[dst].cpu().double().numpy(), k=k, workers=-1)
    dist, idx = dist.reshape(len(dst), k), idx.reshape(len(dst), k)
    wgt = 1.0 / np.maximum(dist, 1e-6)
    wgt /= wgt.sum(1, keepdims=True)
    src_cols = colors[src].cpu().numpy()
    filled = (src_cols[idx] * wgt[..., None]).sum(1)
    out = colors.clone()
    out[dst] = torch.from_numpy(filled.astype(np.float32)).to(colors.device)
    return out


def pad_gutter(texture: torch.Tensor, covered: torch.Tensor, rings: int = GUTTER_TEXELS) -> torch.Tensor:
    """Grow chart colours into the empty atlas space ``rings`` texels deep; the rest takes the mean chart colour.

    Bilinear filtering and the first mip levels then read chart-like colours across chart borders instead of black.

    Args:
        texture: float [T, T, 3]; covered: bool [T, T] texels inside a chart.
    """
    if not bool(covered.any()):
        return texture
    m = covered[None, None].to(texture.dtype)
    acc = torch.cat([texture.permute(2, 0, 1)[None] * m, m], 1)  # colour premultiplied by coverage, and coverage
    for _ in range(rings):
        grown = F.avg_pool2d(acc, 3, stride=1, padding=1)
        new = (grown[:, 3:] > 0) & (acc[:, 3:] == 0)
        acc = torch.where(new, torch.cat([grown[:, :3] / grown[:, 3:].clamp(min=1e-12), torch.ones_like(m)], 1), acc)
    mean = texture[covered].mean(0)
    out = acc[0, :3].permute(1, 2, 0)
    return torch.where(acc[0, 3, ..., None] > 0, out, mean.expand_as(out))


def rasterize_texture(uv: torch.Tensor, faces: torch.Tensor, texture_size: int,
                      check_interrupt: Optional[Callable[[], None]] = None) -> Fragments:
    """``raster.rasterize_uv`` of a ``texture_size`` square texture, ``UV_BAND_TEXELS`` texels at a time in horizontal
    bands (bounded memory, and ``check_interrupt`` polled between bands: a 4096^2 layout takes tens of seconds).

    Each band is the same raster with its rows shifted (v remapped so the band's first row is row 0), so the pixel
    centres and the lowest-face rule are those of one full-size call.
    """
    rows_per_band = max(1, UV_BAND_TEXELS // texture_size)
    if rows_per_band >= texture_size:
        return rasterize_uv(uv, faces, texture_size)
    u = uv.to(torch.float64)
    parts = []
    for row0 in range(0, texture_size, rows_per_band):
        if check_interrupt is not None:
            check_interrupt()
        band = min(rows_per_band, texture_size - row0)
        # rasterize_uv puts v at row (1 - v) * H: for the band, (1 - v') * band = (1 - v) * T - row0
        v_band = 1.0 - ((1.0 - u[:, 1]) * texture_size - row0) / band
        parts.append(rasterize_uv(torch.stack([u[:, 0], v_band], -1), faces, (band, texture_size)))
    return Fragments(face_id=torch.cat([p.face_id for p in parts], 1), bary=torch.cat([p.bary for p in parts], 1),
                     depth=torch.cat([p.depth for p in parts], 1))


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals float32 [N, 3] (outward for outward winding)."""
    v = verts.to(torch.float32)
    fn = torch.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]], dim=-1)
    n = torch.zeros_like(v).index_add_(0, faces.reshape(-1), fn.repeat_interleave(3, dim=0))
    return F.normalize(n, dim=-1)


def source_surface_colors(source, face_ids: torch.Tensor, bary: torch.Tensor) -> torch.Tensor:
    """The source asset's own unlit colour at surface points given as (source face, barycentrics): base colour x vertex
    colour x texture (bilinear), as the render stage shades it. float32 [K, 3]."""
    from ..render import sample_textures

    fid = face_ids.to(source.faces.device)
    colour = source.face_base_color[fid].to(torch.float32)
    corners = source.faces[fid]  # [K, 3]
    w = bary.to(torch.float32)[..., None]
    if source.vertex_colors is not None:
        colour = colour * (source.vertex_colors.to(torch.float32)[corners] * w).sum(1)
    if source.uv is not None and source.textures:
        uv = (source.uv.to(torch.float32)[corners] * w).sum(1)
        colour = colour * sample_textures(source, fid, uv)
    return colour.clamp(0.0, 1.0)


def keep_source_texture(source, face_ids: torch.Tensor, bary: torch.Tensor, colors: torch.Tensor, seen: torch.Tensor,
                        tolerance: float = KEEP_TEXTURE_TOLERANCE, agreement: float = KEEP_TEXTURE_AGREEMENT,
                        points: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per component (source part), the source's own texture where the views agree with it, the views' colour elsewhere.

    A part is kept when at least ``agreement`` of its texels the views see are within ``tolerance`` (max over channels)
    of the source's colour, or when no view sees it; its texels then take the source's colour, so unchanged parts keep
    their full-resolution texture from every angle instead of a four-view re-bake. Inside a kept part, seen texels that
    differ by more than ``KEEP_TEXTURE_CHANGED`` take the views' colour (a recoloured region of a single-part asset); in
    a part that is not kept, seen texels within ``tolerance`` still take the source's (what the edit left as it was).
    With ``points``, a texel no view sees follows its nearest seen texel of the same part: the source's colour when
    that one kept it, else the views' fill (so an unseen top of a recoloured region is not left in the old colour).

    Args:
        face_ids: int64 [K] source face of each surface sample, -1 for samples on new faces (these keep the views'
            colour); bary: [K, 3]; colors: float [K, 3] the views' colour; seen: bool [K] whether a view sees it;
        points: float [K, 3] world positions of the samples, or None.

    Returns:
        (colours float32 [K, 3], seen bool [K] with samples given the source's colour marked seen, number of parts kept).
    """
    from_source = face_ids >= 0
    fid = face_ids.clamp(min=0)
    src = source_surface_colors(source, fid, bary).to(colors.device)
    part = source.part_ids.to(face_ids.device)[fid]
    diff = (colors - src).abs().amax(-1)
    seen_src = seen & from_source
    close = (diff <= tolerance) & seen_src
    n_parts = source.num_parts
    seen_count = torch.bincount(part[seen_src], minlength=n_parts)
    close_count = torch.bincount(part[close], minlength=n_parts)
    kept_part = ((close_count >= agreement * seen_count) | (seen_count == 0)).to(part.device)
    keep_seen = seen_src & torch.where(kept_part[part], diff <= KEEP_TEXTURE_CHANGED, close)
    keep = keep_seen | (from_source & ~seen & kept_part[part])
    unseen = from_source & ~seen & (seen_count[part] > 0)
    if points is not None and bool(unseen.any()):
        keep = keep & ~unseen | (unseen & _nearest_seen_kept(points, part, seen_src, keep_seen, unseen))
    return torch.where(keep[:, None], src, colors), seen | keep, int(kept_part.sum())


def _nearest_seen_kept(points: torch.Tensor, part: torch.Tensor, seen: torch.Tensor, kept: torch.Tensor,
                       query: torch.Tensor) -> torch.Tensor:
    """bool [K]: for the ``query`` samples, whether their nearest ``seen`` sample of the same part is ``kept``."""
    from scipy.spatial import cKDTree

    src = _fill_sources(seen)
    dst = query.nonzero().squeeze(1)
    # parts far apart in a fourth coordinate: the nearest seen sample is always one of the same part
    def lifted(idx):
        p = points[idx].cpu().double()
        return torch.cat([p, part[idx].cpu().double()[:, None] * 1e3], 1).numpy()

    _, near = cKDTree(lifted(src)).query(lifted(dst), workers=-1)
    out = torch.zeros_like(query)
    out[dst] = kept[src[torch.from_numpy(near).to(src.device)]]
    return out


def bake_texture(verts: torch.Tensor, faces: torch.Tensor, normals: torch.Tensor, uv: torch.Tensor,
                 view_sets: Sequence[ViewSet], texture_size: int, fallback_colors: Optional[torch.Tensor] = None,
                 check_interrupt: Optional[Callable[[], None]] = None,
                 prior_sets: Sequence[ViewSet] = (), source=None) -> tuple[torch.Tensor, dict]:
    """Bake the views into a ``texture_size`` square texture over the mesh's UV layout.

    Args:
        verts: float [N, 3]; faces: int64 [M, 3]; normals: float [N, 3] unit vertex normals (taken from the mesh before its
            UV seams were cut, so they are continuous); uv: float [N, 2] in 0..1 (v = 0 at the bottom).
        fallback_colors: float [N, 3] per-vertex colours (already filled where no view sees them); unseen texels take
            their interpolation. None: unseen texels take the nearest seen texel in 3D instead (slower).
        prior_sets: views of the source used only where no view in ``view_sets`` sees a texel.
        source: (the source asset, int64 [M] the source face of each face, -1 for a new face) when the mesh is (partly)
            the source's: its own texture is kept where the views agree with it (:func:`keep_source_texture`).

    Returns:
        (texture float32 [T, T, 3] in 0..1, row 0 at the top (v = 1); stats with ``unseen_texel_fraction``).
    """
    frags = rasterize_texture(uv, faces, texture_size, check_interrupt)
    covered = frags.face_id[0] >= 0
    pos = interpolate(verts.to(torch.float32), faces, frags)[0][covered]
    nrm = F.normalize(interpolate(normals.to(torch.float32), faces, frags)[0][covered], dim=-1)
    if check_interrupt is not None:
        check_interrupt()
    colors, wsum = colors_with_prior(pos, nrm, view_sets, prior_sets, check_interrupt)
    seen = wsum > MIN_WEIGHT
    kept_parts = None
    if source is not None:
        asset, source_faces = source
        colors, seen, kept_parts = keep_source_texture(asset, source_faces[frags.face_id[0][covered]],
                                                       frags.bary[0][covered], colors, seen, points=pos)
    if check_interrupt is not None:
        check_interrupt()
    if fallback_colors is not None:
        # fill at vertex level (render-lift.md §4: the texel-level 3D nearest fill was most of the bake's time)
        fill = interpolate(fallback_colors.to(torch.float32), faces, frags)[0][covered]
        colors = torch.where(seen[:, None], colors, fill)
    else:
        colors = fill_unseen(pos, colors, seen)
    texture = torch.zeros(texture_size, texture_size, 3, dtype=torch.float32, device=verts.device)
    texture[covered] = colors.clamp(0.0, 1.0)
    texture = pad_gutter(texture, covered)
    n_cov = int(covered.sum())
    stats = {"unseen_texel_fraction": float((~seen).sum()) / max(n_cov, 1), "chart_texel_fraction": n_cov / texture_size ** 2}
    if kept_parts is not None:
        stats["source_texture_parts"] = kept_parts
    return texture, stats


def bake_vertex_colors(verts: torch.Tensor, normals: torch.Tensor, view_sets: Sequence[ViewSet],
                       prior_sets: Sequence[ViewSet] = (), check_interrupt: Optional[Callable[[], None]] = None
                       ) -> tuple[torch.Tensor, dict]:
    """Per-vertex colours (the lighter alternative to a texture): float32 [N, 3] in 0..1 and stats."""
    colors, wsum = colors_with_prior(verts.to(torch.float32), normals.to(torch.float32), view_sets, prior_sets,
                                     check_interrupt)
    seen = wsum > MIN_WEIGHT
    colors = fill_unseen(verts.to(torch.float32), colors, seen).clamp(0.0, 1.0)
    return colors, {"unseen_vertex_fraction": float((~seen).sum()) / max(verts.shape[0], 1)}


def sample_texture(texture: torch.Tensor, uv_image: torch.Tensor) -> torch.Tensor:
    """Bilinear texture lookup: texture [T, T, 3] (row 0 = v 1), uv_image [V, H, W, 2] -> [V, 3, H, W]."""
    grid = torch.stack([uv_image[..., 0] * 2.0 - 1.0, 1.0 - uv_image[..., 1] * 2.0], -1)
    tex = texture.permute(2, 0, 1)[None].expand(uv_image.shape[0], -1, -1, -1)
    return F.grid_sample(tex, grid.to(texture.dtype), mode="bilinear", padding_mode="border", align_corners=False)


def refine_texture(texture: torch.Tensor, uv: torch.Tensor, faces: torch.Tensor, frags: Fragments, rgb: torch.Tensor,
                   alpha: torch.Tensor, steps: int, lr: float = 0.005, progress=None) -> tuple[torch.Tensor, list]:
    """Optimise the texture so the mesh rendered in the input views matches them (L1 inside both silhouettes).

    The rasterisation is held fixed (``frags`` of the lifted mesh in the input views); only the texture changes, through
    ``grid_sample``. Texels no view pixel reads keep their baked colour.

    Returns:
        (texture float32 [T, T, 3] in 0..1, per-step losses).
    """
    uv_img = interpolate(uv.to(torch.float32), faces, frags)
    inside = (frags.mask & (alpha[:, 0] > 0.5))[:, None].to(torch.float32)
    n_in = inside.sum().clamp(min=1.0)
    target = rgb.to(torch.float32)
    param = texture.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([param], lr=lr)
    losses = []
    for step in range(steps):
        if progress is not None:
            progress.check_interrupt()
        with torch.enable_grad():
            pred = sample_texture(param, uv_img)
            loss = ((pred - target).abs() * inside).sum() / (3.0 * n_in)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        with torch.no_grad():
            param.clamp_(0.0, 1.0)
        losses.append(float(loss.detach()))
        if progress is not None:
            progress.update(step + 1, steps, None, stage="refine_texture", loss=losses[-1])
    return param.detach(), losses


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """PSNR in dB of two [.., 3, H, W] images in 0..1 over ``mask`` [.., 1, H, W]."""
    m = mask.to(torch.float32).expand_as(a)
    mse = float(((a - b) ** 2 * m).sum() / m.sum().clamp(min=1.0))
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))
