"""Colour from the views onto a mesh: a texture atlas bake, vertex colours, and an optional texture refinement.

Per surface sample and view (``../shared/design/render-lift.md`` §4 steps 5-8): project, keep it where the lifted mesh's own
depth in that view says it is visible, weight by facing angle ``cos^p`` times the view's silhouette eroded and feathered
(so view boundaries blend instead of leaving seams), and average. Samples no view sees take the colour of the nearest seen
sample in 3D; texels outside the charts are padded from their neighbours so filtering never reads black.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
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
#: cKDTree options for the fills' nearest-neighbour queries over texels (on a few surfaces, parts 1e3 apart in a fourth
#: coordinate): with scipy's defaults (median splits, nodes shrunk to their points) the truck's 190k queries took 3.6 s,
#: with these 0.46 s; the neighbours found are the same (exact either way).
KD_TREE_OPTIONS = {"balanced_tree": False, "compact_nodes": False}
#: Nearest seen samples averaged (inverse distance) to colour an unseen one.
FILL_NEIGHBOURS = 4
#: Seen samples whose views' weight sum is at least this (seen fairly squarely, inside a silhouette's feathered core)
#: are the ones unseen samples are filled from where a part has them: colours at silhouette edges and grazing angles
#: carry some background (a recoloured box's lid filled from its sides' top rows came out pale).
FILL_SOURCE_WEIGHT = 0.5
#: A sample counts as seen by a view when it lies at most this far (world units) plus ``DEPTH_SLACK_PX`` pixels' size
#: behind the lifted mesh's depth at its pixel (rasterisation puts the depth of a sloped face a fraction of a pixel
#: off); more lets what is just in front paint it (0.01 + 3 px: the legs in front of a spider's recoloured body,
#: 26.8 -> 27.3 dB; truck RECOLOUR 31.3 -> 31.7; ADD/no edit unchanged).
DEPTH_SLACK = 0.005
DEPTH_SLACK_PX = 1.5
#: A sample of the source's surface counts as seen only when it also passes that test against the nearest surface
#: within this many pixels of its own: the edge of what is in front (the spider's legs over its recoloured body) mixes
#: into the pixels beside it, and the keep/change decision read those as changed. Held-out cameras: spider RECOLOUR
#: 27.6 -> 32.6 dB, truck 31.7 -> 32.5, kenney 44.4 -> 46.3, Fox 33.6 -> 33.5; ADD within 0.2 dB (kenney 33.6 -> 33.5).
#: On new faces too, ADD lost 0.4-0.8 dB (their unseen texels are filled, not decided); 2 px: spider 29.3.
OCCLUSION_EDGE_PX = 1
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
#: Misregistration, in pixels at 256 px, within which a view pixel still counts as showing the source's colour: the
#: views are compared with a render of the source at every shift up to this (generated views are never registered
#: exactly; the bench jitters them by 1-2 px).
CHANGE_SEARCH_PX = 2.0
#: A view pixel agrees with the source render when, after the view's gain fit and the shift search, the colours are
#: within this (max over channels, 0..1); a texel's change is the views' weighted mean of their pixels' differences.
CHANGE_TOLERANCE = 0.1
#: The per-view gain fit (view / source luminance, median over the source silhouette's core) is clamped to this range:
#: wide enough for a sampler's exposure drift (the bench jitters +-5 %), narrow enough that an edit which brightens the
#: whole object is not taken for exposure and undone.
GAIN_RANGE = (0.9, 1.1)
#: Width of the histogram bins the gain fit's most common ratio is found in.
GAIN_BIN = 0.005
#: Shaded views (a sampler's images are lit; so are OrthoRender's by default) compared with the unlit source: a view's
#: luminance ratio to the source is fitted as a quadratic in the source's camera-frame normal (:func:`view_shading`),
#: and that shading replaces the single gain when it explains at least this much more of the view's pixels (within
#: ``SHADING_INLIER`` of the ratio) than the gain does. Unlit views: the gain explains them, nothing changes.
SHADING_MIN_GAIN = 0.15
SHADING_INLIER = 0.04
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
                   cos_power: float = COS_POWER, check_interrupt: Optional[Callable[[], None]] = None,
                   face_normals: Optional[torch.Tensor] = None, edge_unseen: Optional[torch.Tensor] = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted colour of surface samples from several view sets, ``SAMPLE_CHUNK`` samples at a time.

    Args:
        points: float32 [K, 3] world positions on the surface; normals: float32 [K, 3] unit outward normals.
        check_interrupt: polled before every chunk (a 4096^2 texture has ~10M samples).
        face_normals: float32 [K, 3] the unit normal of each sample's face, or None. Given, a view faces a sample by
            the smaller of the two cosines: a smoothed normal leans a flat face's border towards its neighbours (a
            box's lid edge looks towards the side views), and the views "see" it edge-on, in their silhouette's
            outline colours.
        edge_unseen: bool [K] or None: the samples a view does not see within ``OCCLUSION_EDGE_PX`` of something in
            front of them (the source's surface, whose keep/change decision and fill read what the views see of it).

    Returns:
        (colour float32 [K, 3], weight sum float32 [K]).
    """
    colors = torch.empty(points.shape[0], 3, dtype=torch.float32, device=points.device)
    wsum = torch.empty(points.shape[0], dtype=torch.float32, device=points.device)
    for start in range(0, points.shape[0], SAMPLE_CHUNK):
        if check_interrupt is not None:
            check_interrupt()
        stop = start + SAMPLE_CHUNK
        colors[start:stop], wsum[start:stop] = _project_chunk(
            points[start:stop], normals[start:stop], view_sets, cos_power,
            None if face_normals is None else face_normals[start:stop],
            None if edge_unseen is None else edge_unseen[start:stop])
    return colors, wsum


