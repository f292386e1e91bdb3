"""ComponentMask: one mask per named component in every view, exact from part ids, or from SAM (``masks_sam.py``).

A component spec names each component and the parts it takes::

    "hat: Hat, Brim; dog: *"        # '*' = every part no other component names
    {"hat": ["Hat", "Brim"], "dog": "*"}

Part names match case-insensitively and exactly. The multi-view geometry shared with the SAM path lives here too: lifting
pixels to 3D with a view's depth, projecting 3D points into every view with an occlusion test, and the cross-view
disagreement of a set of masks.
"""

from __future__ import annotations

import math
from typing import Mapping, Union

import torch

from .errors import ConfigError, ShapeError
from .types import ComponentMasks, MaskSource, MultiViewRender

#: Default depth tolerance (object units; the object spans 1) for "this 3D point is the surface the view sees".
DEFAULT_DEPTH_TOLERANCE = 0.02


# --------------------------------------------------------------------------------------------------------------------------
# component specs and part masks


def _clean_component(name: str) -> str:
    name = str(name).strip()
    if name.startswith("<") and name.endswith(">"):
        name = name[1:-1].strip()
    if not name or any(c in name for c in ":;,<>*") or any(c.isspace() for c in name):
        raise ConfigError(f"component name {name!r} is not valid: use one word without spaces, ':', ';', ',', '<', '>' "
                          f"or '*' (e.g. 'hat')")
    return name


def parse_component_spec(spec: Union[str, Mapping]) -> dict:
    """Parse ``"hat: Hat, Brim; dog: *"`` (or a dict) into ``{component: [part names] or "*"}``, keeping order.

    Components are separated by ';' or new lines; each is ``name: part, part, ...`` or ``name: *``.

    Raises:
        ConfigError: empty spec, an entry without ':', a component without parts, a repeated component, two '*'.
    """
    if isinstance(spec, Mapping):
        items = list(spec.items())
    elif isinstance(spec, str):
        items = []
        for entry in (e.strip() for e in spec.replace("\n", ";").split(";")):
            if not entry:
                continue
            if ":" not in entry:
                raise ConfigError(f"component entry {entry!r} has no ':'; write 'component: Part, Part' "
                                  f"(e.g. 'hat: Hat, Brim; dog: *')")
            name, parts = entry.split(":", 1)
            parts = parts.strip()
            items.append((name, "*" if parts == "*" else [p.strip() for p in parts.split(",") if p.strip()]))
    else:
        raise ConfigError(f"component spec must be a string like 'hat: Hat; dog: *' or a dict, got {type(spec).__name__}")
    if not items:
        raise ConfigError("component spec is empty; write e.g. 'hat: Hat, Brim; dog: *'")
    out: dict = {}
    for name, parts in items:
        name = _clean_component(name)
        if name.lower() in {k.lower() for k in out}:
            raise ConfigError(f"component '{name}' is named twice in the spec")
        if isinstance(parts, str):
            parts = [p.strip() for p in parts.split(",") if p.strip()]
        parts = [str(p).strip() for p in parts]
        if parts == ["*"]:
            parts = "*"
        elif not parts or "*" in parts:
            raise ConfigError(f"component '{name}' needs part names, or '*' alone for all remaining parts; got {parts}")
        out[name] = parts
    if sum(1 for p in out.values() if p == "*") > 1:
        raise ConfigError("only one component may take '*' (all remaining parts)")
    return out


def component_part_ids(spec: Union[str, Mapping], part_names) -> dict:
    """Resolve a spec against the asset's part names: ``{component: [part indices]}``.

    Raises:
        ConfigError: a part that does not exist (the message lists the available parts), or one taken twice.
    """
    parsed = parse_component_spec(spec)
    lookup = {str(n).lower(): i for i, n in enumerate(part_names)}
    available = ", ".join(str(n) for n in part_names)
    taken: dict = {}
    resolved: dict = {}
    for comp, parts in parsed.items():
        if parts == "*":
            continue
        ids = []
        for part in parts:
            idx = lookup.get(part.lower())
            if idx is None:
                raise ConfigError(f"component '{comp}' names part '{part}', which this asset does not have; "
                                  f"available parts: {available}")
            if idx in taken:
                raise ConfigError(f"part '{part_names[idx]}' is given to both '{taken[idx]}' and '{comp}'")
            taken[idx] = comp
            ids.append(idx)
        resolved[comp] = ids
    for comp, parts in parsed.items():
        if parts == "*":
            resolved[comp] = [i for i in range(len(part_names)) if i not in taken]
    return {comp: resolved[comp] for comp in parsed}


