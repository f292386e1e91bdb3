"""Measuring lifts the way users see them (issue 13 item 6): held-out novel cameras, surface distances, synthetic edits
with ground truth, view jitter, and contact sheets. Used by ``bench/bench_lift.py --suite novel``.

Everything lives in our internal frame (the views' world). Ground truth and lifted meshes are both rendered by the
render stage's ``render_views`` (unlit, white background), never by the bake's own lookup; surfaces are compared by
point-to-surface distances (``tests/_lift_helpers.surface_chamfer``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

#: Held-out azimuths (MVDream degrees): halfway between the four lift views (0/90/180/270).
NOVEL_AZIMUTHS = (45.0, 135.0, 225.0, 315.0)
#: Elevations of the novel rings, and the top-down view (the camera model's limit is 89 degrees).
NOVEL_ELEVATIONS = (15.0, 45.0, -20.0)
TOP_DOWN_ELEVATION = 89.0
#: F-score threshold as a fraction of the ground truth's bounding-box diagonal.
F_SCORE_FRACTION = 0.01
#: Colour of an added part and of a recoloured one.
ADD_COLOR = (0.85, 0.15, 0.10)
RECOLOR = (0.10, 0.35, 0.90)
EDITS = ("none", "add", "remove", "scale", "recolor")
#: Edits run only when named (``--edits``): a ball held at the asset's front (inside its outline from the front view),
#: a box hat (the round-things prior's worst case) and a part shrunk x0.7.
EXTRA_EDITS = ("add_front", "add_box", "shrink")
#: Colours of the extra edits' new parts.
ADD_FRONT_COLOR = (0.10, 0.70, 0.20)
ADD_BOX_COLOR = (0.20, 0.20, 0.80)


def novel_cameras(fov_deg: float, radius: float) -> list:
    """The held-out cameras: one MVCameras per elevation ring (4 azimuths each) and one top-down view."""
    from dreamedit3d_core.cameras import MVCameras

    az = torch.tensor(NOVEL_AZIMUTHS, dtype=torch.float64)
    cams = [MVCameras(elevation_deg=e, azimuth_deg=az, fov_deg=fov_deg, radius=radius) for e in NOVEL_ELEVATIONS]
    cams.append(MVCameras(elevation_deg=TOP_DOWN_ELEVATION, azimuth_deg=torch.tensor([90.0]), fov_deg=fov_deg,
                          radius=radius))
    return cams


def render_novel(asset, cams_list: list, res: int):
    """(rgb [K, 3, R, R], alpha [K, 1, R, R], normals [K, 3, R, R]) over all novel cameras, unlit on white."""
    from dreamedit3d_core.render import render_views

    outs = [render_views(asset, c, resolution=res, lighting="unlit") for c in cams_list]
    return (torch.cat([o.rgb for o in outs]), torch.cat([o.alpha for o in outs]), torch.cat([o.normals for o in outs]))


def view_metrics(ref: tuple, test: tuple) -> dict:
    """Silhouette IoU (mean, worst), PSNR inside the union silhouette (mean dB), normal error (mean degrees where both
    see a surface; faces are two-sided, so the angle is taken up to sign)."""
    rgb_r, a_r, n_r = ref
    rgb_t, a_t, n_t = test
    m_r, m_t = a_r[:, 0] > 0.5, a_t[:, 0] > 0.5
    ious, psnrs, angles = [], [], []
    for i in range(rgb_r.shape[0]):
        union, inter = m_r[i] | m_t[i], m_r[i] & m_t[i]
        ious.append(float(inter.sum()) / max(float(union.sum()), 1.0))
        if union.any():
            mse = float(((rgb_r[i] - rgb_t[i]) ** 2).permute(1, 2, 0)[union].mean())
            psnrs.append(10.0 * math.log10(1.0 / max(mse, 1e-10)))
        if inter.any():
            cos = (torch.nn.functional.normalize(n_r[i], dim=0) * torch.nn.functional.normalize(n_t[i], dim=0)).sum(0)
            angles.append(float(torch.rad2deg(torch.acos(cos[inter].abs().clamp(max=1.0))).mean()))
    return {"iou_mean": float(np.mean(ious)), "iou_worst": float(np.min(ious)), "psnr_db": float(np.mean(psnrs)),
            "normal_err_deg": float(np.mean(angles)) if angles else float("nan")}


def surface_metrics(verts_gt, faces_gt, verts, faces, samples: int = 20000) -> dict:
    """Chamfer (% of the ground truth's bounding-box diagonal) and F-score at ``F_SCORE_FRACTION`` of it."""
    from _lift_helpers import surface_chamfer

    vg = np.asarray(verts_gt, np.float64)
    diag = float(np.linalg.norm(vg.max(0) - vg.min(0)))
    c, d_test_to_gt, d_gt_to_test = surface_chamfer(verts, faces, vg, faces_gt, samples=samples)
    tau = F_SCORE_FRACTION * diag
    precision, recall = float((d_test_to_gt < tau).mean()), float((d_gt_to_test < tau).mean())
    f = 2 * precision * recall / max(precision + recall, 1e-12)
    return {"chamfer_pct": 100.0 * c / diag, "fscore": f}


# ------------------------------------------------------------------------------------------------ synthetic edits
@dataclass
class Edit:
    name: str
    asset: object  # the edited MeshAsset (ground truth)
    what: str  # what was edited, in words


def _part_areas(asset) -> np.ndarray:
    v = asset.vertices.double()
    f = asset.faces
    area = 0.5 * torch.linalg.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=-1).norm(dim=-1)
    return np.bincount(asset.part_ids.numpy(), weights=area.numpy(), minlength=asset.num_parts)