def _project_chunk(points: torch.Tensor, normals: torch.Tensor, view_sets: Sequence[ViewSet],
                   cos_power: float, face_normals: Optional[torch.Tensor] = None,
                   edge_unseen: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    acc = torch.zeros(points.shape[0], 3, dtype=torch.float32, device=points.device)
    wsum = torch.zeros(points.shape[0], dtype=torch.float32, device=points.device)
    for vs in view_sets:
        h, w = vs.rgb.shape[-2:]
        pix, depth = vs.cameras.project(points, h, w)
        surface = vs.depth[:, None].to(torch.float32)
        d_surf = sample_images(surface, pix, depth, mode="nearest")[..., 0]
        px_size = depth / vs.cameras.focal_px(h)
        slack = DEPTH_SLACK + DEPTH_SLACK_PX * px_size
        visible = (d_surf > 0) & (depth <= d_surf + slack)
        if edge_unseen is not None and bool(edge_unseen.any()):
            # the depth test against the nearest surface within OCCLUSION_EDGE_PX: a sample just beside something in
            # front of it is mixed with that in the view (antialiasing, bilinear lookup)
            nearest = -F.max_pool2d(-torch.where(surface > 0, surface, torch.full_like(surface, float("inf"))),
                                    2 * OCCLUSION_EDGE_PX + 1, stride=1, padding=OCCLUSION_EDGE_PX)
            d_near = sample_images(nearest, pix, depth, mode="nearest")[..., 0]
            visible = visible & ((depth <= d_near + slack) | ~edge_unseen[None])
        if vs.on_surface_only:
            visible = visible & (depth >= d_surf - 0.01 - 3.0 * px_size)
        cam_pos = vs.cameras.c2w()[:, :3, 3].to(points.device)
        to_cam = F.normalize(cam_pos[:, None] - points[None], dim=-1)
        cos = (to_cam * normals[None]).sum(-1).clamp(min=0.0)
        if face_normals is not None:
            cos = torch.minimum(cos, (to_cam * face_normals[None]).sum(-1).clamp(min=0.0))
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
    return _colors_views_then_prior(points, normals, view_sets, prior_sets, check_interrupt)[:2]


def _colors_views_then_prior(points, normals, view_sets, prior_sets, check_interrupt, face_normals=None,
                             edge_unseen=None):
    """:func:`colors_with_prior`'s (colour, weight) and the views' own weight sum float32 [K] (0 where only the prior
    sees a sample)."""
    kw = dict(check_interrupt=check_interrupt, face_normals=face_normals, edge_unseen=edge_unseen)
    colors, wsum = project_colors(points, normals, view_sets, **kw)
    seen = wsum > MIN_WEIGHT
    if not prior_sets or bool(seen.all()):
        return colors, wsum, wsum
    unseen = (~seen).nonzero().squeeze(1)  # the prior is only asked where the views have nothing
    fn = None if face_normals is None else face_normals[unseen]
    p_colors, p_wsum = project_colors(points[unseen], normals[unseen], prior_sets, check_interrupt=check_interrupt,
                                      face_normals=fn, edge_unseen=None if edge_unseen is None else edge_unseen[unseen])
    colors, both = colors.clone(), wsum.clone()
    colors[unseen], both[unseen] = p_colors, p_wsum
    return colors, both, wsum


def _fill_sources(seen: torch.Tensor) -> torch.Tensor:
    """Indices of the ``seen`` samples a fill looks up, thinned out evenly to ``MAX_FILL_SOURCES`` (the fill is
    guesswork, it need not be dense)."""
    src = seen.nonzero().squeeze(1)
    if src.numel() > MAX_FILL_SOURCES:
        src = src[torch.linspace(0, src.numel() - 1, MAX_FILL_SOURCES, device=src.device).long()]
    return src


def fill_unseen(points: torch.Tensor, colors: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """Colour unseen samples from their nearest seen samples in 3D (inverse-distance mean of a few, via cKDTree)."""
    if bool(seen.all()) or not bool(seen.any()):
        return colors
    src = _fill_sources(seen)
    dst = (~seen).nonzero().squeeze(1)
    out = colors.clone()
    out[dst] = _inverse_distance_mean(points[src].cpu().double().numpy(), colors[src],
                                      points[dst].cpu().double().numpy())
    return out


def _inverse_distance_mean(src_coords: np.ndarray, src_colors: torch.Tensor, dst_coords: np.ndarray) -> torch.Tensor:
    """At each of ``dst_coords`` [Q, D], the inverse-distance mean of the colours of its ``FILL_NEIGHBOURS`` nearest
    ``src_coords`` [S, D] (cKDTree): float32 [Q, 3] on ``src_colors``' device."""
    from scipy.spatial import cKDTree

    q, k = len(dst_coords), min(FILL_NEIGHBOURS, len(src_coords))
    dist, idx = cKDTree(src_coords, **KD_TREE_OPTIONS).query(dst_coords, k=k, workers=-1)
    dist, idx = dist.reshape(q, k), idx.reshape(q, k)
    wgt = 1.0 / np.maximum(dist, 1e-6)
    wgt /= wgt.sum(1, keepdims=True)
    filled = (src_colors.cpu().numpy()[idx] * wgt[..., None]).sum(1)
    return torch.from_numpy(filled.astype(np.float32)).to(src_colors.device)


def pad_gutter(texture: torch.Tensor, covered: torch.Tensor, rings: int = GUTTER_TEXELS) -> torch.Tensor:
    """Grow chart colours into the empty atlas space ``rings`` texels deep; the rest takes the colour of the nearby
    charts, averaged over ever coarser blocks (:func:`_pull_fill`).

    Bilinear filtering and the mip levels then read chart-like colours across chart borders instead of black (a
    single mean colour there showed as a grey line along every chart edge from afar: the truck's atlas re-rendered
    at 29.3 dB mipmapped, 43.0 dB without mipmaps).

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
    out = acc[0, :3].permute(1, 2, 0)
    return torch.where(acc[0, 3, ..., None] > 0, out, _pull_fill(acc)[0].permute(1, 2, 0))


def _pull_fill(acc: torch.Tensor) -> torch.Tensor:
    """Colour everywhere from premultiplied colour and coverage ``acc`` [1, 4, H, W]: covered texels their own, the
    others the coverage-weighted mean of the smallest enclosing block (of 2^k texels) that holds any coverage, the
    blocks upsampled bilinearly (a push-pull fill). float [1, 3, H, W]."""
    levels = [acc]
    while min(levels[-1].shape[-2:]) > 1:
        levels.append(F.avg_pool2d(levels[-1], 2, ceil_mode=True))
    filled = levels[-1][:, :3] / levels[-1][:, 3:].clamp(min=1e-12)
    for level in reversed(levels[:-1]):
        up = F.interpolate(filled, size=level.shape[-2:], mode="bilinear", align_corners=False)
        own = level[:, :3] / level[:, 3:].clamp(min=1e-12)
        filled = torch.where(level[:, 3:] > 0, own, up)
    return filled


def faces_keeping_source(texture: torch.Tensor, uv: torch.Tensor, faces: torch.Tensor, source,
                         source_faces: torch.Tensor, check_interrupt: Optional[Callable[[], None]] = None
                         ) -> torch.Tensor:
    """bool [M]: the faces of a baked mesh whose every texel is the source's own colour (:func:`keep_source_texture`
    kept them all), i.e. the source faces the edit left alone; texture float [T, T, 3] baked over ``uv`` / ``faces``,
    ``source_faces`` int64 [M] each face's source face (-1: new)."""
    frags = rasterize_texture(uv, faces, texture.shape[0], check_interrupt)
    covered = frags.face_id[0] >= 0
    face = frags.face_id[0][covered]
    sf = source_faces.to(face.device)[face]
    src = source_surface_colors(source, sf.clamp(min=0), frags.bary[0][covered]).to(texture.device)
    differs = ((texture[covered] - src).abs().amax(-1) > 1e-6) | (sf < 0)
    changed = torch.zeros(faces.shape[0], dtype=torch.bool, device=face.device)
    changed[face[differs]] = True
    return (source_faces.to(face.device) >= 0) & ~changed


def write_into_image(image: torch.Tensor, baked: torch.Tensor, covered: torch.Tensor,
                     rings: int = GUTTER_TEXELS) -> torch.Tensor:
    """The ``image`` a texture was baked over with the bake written in: texels ``covered`` take ``baked`` [T, T, 3]
    (already padded by :func:`pad_gutter`), and so do the empty texels within ``rings`` of a texel whose colour the
    bake changed, so filtering across that chart's border reads its new colour rather than the old image's (a
    recoloured region otherwise shows the old colour along every chart seam). float32 [T, T, 3]."""
    image = image.to(device=baked.device, dtype=torch.float32)
    covered = covered.to(baked.device)
    changed = covered & ((baked - image).abs().amax(-1) > 1e-6)
    near = F.max_pool2d(changed[None, None].to(torch.float32), 2 * rings + 1, stride=1, padding=rings)[0, 0] > 0
    return torch.where((covered | near)[..., None], baked, image)


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


def change_from_source(rgb: torch.Tensor, background, source_rgb: torch.Tensor, source_alpha: torch.Tensor,
                       radius: int, gain: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per pixel of each view, how far it is from the source's render in the same camera: float32 [V, 1, H, W].

    The source render is scaled by the view's ``gain`` (:func:`view_gains`) and composited over the view's background;
    a pixel's change is the smallest colour difference (max over channels) to that render shifted by up to ``radius`` px
    in x and y. A view that shows the source a pixel or two off, or a few percent brighter, then agrees with it (change
    about 0), while a recoloured region does not (no shift finds its new colour in the source).

    Args:
        rgb: float [V, 3, H, W] the views in 0..1; background: an RGB triple or [V, 3] rows, each view's background;
        source_rgb: float [V, 3, H, W] the source rendered over black (coverage x colour); source_alpha: [V, 1, H, W];
        gain: float [V], or [V, 1, H, W] per pixel (:func:`view_shading`), or None (1).
    """
    v, _, h, w = rgb.shape
    rgb = rgb.to(torch.float32)
    bg = torch.as_tensor(background, dtype=torch.float32, device=rgb.device).reshape(-1, 3).expand(v, 3)
    bg = bg[..., None, None]
    src_rgb, src_a = source_rgb.to(rgb), source_alpha.to(rgb)
    if gain is not None:
        src_rgb = src_rgb * (gain.to(rgb) if gain.dim() == 4 else gain.to(rgb)[:, None, None, None])
    padded = F.pad(src_rgb + (1.0 - src_a) * bg, (radius,) * 4, mode="replicate")
    best = torch.full((v, 1, h, w), float("inf"), dtype=torch.float32, device=rgb.device)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            diff = (rgb - padded[..., dy:dy + h, dx:dx + w]).abs().amax(1, keepdim=True)
            best = torch.minimum(best, diff)
    return best


def _luminances(rgb: torch.Tensor, source_rgb: torch.Tensor, source_alpha: torch.Tensor, radius: int) -> tuple:
    """(view luminance, source luminance, both [V, 1, H, W]; the pixels their ratio is read at, bool [V, 1, H, W]: the
    source's silhouette eroded by ``radius`` + 1 px, where the source is not black)."""
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32, device=rgb.device)[None, :, None, None]
    core = (source_alpha > 0.5).to(torch.float32)
    core = -F.max_pool2d(-core, 2 * radius + 3, stride=1, padding=radius + 1) > 0.5
    lum_view, lum_src = (rgb * luma).sum(1, keepdim=True), (source_rgb * luma).sum(1, keepdim=True)
    return lum_view, lum_src, core & (lum_src > 0.05)


def view_gains(rgb: torch.Tensor, source_rgb: torch.Tensor, source_alpha: torch.Tensor, radius: int) -> torch.Tensor:
    """Each view's brightness relative to the source render, float32 [V] within ``GAIN_RANGE``: the most common ratio
    of their luminances over the source's silhouette eroded by ``radius`` + 1 px (so a misregistered outline does not
    count), refined to the median of the ratios near it. Pixels the edit left alone all share that ratio while those it
    changed scatter, so it holds even where most of a view changed (a median would not); 1 where too few pixels fall
    inside ``GAIN_RANGE``."""
    lum_view, lum_src, usable = _luminances(rgb, source_rgb, source_alpha, radius)
    lo, hi = GAIN_RANGE
    bins = int(round((hi - lo) / GAIN_BIN))
    gains = []
    for i in range(rgb.shape[0]):
        ratio = lum_view[i][usable[i]] / lum_src[i][usable[i]]
        ratio = ratio[(ratio >= lo) & (ratio <= hi)]
        if ratio.numel() < 16:
            gains.append(1.0)
            continue
        peak = lo + (int(torch.histc(ratio, bins, lo, hi).argmax()) + 0.5) * GAIN_BIN
        gains.append(float(ratio[(ratio - peak).abs() <= GAIN_BIN].median()))
    return torch.tensor(gains, dtype=torch.float32, device=rgb.device)


def _shading_basis(normals: torch.Tensor) -> torch.Tensor:
    """[N, 9]: a quadratic in camera-frame unit normals [N, 3] (the span of second-order spherical harmonics)."""
    x, y, z = normals.unbind(-1)
    return torch.stack([torch.ones_like(x), x, y, z, x * x, y * y, x * y, x * z, y * z], -1)


def view_shading(rgb: torch.Tensor, source_rgb: torch.Tensor, source_alpha: torch.Tensor, radius: int,
                 normals: Optional[torch.Tensor] = None, cameras: Optional[MVCameras] = None,
                 gain: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Each view's brightness relative to the unlit source render, per pixel: float32 [V, 1, H, W].

    The single gain of :func:`view_gains` everywhere, unless the view is shaded: then its luminance ratio to the source
    is a function of the surface's orientation to the camera, fitted per view as a quadratic in the source's
    camera-frame normal (robustly: the pixels an edit changed are outliers), and used where it explains
    ``SHADING_MIN_GAIN`` more of the pixels than the gain. Its value facing the camera must lie in ``GAIN_RANGE`` (the
    light darkens what turns away; an edit that darkens the whole object is still an edit).

    Args:
        rgb, source_rgb, source_alpha, radius: as :func:`view_gains`.
        normals: float [V, 3, H, W] the source render's world-frame normals (0 off the surface); cameras: the views'.
        gain: the views' :func:`view_gains` [V], when the caller has them.
    """
    v, _, h, w = rgb.shape
    gain = view_gains(rgb, source_rgb, source_alpha, radius) if gain is None else gain
    out = gain[:, None, None, None].expand(v, 1, h, w).clone()
    if normals is None or cameras is None:
        return out
    lum_view, lum_src, core = _luminances(rgb, source_rgb, source_alpha, radius)
    rotation = cameras.c2w(torch.float32).to(rgb.device)[:, :3, :3]
    for i in range(v):
        cam_normals = (normals[i].to(torch.float32).reshape(3, -1).t() @ rotation[i])  # [H*W, 3]
        ratio = (lum_view[i] / lum_src[i].clamp(min=1e-6)).reshape(-1)
        usable = core[i].reshape(-1) & (ratio > 0.1) & (ratio < 1.5)
        if int(usable.sum()) < 64:
            continue
        # a small least-squares problem: solved on the CPU whatever the views' device
        basis, target = _shading_basis(cam_normals[usable]).double().cpu(), ratio[usable].double().cpu()
        weights = torch.ones_like(target)
        for _ in range(4):  # Tukey's biweight: the edited pixels fall out of the fit
            sw = weights.sqrt()[:, None]
            coef = torch.linalg.lstsq(basis * sw, target[:, None] * sw).solution[:, 0]
            residual = target - basis @ coef
            scale = max(1.4826 * float(residual.abs().median()), 0.01)
            weights = (1.0 - (residual / (4.685 * scale)).clamp(-1.0, 1.0) ** 2) ** 2
        facing = float(coef[0] + coef[3])  # the normal (0, 0, 1): towards the camera
        shaded_fit = float(((target - basis @ coef).abs() <= SHADING_INLIER).double().mean())
        flat_fit = float(((target - float(gain[i])).abs() <= SHADING_INLIER).double().mean())
        if shaded_fit < flat_fit + SHADING_MIN_GAIN or not GAIN_RANGE[0] <= facing <= GAIN_RANGE[1]:
            continue
        shading = (_shading_basis(cam_normals).double() @ coef.to(cam_normals.device)).to(torch.float32)
        shading = shading.clamp(0.1, GAIN_RANGE[1])
        on = (source_alpha[i, 0] > 0).reshape(-1)
        out[i, 0].view(-1)[on] = shading[on]
    return out


def source_comparison(asset, source_faces: torch.Tensor, view_sets: Sequence[ViewSet]
                      ) -> Optional[tuple[list, list]]:
    """The views compared with renders of the source: (the view sets with each view's gain divided out, one view set
    per view set whose "colour" is :func:`change_from_source`'s map in its three channels and whose weights are the
    views', so :func:`project_colors` of it is a sample's weighted mean change). None when there is nothing to compare
    (no source face, no view set other than priors) or the views cannot be rendered alike (not square, or not a
    multiple of 8 px up to 1024).

    The source is rendered unlit with the lifted mesh's source faces only (``source_faces`` >= 0), as the views of an
    unchanged asset are, so a region the edit left alone compares equal however small its texture swatches are (a
    texel-by-texel comparison with the source's texture differs there: the render's mipmapping blurs them) and however
    the views are misregistered by a pixel or two. Dividing the gain out gives the re-baked regions the kept
    texture's exposure.
    """
    from ..render import render_views

    kept = torch.unique(source_faces[source_faces >= 0])
    if kept.numel() == 0 or all(vs.on_surface_only for vs in view_sets):
        return None
    subset = asset.with_faces(kept)
    normalised, change_sets = [], []
    for vs in view_sets:
        if vs.on_surface_only:
            normalised.append(vs)
            continue
        v, _, h, w = vs.rgb.shape
        if h != w or h % 8 or h > 1024:
            return None
        r = render_views(subset, vs.cameras, resolution=h, background=(0.0, 0.0, 0.0), lighting="unlit",
                         device=vs.rgb.device)
        radius = max(1, round(CHANGE_SEARCH_PX * h / 256))
        bg = torch.as_tensor(vs.background if vs.background is not None else (1.0, 1.0, 1.0), dtype=torch.float32,
                             device=vs.rgb.device).reshape(-1, 3).expand(v, 3)
        gain = view_gains(vs.rgb.to(torch.float32), r.rgb, r.alpha, radius)
        shading = view_shading(vs.rgb.to(torch.float32), r.rgb, r.alpha, radius, r.normals, vs.cameras, gain)
        change = change_from_source(vs.rgb, bg, r.rgb, r.alpha, radius, shading)
        mask = vs.weight_mask if vs.alpha is None else vs.weight_mask * (vs.alpha > 0.25)
        change_sets.append(ViewSet(change.expand(-1, 3, -1, -1), mask, vs.cameras, vs.depth, weight=vs.weight))
        g = gain[:, None, None, None]
        # the source's own pixels lose their shading (then they match its texture); changed ones only the gain (the
        # source's normals there are not the new surface's)
        g = torch.where((change <= CHANGE_TOLERANCE) & (r.alpha > 0.5), shading, g)
        # not clamped: the un-mixing of antialiased edges needs the background as scaled as the pixels it was mixed into
        normalised.append(replace(vs, rgb=vs.rgb.to(torch.float32) / g, background=bg / gain[:, None]))
    return normalised, change_sets


def keep_source_texture(source, face_ids: torch.Tensor, bary: torch.Tensor, colors: torch.Tensor, seen: torch.Tensor,
                        tolerance: Optional[float] = None, agreement: float = KEEP_TEXTURE_AGREEMENT,
                        points: Optional[torch.Tensor] = None, change: Optional[torch.Tensor] = None,
                        fill_from: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per component (source part), the source's own texture where the views agree with it, the views' colour elsewhere.

    Agreement is read from ``change`` when given (how far the views are from a render of the source there,
    :func:`source_comparison`: robust to misregistration and exposure), else from the views' colour against the
    source's colour texel by texel. A part is kept when at least ``agreement`` of its texels the views see are within
    ``tolerance`` (default ``CHANGE_TOLERANCE`` for ``change``, ``KEEP_TEXTURE_TOLERANCE`` for colours), or when no view
    sees it; its texels then take the source's colour, so unchanged parts keep their full-resolution texture from every
    angle instead of a four-view re-bake. Inside a kept part, seen texels that differ by more than
    ``KEEP_TEXTURE_CHANGED`` take the views' colour (a recoloured region of a single-part asset); in a part that is not
    kept, seen texels within ``tolerance`` still take the source's (what the edit left as it was; with ``change``, only
    when their colour is also within ``KEEP_TEXTURE_TOLERANCE`` of the source's).
    With ``points``, a texel no view sees follows its nearest seen texel of the same part: it takes the source's colour
    when that one kept it, else the inverse-distance mean of the nearest seen texels of that part which the edit
    changed (so an unseen top of a recoloured region takes the new colour, neither the old one nor a prior's).

    Args:
        face_ids: int64 [K] source face of each surface sample, -1 for samples on new faces (these keep ``colors``);
        bary: [K, 3]; colors: float [K, 3] the views' colour; seen: bool [K] whether a view sees it;
        points: float [K, 3] world positions of the samples, or None; change: float [K] (NaN where no view sees the
        sample), or None; fill_from: bool [K] the seen samples trusted as fill sources (seen squarely); a part with
        none of them fills from all its seen samples. None: all seen samples.

    Returns:
        (colours float32 [K, 3], seen bool [K] with samples given the source's or a filled colour marked seen, number
        of parts kept).
    """
    from_source = face_ids >= 0
    fid = face_ids.clamp(min=0)
    src = source_surface_colors(source, fid, bary).to(colors.device)
    part = source.part_ids.to(face_ids.device)[fid]
    if change is not None:
        diff = change.to(colors.device).nan_to_num(0.0)
        tolerance = CHANGE_TOLERANCE if tolerance is None else tolerance
    else:
        diff = (colors - src).abs().amax(-1)
        tolerance = KEEP_TEXTURE_TOLERANCE if tolerance is None else tolerance
    seen_src = seen & from_source
    close = (diff <= tolerance) & seen_src
    n_parts = source.num_parts
    seen_count = torch.bincount(part[seen_src], minlength=n_parts)
    close_count = torch.bincount(part[close], minlength=n_parts)
    kept_part = ((close_count >= agreement * seen_count) | (seen_count == 0)).to(part.device)
    if change is not None:
        # in an edited part, a pixel that agrees may show something in front of the texel that the edit left alone
        # (the torso over a recoloured arm's shoulder, within the depth test's tolerance): its own colour must agree too
        close = close & ((colors - src).abs().amax(-1) <= KEEP_TEXTURE_TOLERANCE)
    keep_seen = seen_src & torch.where(kept_part[part], diff <= KEEP_TEXTURE_CHANGED, close)
    keep = keep_seen | (from_source & ~seen & kept_part[part])
    out = colors
    unseen = from_source & ~seen & (seen_count[part] > 0)
    filled = torch.zeros_like(unseen)
    # only parts with a changed seen texel need the nearest-neighbour query: the others' unseen texels follow kept ones
    changed_part = torch.bincount(part[seen_src & ~keep_seen], minlength=n_parts) > 0
    if points is not None and bool((unseen & changed_part[part]).any()):
        in_changed = changed_part[part]
        follows_kept = ~in_changed | _nearest_seen_kept(points, part, seen_src & in_changed, keep_seen,
                                                        unseen & in_changed)
        keep = keep & ~unseen | (unseen & follows_kept)
        filled = unseen & ~follows_kept
        if bool(filled.any()):
            changed_seen = seen_src & ~keep_seen
            if fill_from is not None:
                trusted = changed_seen & fill_from
                has_trusted = torch.bincount(part[trusted], minlength=n_parts) > 0
                changed_seen = changed_seen & (fill_from | ~has_trusted[part])
            out = colors.clone()
            out[filled] = _fill_within_parts(points, part, colors, changed_seen, filled)
    return torch.where(keep[:, None], src, out), seen | keep | filled, int(kept_part.sum())


def _part_lifted(points: torch.Tensor, part: torch.Tensor, idx: torch.Tensor) -> np.ndarray:
    """Positions of the samples ``idx`` with their part id, far apart, as a fourth coordinate: a nearest-neighbour
    query then always lands on a sample of the same part (when that part has one)."""
    p = points[idx].cpu().double()
    return torch.cat([p, part[idx].cpu().double()[:, None] * 1e3], 1).numpy()


def _nearest_seen_kept(points: torch.Tensor, part: torch.Tensor, seen: torch.Tensor, kept: torch.Tensor,
                       query: torch.Tensor) -> torch.Tensor:
    """bool [K]: for the ``query`` samples, whether their nearest ``seen`` sample of the same part is ``kept``."""
    from scipy.spatial import cKDTree

    src = _fill_sources(seen)
    dst = query.nonzero().squeeze(1)
    tree = cKDTree(_part_lifted(points, part, src), **KD_TREE_OPTIONS)
    _, near = tree.query(_part_lifted(points, part, dst), workers=-1)
    out = torch.zeros_like(query)
    out[dst] = kept[src[torch.from_numpy(near).to(src.device)]]
    return out


def _fill_within_parts(points: torch.Tensor, part: torch.Tensor, colors: torch.Tensor, sources: torch.Tensor,
                       query: torch.Tensor) -> torch.Tensor:
    """Colours float32 [Q, 3] for the ``query`` samples: the inverse-distance mean of their ``FILL_NEIGHBOURS``
    nearest ``sources`` samples of the same part (``fill_unseen`` kept within parts)."""
    src = _fill_sources(sources)
    dst = query.nonzero().squeeze(1)
    return _inverse_distance_mean(_part_lifted(points, part, src), colors[src], _part_lifted(points, part, dst))


def _colors_keeping_source(points: torch.Tensor, normals: torch.Tensor, view_sets: Sequence[ViewSet],
                           prior_sets: Sequence[ViewSet], check_interrupt: Optional[Callable[[], None]],
                           face_normals: Optional[torch.Tensor], source: Optional[tuple],
                           occlusion_edges: bool = True) -> tuple[torch.Tensor, torch.Tensor, Optional[int]]:
    """Colour of surface samples from the views (the prior where none sees them) and, when the surface is (partly)
    the source's, the source's own colour where the edit left it alone (:func:`keep_source_texture`, agreement read
    from :func:`source_comparison`): one decision for texels and vertices.

    Args:
        source: None, or (the source asset, int64 [M] each lifted face's source face (-1: new), int64 [K] each
            sample's source face (-1: on a new face), float [K, 3] its barycentrics in that face).
        occlusion_edges: whether the source's samples beside something in front of them count as unseen
            (``OCCLUSION_EDGE_PX``). Vertex colours do not: a vertex is one sample for several faces, and those
            by an occluding edge (the spider's legs on its body) are its corners; unseen, they were filled from
            farther away (texture_size 0, RECOLOUR: spider 22.1 -> 21.6 dB, kenney 38.7 -> 37.9).

    Returns:
        (colour float32 [K, 3], seen bool [K] (by a view, the prior, or decided from the source), the number of source
        parts kept or None without a source).
    """
    compared = source_comparison(source[0], source[1], view_sets) if source is not None else None
    if compared is not None:
        view_sets = compared[0]
    # a kept surface's sample beside what is in front of it is left to the keep/change decision's fill
    on_source = None if source is None or not occlusion_edges else source[2] >= 0
    colors, wsum, views_wsum = _colors_views_then_prior(points, normals, view_sets, prior_sets, check_interrupt,
                                                        face_normals, on_source)
    seen = wsum > MIN_WEIGHT
    if source is None:
        return colors, seen, None
    asset, _, sample_faces, bary = source
    change = None
    if compared is not None:
        values, change_w = project_colors(points, normals, compared[1], check_interrupt=check_interrupt,
                                          face_normals=face_normals, edge_unseen=on_source)
        change = torch.where(change_w > MIN_WEIGHT, values[:, 0], torch.full_like(change_w, float("nan")))
    # what was kept or changed is read from the views only: the prior (renders of the source) always agrees
    colors, decided, kept_parts = keep_source_texture(asset, sample_faces, bary, colors, views_wsum > MIN_WEIGHT,
                                                      points=points, change=change,
                                                      fill_from=views_wsum >= FILL_SOURCE_WEIGHT)
    return colors, seen | decided, kept_parts


def vertex_source_samples(faces: torch.Tensor, source_faces: torch.Tensor, num_vertices: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each vertex as a point of the source's surface: (int64 [N] a source face it is a corner of, -1 when it is a
    corner of new faces only; float32 [N, 3] the barycentrics of that corner, one-hot)."""
    face_of = torch.full((num_vertices,), -1, dtype=torch.int64, device=faces.device)
    corner_of = torch.zeros(num_vertices, dtype=torch.int64, device=faces.device)
    on_source = (source_faces >= 0).nonzero().squeeze(1)
    for corner in range(3):  # any source face the vertex is a corner of: they all put the source's colour there
        face_of[faces[on_source, corner]] = source_faces[on_source]
        corner_of[faces[on_source, corner]] = corner
    return face_of, torch.nn.functional.one_hot(corner_of, 3).to(torch.float32)


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
    from ..render import face_normals

    face = frags.face_id[0][covered]
    face_nrm = face_normals(verts.to(torch.float32), faces)[face]
    sampled = None if source is None else (source[0], source[1], source[1][face], frags.bary[0][covered])
    colors, seen, kept_parts = _colors_keeping_source(pos, nrm, view_sets, prior_sets, check_interrupt, face_nrm,
                                                      sampled)
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
                       prior_sets: Sequence[ViewSet] = (), check_interrupt: Optional[Callable[[], None]] = None,
                       source: Optional[tuple] = None, faces: Optional[torch.Tensor] = None
                       ) -> tuple[torch.Tensor, dict]:
    """Per-vertex colours (the lighter alternative to a texture): float32 [N, 3] in 0..1 and stats.

    With ``source`` (the source asset, int64 [M] the source face of each of ``faces`` [M, 3], -1 for a new face), a
    vertex of a source face takes the same keep/change decision as a texel (:func:`keep_source_texture`): the
    source's own colour there (vertex colour, or its texture at the vertex's UV) where the edit left it alone."""
    pts, nrm = verts.to(torch.float32), normals.to(torch.float32)
    sampled = None
    if source is not None:
        sample_faces, bary = vertex_source_samples(faces, source[1].to(faces.device), verts.shape[0])
        sampled = (source[0], source[1], sample_faces, bary)
    colors, seen, kept_parts = _colors_keeping_source(pts, nrm, view_sets, prior_sets, check_interrupt, None, sampled,
                                                      occlusion_edges=False)
    colors = fill_unseen(pts, colors, seen).clamp(0.0, 1.0)
    stats = {"unseen_vertex_fraction": float((~seen).sum()) / max(verts.shape[0], 1)}
    if kept_parts is not None:
        stats["source_colour_parts"] = kept_parts
    return colors, stats


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
    from ..personalize.autograd import grad_enabled

    # ComfyUI runs every node under torch.inference_mode(): the optimisation leaves it, with tensors made outside it
    with grad_enabled():
        uv_img = interpolate(uv.to(torch.float32), faces, frags)
        inside = (frags.mask & (alpha[:, 0] > 0.5))[:, None].to(torch.float32)
        n_in = inside.sum().clamp(min=1.0)
        target = rgb.to(torch.float32).clone()
        param = texture.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([param], lr=lr)
        losses = []
        for step in range(steps):
            if progress is not None:
                progress.check_interrupt()
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
