"""OrthoRender: the four MVDream views of a :class:`~dreamedit3d_core.types.MeshAsset`, on the asset's device.

Cameras are exactly ``cameras.MVCameras`` (MVDream's orientations at the framing distance, pinhole with the given fov, pixel
centres at +0.5, row 0 at the top). Per view:

* colour and alpha: rasterized at ``ssaa`` x the resolution and box-filtered down (antialiasing), composited over
  ``background``. Colour = face base colour x interpolated vertex colour x texture sample (trilinear mipmapped, the
  level from the UV step between neighbouring samples; UV v = 0 at the image bottom, wrap = repeat as glTF's default
  sampler), times the lighting: ``"ambient_diffuse"`` is
  ``AMBIENT + (1 - AMBIENT) * |n . view|`` with a light at the camera (every view lit alike, two-sided), ``"unlit"`` is 1.
* depth (view-axis distance, 0 = background), world-space geometric face normals (turned towards the camera, since faces
  are two-sided; 0 = background) and part ids (-1 = background): at 1 sample per pixel, so they stay exact.
"""

from __future__ import annotations

from enum import Enum
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .cameras import MVCameras
from .errors import ConfigError
from .geometry import pixels_to_camera
from .raster import Fragments, face_values, interpolate, rasterize_views
from .types import MeshAsset, MultiViewRender


class LightingMode(str, Enum):
    """How the views are lit (a ``str`` enum: the plain strings compare equal and are accepted everywhere)."""

    #: ``AMBIENT + (1 - AMBIENT) * |n . view|`` with the light at the camera: shape reads, every view lit alike.
    AMBIENT_DIFFUSE = "ambient_diffuse"
    #: Base colour x vertex colour x texture only: flat albedo (what lifting and texture baking want to see).
    UNLIT = "unlit"


#: The lighting options in order (the members, which are also their plain string values).
LIGHTING_MODES = tuple(LightingMode)
#: Share of the light that does not depend on the surface orientation in "ambient_diffuse".
AMBIENT = 0.45
MAX_RESOLUTION = 1024