def edit_region(asset) -> tuple:
    """Faces (bool [M]) an edit touches, and a name: the second-largest part by area when the asset has several (an arm,
    a wheel, a leg), else its top fifth (a chunk of a single-part asset)."""
    areas = _part_areas(asset)
    if asset.num_parts > 1 and (areas > 0).sum() > 1:
        part = int(np.argsort(areas)[-2])
        return (asset.part_ids == part).numpy(), f"part {asset.part_names[part]!r}"
    centroid_y = asset.vertices[asset.faces].mean(1)[:, 1]
    lo, hi = float(asset.vertices[:, 1].min()), float(asset.vertices[:, 1].max())
    return (centroid_y > hi - 0.2 * (hi - lo)).numpy(), "the top fifth"


def _replace(asset, **changes):
    from dataclasses import replace

    return replace(asset, **changes)


def _with_new_part(asset, mesh, colour, name: str):
    """``asset`` with the trimesh ``mesh`` added as a new part of one base colour (untextured, white vertex colours)."""
    v = asset.vertices
    nv, nf = torch.tensor(mesh.vertices, dtype=torch.float32), torch.tensor(mesh.faces, dtype=torch.int64)
    n, m = v.shape[0], nf.shape[0]
    changes = dict(vertices=torch.cat([v, nv]), faces=torch.cat([asset.faces, nf + n]),
                   part_ids=torch.cat([asset.part_ids, torch.full((m,), asset.num_parts, dtype=torch.int64)]),
                   part_names=tuple(asset.part_names) + (name,),
                   face_base_color=torch.cat([asset.face_base_color, torch.tensor([colour]).expand(m, 3)]))
    if asset.uv is not None:
        changes["uv"] = torch.cat([asset.uv, torch.zeros(len(nv), 2)])
    if asset.vertex_colors is not None:
        changes["vertex_colors"] = torch.cat([asset.vertex_colors, torch.ones(len(nv), 3)])
    if asset.face_textures is not None:
        changes["face_textures"] = torch.cat([asset.face_textures, torch.full((m,), -1, dtype=torch.int64)])
    return _replace(asset, **changes)


def _top_centre(asset, lift: float) -> tuple:
    """The middle of the asset's top (its highest 5 %) raised by ``lift``."""
    v = asset.vertices
    lo, hi = v.min(0).values, v.max(0).values
    top = v[v[:, 1] > float(hi[1]) - 0.05 * float(hi[1] - lo[1])]
    return float(top[:, 0].mean()), float(hi[1]) + lift, float(top[:, 2].mean())


def add_part(asset) -> Edit:
    """A red ball (a hat) sitting on the top of the asset, half sunk in."""
    import trimesh

    v = asset.vertices
    radius = 0.16 * float((v.max(0).values - v.min(0).values).max())
    ball = trimesh.creation.icosphere(subdivisions=3, radius=radius)
    ball.apply_translation(_top_centre(asset, 0.45 * radius))
    return Edit("add", _with_new_part(asset, ball, ADD_COLOR, "added_hat"), "a red ball on top")


def add_front_part(asset) -> Edit:
    """A green ball held at the asset's front (+x, the front view's camera side), half its radius out of the asset's
    front at mid height: from the front view it lies inside the asset's outline ("a ball in a hand")."""
    import trimesh

    v = asset.vertices
    lo, hi = v.min(0).values, v.max(0).values
    radius = 0.12 * float((hi - lo).max())
    mid = 0.5 * (lo + hi)
    ball = trimesh.creation.icosphere(subdivisions=3, radius=radius)
    ball.apply_translation((float(hi[0]) + 0.5 * radius, float(mid[1]), float(mid[2])))
    return Edit("add_front", _with_new_part(asset, ball, ADD_FRONT_COLOR, "added_ball"), "a green ball held in front")


def add_box_part(asset) -> Edit:
    """A blue box hat (a quarter of the asset's size, 0.6 as tall) sitting on the top."""
    import trimesh

    v = asset.vertices
    side = 0.25 * float((v.max(0).values - v.min(0).values).max())
    box = trimesh.creation.box(extents=(side, 0.6 * side, side))
    box.apply_translation(_top_centre(asset, 0.2 * side))
    return Edit("add_box", _with_new_part(asset, box, ADD_BOX_COLOR, "added_box"), "a blue box on top")


def remove_part(asset) -> Edit:
    keep, what = edit_region(asset)
    keep = torch.from_numpy(~keep)
    changes = dict(faces=asset.faces[keep], part_ids=asset.part_ids[keep], face_base_color=asset.face_base_color[keep])
    if asset.face_textures is not None:
        changes["face_textures"] = asset.face_textures[keep]
    return Edit("remove", _replace(asset, **changes), f"{what} removed")