def _check_nonempty(masks: torch.Tensor, names, hint: str) -> None:
    empty = [n for n, m in zip(names, masks) if not bool(m.any())]
    if empty:
        raise ConfigError(f"component(s) {', '.join(repr(n) for n in empty)} cover no pixel in any view; {hint}")


def masks_from_parts(render: MultiViewRender, spec: Union[str, Mapping]) -> ComponentMasks:
    """Exact component masks from the render's part-id images.

    Args:
        render: from ``render_views`` (its ``part_id`` [V, H, W] and ``part_names``).
        spec: ``"hat: Hat, Brim; dog: *"`` or ``{"hat": ["Hat", "Brim"], "dog": "*"}``.

    Returns:
        ComponentMasks with masks bool [K, V, H, W] (a component may be empty in some views: occluded),
        source PARTS, disagreement zeros [K] (consistent by construction).

    Raises:
        ConfigError: unknown or doubly used parts (listing the available ones), or a component empty in every view.
    """
    ids = component_part_ids(spec, render.part_names)
    pid = render.part_id
    masks = torch.stack([torch.isin(pid, torch.tensor(v, dtype=pid.dtype, device=pid.device)) for v in ids.values()])
    names = tuple(ids)
    _check_nonempty(masks, names, "its parts are hidden in all views or too small at this resolution (or '*' "
                                  "had no parts left)")
    return ComponentMasks(masks=masks, names=names, source=MaskSource.PARTS,
                          disagreement=torch.zeros(len(names), dtype=torch.float32, device=masks.device))


# --------------------------------------------------------------------------------------------------------------------------
# multi-view geometry: lift, project with occlusion, disagreement


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
    col, row = xy[:, 0].floor().long(), xy[:, 1].floor().long()
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    d = render.depth[view, 0, row.clamp(0, h - 1), col.clamp(0, w - 1)].to(torch.float64)
    valid = inside & (d > 0)
    cams = render.cameras
    f = cams.focal_px(h)
    cam = torch.stack([(xy[:, 0] - w / 2.0) / f * d, -(xy[:, 1] - h / 2.0) / f * d, -d], -1)
    c2w = cams.c2w(torch.float64)[view].to(xy.device)
    return cam @ c2w[:3, :3].t() + c2w[:3, 3], valid


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
    col, row = xy[..., 0].floor().long(), xy[..., 1].floor().long()
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h) & (depth > 0)
    v_idx = torch.arange(xy.shape[0], device=pts.device)[:, None].expand_as(col)
    rc, cc = row.clamp(0, h - 1), col.clamp(0, w - 1)
    seen = render.depth[v_idx, 0, rc, cc].to(torch.float64)
    normal = render.normals[v_idx, :, rc, cc].to(torch.float64)  # [V, P, 3]
    to_cam = torch.nn.functional.normalize(
        render.cameras.c2w(torch.float64)[:, None, :3, 3].to(pts.device) - pts[None], dim=-1)
    cos = (normal * to_cam).sum(-1).abs().clamp(min=0.1)
    slope = torch.sqrt(1.0 - cos ** 2) / cos
    tolerance = depth_tolerance + seen / render.cameras.focal_px(h) * slope
    visible = inside & (seen > 0) & ((seen - depth).abs() <= tolerance)
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
                col, row = xy[b, sel, 0].floor().long(), xy[b, sel, 1].floor().long()
                agree += int(masks[k, b, row, col].sum())
                total += int(sel.sum())
        if total:
            out[k] = 1.0 - agree / total
    return out.to(masks.device)


from .masks_sam import masks_from_sam  # noqa: E402  (SAM path; segment-anything is imported only when it runs)

__all__ = ["masks_from_parts", "masks_from_sam", "parse_component_spec", "component_part_ids", "lift_pixels",
           "project_visible", "mask_disagreement"]