def face_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Unit geometric normals [M, 3] of the faces (right-hand winding); 0 for degenerate faces."""
    tri = vertices[faces]
    n = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    return F.normalize(n, dim=-1, eps=1e-20)


def _check_options(resolution: int, ssaa: int, lighting: Union[str, LightingMode], background
                   ) -> tuple[tuple, LightingMode]:
    """The background as 3 floats and the lighting as a :class:`LightingMode`, after checking every option."""
    if not isinstance(resolution, int) or resolution % 8 or not (8 <= resolution <= MAX_RESOLUTION):
        raise ConfigError(f"resolution must be a multiple of 8 from 8 to {MAX_RESOLUTION}, got {resolution!r}")
    if not isinstance(ssaa, int) or not (1 <= ssaa <= 4):
        raise ConfigError(f"ssaa must be an integer 1..4 (samples per pixel side), got {ssaa!r}")
    if lighting not in LIGHTING_MODES:
        raise ConfigError(f"lighting must be one of {[m.value for m in LightingMode]}, got {lighting!r}")
    bg = tuple(float(c) for c in background)
    if len(bg) != 3 or not all(0.0 <= c <= 1.0 for c in bg):
        raise ConfigError(f"background must be 3 numbers in 0..1, got {background!r}")
    return bg, LightingMode(lighting)


def _mip_pyramid(texture: torch.Tensor, device) -> list:
    """Box-filtered levels [1, 3, h, w] of a texture [H, W, 3], halving down to 1 texel."""
    level = texture.to(device, torch.float32).permute(2, 0, 1)[None]
    levels = [level]
    while max(level.shape[-2:]) > 1:
        level = F.avg_pool2d(level, 2, ceil_mode=True, count_include_pad=False)
        levels.append(level)
    return levels


def _bilinear(level: torch.Tensor, st: torch.Tensor) -> torch.Tensor:
    """Bilinear sample [P, 3] of one level at wrapped UVs ``st`` [P, 2] (v = 0 at the bottom)."""
    # grid_sample with align_corners=False: -1 is the left/top edge of the image, so u -> 2u-1 and v -> 1-2v
    grid = torch.stack([2.0 * st[:, 0] - 1.0, 1.0 - 2.0 * st[:, 1]], dim=-1).view(1, 1, -1, 2)
    return F.grid_sample(level, grid.to(level.dtype), mode="bilinear", padding_mode="border",
                         align_corners=False)[0, :, 0].t()


def _texel_footprint(uv_img: torch.Tensor, hit: torch.Tensor) -> torch.Tensor:
    """UV change [H, W] (in UV units) from one sample to the next, the smaller of the forward and backward differences
    that stay on the object (so UV seams and silhouettes do not blur), per image axis, the larger axis kept."""
    big = torch.full_like(uv_img[..., 0], float("inf"))

    def axis_step(dim: int) -> torch.Tensor:
        d = (uv_img.narrow(dim, 1, uv_img.shape[dim] - 1) - uv_img.narrow(dim, 0, uv_img.shape[dim] - 1)).norm(dim=-1)
        ok = hit.narrow(dim, 1, hit.shape[dim] - 1) & hit.narrow(dim, 0, hit.shape[dim] - 1)
        d = torch.where(ok, d, torch.full_like(d, float("inf")))
        fwd, bwd = big.clone(), big.clone()
        fwd.narrow(dim, 0, d.shape[dim]).copy_(d)
        bwd.narrow(dim, 1, d.shape[dim]).copy_(d)
        step = torch.minimum(fwd, bwd)
        return torch.where(torch.isinf(step), torch.zeros_like(step), step)

    return torch.maximum(axis_step(0), axis_step(1))


def sample_textures(asset: MeshAsset, fid: torch.Tensor, uv: torch.Tensor,
                    footprint: Optional[torch.Tensor] = None, pyramids: Optional[list] = None) -> torch.Tensor:
    """Texture colour [P, 3] for pixels hitting faces ``fid`` [P] at ``uv`` [P, 2] (1 where untextured).

    Without ``footprint``: bilinear. With it (UV units per sample, [P]) and ``pyramids`` (from :func:`_mip_pyramid`, one
    per texture): trilinear mipmapping, the level chosen so one sample covers about one texel, so minified textures
    are averaged instead of aliased.
    """
    out = torch.ones(fid.shape[0], 3, dtype=torch.float32, device=fid.device)
    if asset.face_textures is None or not asset.textures:
        return out
    tex_of_pixel = asset.face_textures[fid]
    for t, texture in enumerate(asset.textures):
        sel = (tex_of_pixel == t).nonzero().squeeze(1)
        if sel.numel() == 0:
            continue
        st = uv[sel]
        st = st - torch.floor(st)  # REPEAT wrap (glTF default sampler)
        if footprint is None:
            out[sel] = _bilinear(texture.to(fid.device, torch.float32).permute(2, 0, 1)[None], st)
            continue
        levels = pyramids[t]
        texels = footprint[sel] * float(max(texture.shape[0], texture.shape[1]))
        lod = torch.log2(texels.clamp(min=1.0)).clamp(max=len(levels) - 1)
        base = lod.floor().long()
        frac = (lod - base)[:, None]
        colour = torch.empty(sel.shape[0], 3, dtype=torch.float32, device=fid.device)
        for lvl in base.unique().tolist():
            m = (base == lvl).nonzero().squeeze(1)
            lower = _bilinear(levels[lvl], st[m])
            upper = _bilinear(levels[min(lvl + 1, len(levels) - 1)], st[m])
            colour[m] = lower + (upper - lower) * frac[m]
        out[sel] = colour
    return out


def _shade(asset: MeshAsset, frags: Fragments, normals_face: torch.Tensor, c2w: torch.Tensor, focal: float,
           lighting: LightingMode, bg: torch.Tensor, pyramids: Optional[list] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour [3, H, W] composited over ``bg`` and coverage [H, W] for one view's fragments (V = 1)."""
    fid_img = frags.face_id[0]
    hit = fid_img >= 0
    fid = fid_img[hit]
    colour = asset.face_base_color[fid].to(torch.float32)
    if asset.vertex_colors is not None:
        colour = colour * interpolate(asset.vertex_colors, asset.faces, frags)[0][hit]
    if asset.uv is not None and asset.textures:
        uv_img = interpolate(asset.uv.to(torch.float32), asset.faces, frags)[0]
        footprint = _texel_footprint(uv_img, hit)[hit] if pyramids is not None else None
        colour = colour * sample_textures(asset, fid, uv_img[hit], footprint, pyramids)
    if lighting is LightingMode.AMBIENT_DIFFUSE:
        cos = (normals_face[fid] * _view_dirs(c2w, hit, focal)).sum(-1).abs()
        colour = colour * (AMBIENT + (1.0 - AMBIENT) * cos)[:, None]
    rgb = bg.view(3, 1, 1).expand(3, *fid_img.shape).clone()
    rgb[:, hit] = colour.clamp(0.0, 1.0).t()
    return rgb, hit.to(torch.float32)