def scale_part(asset, factor: float = 1.3) -> Edit:
    """The region's vertices scaled by ``factor`` about its centroid (a part), or smoothly blended into the scale
    across the bottom of the region (a chunk of a single-part asset, so the surface stays connected)."""
    sel, what = edit_region(asset)
    idx = asset.faces[torch.from_numpy(sel)].reshape(-1).unique()
    v = asset.vertices.clone()
    centre = v[idx].mean(0)
    if what.startswith("part"):
        v[idx] = centre + (v[idx] - centre) * factor
    else:
        y = v[:, 1]
        y0 = float(y[idx].min())
        span = float(y.max()) - y0
        w = ((y - y0) / max(span, 1e-9)).clamp(0, 1)
        w = (w * w * (3 - 2 * w))[:, None]  # smoothstep: 0 at the region's bottom, 1 at the top
        v = v + w * (v - centre) * (factor - 1.0)
    return Edit("scale", _replace(asset, vertices=v), f"{what} scaled x{factor}")


def recolor_part(asset) -> Edit:
    sel, what = edit_region(asset)
    sel_t = torch.from_numpy(sel)
    changes = dict(face_base_color=torch.where(sel_t[:, None], torch.tensor(RECOLOR), asset.face_base_color))
    if asset.face_textures is not None:
        changes["face_textures"] = torch.where(sel_t, torch.full_like(asset.face_textures, -1), asset.face_textures)
    if asset.vertex_colors is not None:
        vc = asset.vertex_colors.clone()
        vc[asset.faces[sel_t].reshape(-1)] = 1.0
        changes["vertex_colors"] = vc
    return Edit("recolor", _replace(asset, **changes), f"{what} recoloured blue")


def shrink_part(asset) -> Edit:
    edit = scale_part(asset, 0.7)
    return Edit("shrink", edit.asset, edit.what)


def make_edit(asset, name: str) -> Edit:
    if name == "none":
        return Edit("none", asset, "no edit")
    return {"add": add_part, "remove": remove_part, "scale": scale_part, "recolor": recolor_part,
            "add_front": add_front_part, "add_box": add_box_part, "shrink": shrink_part}[name](asset)


def jitter_views(rgb: torch.Tensor, seed: int = 0, max_shift_px: int = 2, brightness: float = 0.05) -> torch.Tensor:
    """Each view shifted by 1-2 px in x and y (random signs, white fill) and scaled in brightness by up to +-5 %."""
    g = torch.Generator().manual_seed(seed)
    out = torch.ones_like(rgb)
    h, w = rgb.shape[-2:]
    for i in range(rgb.shape[0]):
        dx, dy = (int(torch.randint(1, max_shift_px + 1, (1,), generator=g)) * (1 if float(torch.rand(1, generator=g)) < 0.5
                                                                                else -1) for _ in range(2))
        gain = 1.0 + brightness * (2 * float(torch.rand(1, generator=g)) - 1)
        src = rgb[i, :, max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
        out[i, :, max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)] = src
        out[i] = (out[i] * gain).clamp(0, 1)
    return out


def contact_sheet(rows: list, labels: list, path, cell: int = 128) -> None:
    """rows: list of [K, 3, R, R] images (ground truth first, then each mode); written as one PNG with row labels."""
    from PIL import Image, ImageDraw

    k = rows[0].shape[0]
    label_w = 110
    sheet = Image.new("RGB", (label_w + k * cell, len(rows) * cell), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (imgs, label) in enumerate(zip(rows, labels)):
        draw.text((4, r * cell + cell // 2 - 6), label, fill=(0, 0, 0))
        small = torch.nn.functional.interpolate(imgs, size=(cell, cell), mode="area")
        for c in range(k):
            arr = (small[c].permute(1, 2, 0).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
            sheet.paste(Image.fromarray(arr), (label_w + c * cell, r * cell))
    sheet.save(path)


def lifted_render(mesh, cams_list, res) -> tuple:
    from _lift_helpers import lifted_as_asset

    return render_novel(lifted_as_asset(mesh.to("cpu")), cams_list, res)


def evaluate(mesh, gt_asset, gt_views: tuple, cams_list: list, res: int, samples: int = 20000) -> tuple:
    """Metrics of a lifted mesh against the ground truth (novel views + surface) and its novel renders."""
    test_views = lifted_render(mesh, cams_list, res)
    row = view_metrics(gt_views, test_views)
    row.update(surface_metrics(gt_asset.vertices.numpy(), gt_asset.faces.numpy(), mesh.vertices.cpu().numpy(),
                               mesh.faces.cpu().numpy(), samples))
    return row, test_views


def mode_kwargs(mode: str, source, source_alpha: Optional[torch.Tensor]) -> dict:
    """How the node lifts in each mode: keep_source takes the source's silhouettes, the others key the views."""
    if mode == "hull":
        return dict(mode="hull")
    if mode == "keep_source":
        return dict(mode="keep_source", source=source, alpha=source_alpha)
    return dict(mode=mode, source=source)