def _view_dirs(c2w: torch.Tensor, hit: torch.Tensor, focal: float) -> torch.Tensor:
    """World-space unit directions [P, 3] from the centres of the ``hit`` pixels ([H, W] bool) towards the camera."""
    height, width = hit.shape
    rows, cols = hit.nonzero(as_tuple=True)
    centres = torch.stack([cols.to(torch.float32) + 0.5, rows.to(torch.float32) + 0.5], -1)
    ray = pixels_to_camera(centres, torch.ones_like(centres[:, 0]), focal, height, width) @ c2w[:3, :3].t()
    return -F.normalize(ray, dim=-1)


def render_views(
    asset: MeshAsset,
    cameras: Optional[MVCameras] = None,
    resolution: int = 256,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    lighting: Union[str, LightingMode] = LightingMode.AMBIENT_DIFFUSE,
    ssaa: int = 2,
    device: Optional[Union[str, torch.device]] = None,
    mipmaps: bool = True,
) -> MultiViewRender:
    """Render the asset from every camera.

    Args:
        asset: a normalised asset (``load_asset``); its tensors' device is used unless ``device`` is given.
        cameras: default ``MVCameras.mvdream_default()`` (front, right, back, left; elevation 15, fov 40).
        resolution: square image size, a multiple of 8 up to 1024.
        background: RGB in 0..1 behind the object.
        lighting: a :class:`LightingMode` or its string, "ambient_diffuse" or "unlit".
        ssaa: supersampling factor per side for colour and alpha (1 = off).
        device: optional device to render on.
        mipmaps: trilinear mipmapped texture sampling (minified textures are averaged, not aliased); False samples
            the full-resolution texture bilinearly.

    Returns:
        MultiViewRender: rgb [V,3,H,W], alpha [V,1,H,W], depth [V,1,H,W], normals [V,3,H,W], part_id [V,H,W], all on the
        render device, and the asset's ``source_frame`` (so lifted results can go back to the asset's own coordinates).
    """
    bg_tuple, lighting = _check_options(resolution, ssaa, lighting, background)
    cameras = MVCameras.mvdream_default() if cameras is None else cameras
    if device is not None:
        asset = asset.to(device)
    dev = asset.vertices.device
    h = w = resolution
    verts = asset.vertices.to(torch.float32)
    faces = asset.faces
    c2w = cameras.c2w(torch.float32).to(dev)
    n_face = face_normals(verts, faces)
    bg = torch.tensor(bg_tuple, dtype=torch.float32, device=dev)
    focal = cameras.focal_px(h)
    pyramids = [_mip_pyramid(t, dev) for t in asset.textures] if mipmaps and asset.uv is not None else None
    rgbs, alphas, depths, normals, part_ids = [], [], [], [], []
    for v in range(cameras.num_views):  # one view at a time bounds memory at 1024 px with SSAA
        # exact channels at 1 sample per pixel
        frags = rasterize_views(verts, faces, cameras, (h, w), views=[v])
        hit = frags.face_id[0] >= 0
        nrm = torch.zeros(h, w, 3, dtype=torch.float32, device=dev)
        n_hit = n_face[frags.face_id[0][hit]]
        # two-sided: turn each normal towards the camera that sees it
        facing = (n_hit * _view_dirs(c2w[v], hit, focal)).sum(-1, keepdim=True) < 0
        nrm[hit] = torch.where(facing, -n_hit, n_hit)
        normals.append(nrm.permute(2, 0, 1))
        depths.append(frags.depth[0][None])
        part_ids.append(face_values(asset.part_ids, frags, fill=-1)[0])
        # colour and alpha supersampled
        hs, ws = h * ssaa, w * ssaa
        frags_s = rasterize_views(verts, faces, cameras, (hs, ws), views=[v]) if ssaa > 1 else frags
        rgb, cov = _shade(asset, frags_s, n_face, c2w[v], cameras.focal_px(hs), lighting, bg, pyramids)
        if ssaa > 1:
            rgb = F.avg_pool2d(rgb[None], ssaa)[0]
            cov = F.avg_pool2d(cov[None, None], ssaa)[0, 0]
        rgbs.append(rgb)
        alphas.append(cov[None])
    return MultiViewRender(
        rgb=torch.stack(rgbs), alpha=torch.stack(alphas), depth=torch.stack(depths), normals=torch.stack(normals),
        part_id=torch.stack(part_ids), part_names=tuple(asset.part_names), cameras=cameras, background=bg_tuple,
        source_frame=asset.source_frame,
    )
