"""Component-aware lifting (issue 13 item 3): the source's components the edit does not touch keep their exact faces,
new geometry is built only where the edited silhouettes grow past the source's, and parts they no longer show go.

Which components an edit touches comes from three places, in this order: the components the caller names (a keep list,
or an edited list), the edit prompt (a prompt that uses some components' learned tokens, ``<dog>``, keeps those as they
are and edits the components whose tokens it leaves out, ``a <dog> wearing a crown`` edits ``hat``), and the views
themselves (source faces the edited silhouettes no longer cover are removed; a component that loses most of its surface
that way is removed whole; a component whose outline grew nearly all round, or that lost surface but is still shown, is
reshaped: rebuilt whole).

The new geometry is the edited visual hull where it grows past the source's hull, grown back to the kept solid through
the hull's slack (so it sits on the kept parts, no floating gap), smoothed, plus the source's solid of the components
that are rebuilt, cut by the edited hull (a rebuilt part the silhouettes show uniformly scaled: its own solid at that
scale, cut by the edited hull, and the hull's slack around it is not new material); it is one closed surface reaching
a few voxels into the kept solid (an overlap, never a crack). Components the views no longer show are neither kept nor rebuilt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..cameras import MVCameras
from ..errors import ConfigError
from ..types import ComponentMasks, MeshAsset
from . import hull, rounding, surface


class KeepPolicy(str, Enum):
    """Which of the source's components keep their exact geometry (a ``str`` Enum: the plain values work too)."""

    #: Every component but those the edit touches (named by the caller or the prompt, or carved away by the views).
    ALL_BUT_EDITED = "all_but_edited"
    #: Only the components listed; every other one is rebuilt from the views.
    LISTED = "listed"
    #: None: the whole object is rebuilt from the source's solid and the views (source-guided occupancy).
    NONE = "none"


KEEP_POLICIES = tuple(p.value for p in KeepPolicy)
#: Smoothing (voxels) of the new geometry's occupancy before marching cubes: rounds the hull's four-plane ridges.
NEW_PART_SIGMA = 1.2
#: An added solid whose grown pixels (where the edited silhouettes pass the source's) larger added solids already cover
#: to at least this fraction is a ghost of the four-view hull, not a part (``_drop_unneeded_solids``).
GHOST_COVERED = 0.95
#: Voxels by which new geometry reaches into the kept solid (an overlap that leaves no crack at the joint).
OVERLAP_VOXELS = 2
#: Voxels the added material may grow through the edited hull's slack (outside the source's solid) to reach it.
SLACK_VOXELS = 6
#: Blur of new material shaped by a reconstructor: its solid is already smooth and soft across the surface, and the
#: full NEW_PART_SIGMA shrinks a small part (a ball of 5 voxels' radius: IoU 0.85 against the truth).
SHAPED_PART_SIGMA = 0.6
#: Voxels the added material may grow through a reconstructor's solid (inside the edited hull) to reach the kept solid.
SHAPED_SLACK_VOXELS = 2 * SLACK_VOXELS
#: A point of a source face is still there unless an edited silhouette, dilated by this many pixels at 256 px,
#: misses it where the source's own silhouette covers it.
CARVE_TOLERANCE_PX = 3.0
#: A component that loses more than this fraction of the surface the views show outside the rest of the source
#: (its exposed surface) to the edited silhouettes is removed whole.
REMOVED_COMPONENT_FRACTION = 0.5
#: An edited silhouette reaching this many pixels (at 256 px) past the source's is growth: a part scaled x1.3 moves
#: its sides by 2-5 px, keying by one.
GROWTH_TOLERANCE_PX = 2.0
#: A kept component whose outline the edited silhouettes reach past along at least this fraction has grown (scaled,
#: lengthened): it is reshaped whole (measured: kenney's arm scaled x1.3 0.87, the other parts <= 0.13; the antenna
#: under an added ball 0.45) ...
RESHAPED_OUTLINE_FRACTION = 0.6
#: ... unless the new silhouette pixels nearest to it exceed this multiple of its own visible pixels (x1.3: 0.18; a
#: ball added over the antenna: 2.1, it is covered by a new part, not grown).
RESHAPED_MAX_GROWTH = 1.0
#: A component (among others) that loses more than this fraction of its exposed surface to the edited silhouettes ...
#: (measured: kenney's arm scaled x0.7 0.20, x0.5 0.45; a chunk cut off spot 0.09, off the Fox 0.04) ...
SHRUNK_LOST_FRACTION = 0.15
#: ... while they still cover at least this fraction of the pixels where the views show it alone has shrunk: it is
#: reshaped whole (x0.7: 0.48, x0.5 0.24; removed: 0.0), not removed (when it lost more than
#: ``REMOVED_COMPONENT_FRACTION``) or trimmed.
SHRUNK_VISIBLE_FRACTION = 0.2
#: A kept component whose visible pixels (at least ``APPEARANCE_MIN_PX`` at 256 px, over all views) differ from the
#: source's render in at least this fraction (after the shift search and gain fit of ``bake.change_from_source``) is
#: tested for removal by what the views show instead (:func:`removed_by_appearance`) ...
APPEARANCE_CHANGED_FRACTION = 0.3
APPEARANCE_MIN_PX = 48
#: ... and removed when, over its pixels where the source rendered without it looks different, the views show the
#: render without it in at least this fraction (the unseen vehicle's cabin inside its windows: 1.0 removed, 0.0
#: recoloured) ...
APPEARANCE_REMOVED_FRACTION = 0.5
#: ... and the render with it in at most this fraction (a part shrunk x0.7 still shows itself in half of them).
APPEARANCE_KEPT_FRACTION = 0.2
#: Added material more than this many voxels in front of the source's surface, where a view shows that surface
#: unchanged (no changed pixel within ``CARVE_TOLERANCE_PX``), is not there: it would hide what the view shows. (A
#: ball held in front of a body fills the body's whole width in the hull of four views; the front view's colours say
#: where it is.)
FRONT_MARGIN_VOXELS = 2.0
#: New solids smaller than this many voxels are noise (a silhouette a pixel off), not geometry.
MIN_NEW_VOXELS = 27
#: Points sampled per unit of surface area (in the views' world, object about 1 across) to label the source's solid.
LABEL_SAMPLES = 60_000
#: Stride of the coarse lookup of which source face is nearest to each voxel (``_nearest_face_label``).
LABEL_STRIDE = 2
#: Scales searched for a rebuilt part that the views show scaled (``rescaled_parts``), then refined between the best's
#: neighbours; a best scale at either end is not a scaling.
FIT_SCALES = tuple(float(x) for x in np.geomspace(0.4, 2.5, 13))
#: Scales tried between the best coarse scale's neighbours.
FIT_REFINE_STEPS = 9
#: Resolution (px) of the silhouettes the scale is fitted on.
FIT_RESOLUTION = 256
#: A fitted scale within this fraction of 1 is no scaling.
FIT_MIN_CHANGE = 0.04
#: The fitted part must explain the silhouettes: mismatched pixels at most this fraction of the part's own pixels ...
FIT_MAX_RESIDUAL = 0.15
#: ... and at most this fraction of the mismatch of the unscaled part.
FIT_MAX_GAIN = 0.5
#: Taubin smoothing passes of the new geometry's surface (the kept faces are never smoothed).
NEW_PART_TAUBIN = 10

_TOKEN = re.compile(r"<([^<>\s]+)>")


@dataclass(frozen=True)
class Components:
    """The source's components: ``names`` and, per source face, its component index (int64 [M])."""

    names: tuple
    face_component: torch.Tensor

    def index(self, name: str) -> Optional[int]:
        """The component called ``name`` (case-insensitive, angle brackets ignored) or whose learned token it is
        (``<hat_brim>`` for "Hat Brim", as personalisation names them), or None."""
        from ..tokens import token_for_component

        key = name.strip().strip("<>").lower()
        for i, n in enumerate(self.names):
            if n.lower() == key:
                return i
        for i, n in enumerate(self.names):
            try:
                if token_for_component(n) == f"<{key}>":
                    return i
            except ValueError:  # a name with no letters or digits has no token
                continue
        return None


def as_keep_policy(keep) -> KeepPolicy:
    """``keep`` (a :class:`KeepPolicy`, its value, or the node's words "all but edited") as a :class:`KeepPolicy`.

    Raises:
        ConfigError: an unknown policy.
    """
    value = keep.value if isinstance(keep, KeepPolicy) else str(keep).strip().lower().replace(" ", "_")
    try:
        return KeepPolicy(value)
    except ValueError:
        raise ConfigError(f"keep must be one of {list(KEEP_POLICIES)}, got {keep!r}") from None


def source_components(source: MeshAsset, cameras: MVCameras, masks: Optional[ComponentMasks] = None) -> Components:
    """The components of ``source``: the component masks' names when given (each face takes the component whose mask
    covers most of its pixels in the views; faces no view sees take their part's majority, else their nearest seen
    face's), else the source's own parts."""
    if masks is None or len(masks.names) == 0:
        return Components(tuple(source.part_names), source.part_ids.to(torch.int64).cpu())
    from ..raster import rasterize_views

    k, v, h, w = masks.masks.shape
    if v != cameras.num_views:
        raise ConfigError(f"component masks have {v} views but the cameras {cameras.num_views}; pass the masks made "
                          "for these views")
    frags = rasterize_views(source.vertices.to(torch.float32).cpu(), source.faces.cpu(), cameras, (h, w))
    fid = frags.face_id.reshape(-1)
    hit = fid >= 0
    comp = masks.masks.cpu().reshape(k, -1).to(torch.float32)  # [K, V*H*W]
    m = source.faces.shape[0]
    votes = torch.zeros(m, k)
    votes.index_add_(0, fid[hit], comp[:, hit].T)
    labelled = votes.sum(1) > 0
    label = votes.argmax(1)
    if not bool(labelled.all()):
        parts = source.part_ids.cpu()
        n_parts = max(int(parts.max()) + 1 if m else 0, 1)
        part_votes = torch.zeros(n_parts, k).index_add_(0, parts[labelled], votes[labelled])
        by_part = part_votes.argmax(1)
        has_part_vote = part_votes.sum(1) > 0
        fill = has_part_vote[parts] & ~labelled
        label = torch.where(fill, by_part[parts], label)
        labelled = labelled | fill
        if not bool(labelled.all()) and bool(labelled.any()):
            from scipy.spatial import cKDTree

            centroid = source.vertices.cpu().double()[source.faces.cpu()].mean(1).numpy()
            idx = labelled.nonzero().squeeze(1).numpy()
            _, near = cKDTree(centroid[idx]).query(centroid[(~labelled).numpy()])
            label[~labelled] = label[torch.from_numpy(idx[near])]
    return Components(tuple(masks.names), label.to(torch.int64))


def prompt_tokens(prompt: Optional[str]) -> tuple:
    """The ``<token>`` names a prompt uses, without brackets, in order of first use."""
    if not prompt:
        return ()
    seen = []
    for name in _TOKEN.findall(prompt):
        if name not in seen:
            seen.append(name)
    return tuple(seen)


def edited_by_prompt(prompt: Optional[str], components: Components) -> tuple:
    """Components an edit prompt touches: when it uses the learned token of at least one component, every component
    whose token it leaves out (``a <dog> wearing a crown`` replaces ``hat``); () when it names none of them (no say)."""
    named = {components.index(t) for t in prompt_tokens(prompt)} - {None}
    if not named:
        return ()
    return tuple(n for i, n in enumerate(components.names) if i not in named)


def _check_names(names: Sequence[str], components: Components, what: str) -> list:
    out = []
    for name in names:
        i = components.index(name)
        if i is None:
            raise ConfigError(f"{what} names component {name!r}, which the source does not have; its components are "
                              f"{list(components.names)}")
        out.append(i)
    return out


def split_names(text) -> tuple:
    """Component names from a comma/semicolon/space separated text (angle brackets allowed), or a sequence of names."""
    if text is None:
        return ()
    if isinstance(text, str):
        return tuple(n.strip("<>") for n in re.split(r"[,;\s]+", text) if n.strip("<>"))
    return tuple(str(n).strip().strip("<>") for n in text if str(n).strip().strip("<>"))


def _face_areas(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    v = verts.double()
    return 0.5 * torch.linalg.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]], dim=-1).norm(dim=-1)


def _view_coverage(points: torch.Tensor, masks: torch.Tensor, cameras: MVCameras) -> torch.Tensor:
    """bool [V, P]: whether each view's mask (float [V, 1, H, W]) covers each point (nearest pixel)."""
    h, w = masks.shape[-2:]
    pix, depth = cameras.project(points.to(device=masks.device, dtype=torch.float32), h, w)
    return (hull.sample_images(masks, pix, depth, mode="nearest")[..., 0] > 0.5).cpu()


#: Barycentric points at which a face is tested against the silhouettes: its centroid, towards each corner, towards
#: each edge (never the corners themselves).
_FACE_SAMPLES = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.2, 0.2, 0.6],
                              [0.45, 0.45, 0.1], [0.1, 0.45, 0.45], [0.45, 0.1, 0.45]], dtype=torch.float64)


def _face_points(source: MeshAsset) -> torch.Tensor:
    """float64 [M, S, 3]: the ``_FACE_SAMPLES`` points of every source face."""
    corners = source.vertices.cpu().double()[source.faces.cpu()]  # [M, 3, 3]
    return torch.einsum("sk,mkc->msc", _FACE_SAMPLES, corners)


def _core(masks: torch.Tensor) -> torch.Tensor:
    """Masks eroded by one pixel (their outline, which a keyed pixel moves, taken off)."""
    return -F.max_pool2d(-masks, 3, stride=1, padding=1)


def _carve_radius(height: int) -> int:
    """``CARVE_TOLERANCE_PX`` (at 256 px) in pixels of views ``height`` tall."""
    return max(1, round(CARVE_TOLERANCE_PX * height / 256))


def _source_core(source: MeshAsset, cameras: MVCameras, h: int, w: int, device) -> torch.Tensor:
    """The source's own silhouettes, eroded by a pixel (float [V, 1, H, W] on ``device``)."""
    return _core(hull.source_silhouettes(source, cameras, h, w).to(device))


def lost_points(source: MeshAsset, alpha: torch.Tensor, cameras: MVCameras,
                source_core: Optional[torch.Tensor] = None) -> torch.Tensor:
    """bool [M, S]: the points inside each source face (``_FACE_SAMPLES``) the edited silhouettes no longer show: in
    some view inside the source's own silhouette (eroded by a pixel) but outside the edited one (dilated by
    ``CARVE_TOLERANCE_PX`` at 256 px).

    Points inside faces, not vertices, and only where the source's render covers them: a low-poly part's corners and
    apexes sit on the outline, which keying and antialiasing move by a pixel, and one uncovered corner must not take
    every face around it. ``source_core``: :func:`_source_core` for these views, when the caller has it.
    """
    h, w = alpha.shape[-2:]
    r = _carve_radius(h)
    edited = F.max_pool2d((alpha > 0.5).to(torch.float32), 2 * r + 1, stride=1, padding=r)
    src_core = _source_core(source, cameras, h, w, alpha.device) if source_core is None else source_core
    points = _face_points(source)
    flat = points.reshape(-1, 3)
    lost = (_view_coverage(flat, src_core, cameras) & ~_view_coverage(flat, edited, cameras)).any(0)
    return lost.reshape(points.shape[:2])


def _rest_silhouettes(source: MeshAsset, component_faces: torch.Tensor, cameras: MVCameras,
                      like: torch.Tensor) -> torch.Tensor:
    """The silhouettes of the source's faces other than ``component_faces`` (bool [M]), dilated by the carve
    tolerance (float [V, 1, H, W] like ``like``): where the rest of the source could hide the component."""
    from ..raster import rasterize_views

    h, w = like.shape[-2:]
    r = _carve_radius(h)
    others = source.faces.cpu()[~component_faces.cpu()]
    rest = (rasterize_views(source.vertices.to(torch.float32).cpu(), others, cameras, (h, w)).mask[:, None]
            .to(device=like.device, dtype=torch.float32) if others.shape[0] else torch.zeros_like(like))
    return F.max_pool2d(rest, 2 * r + 1, stride=1, padding=r)


def _exposed_points(source: MeshAsset, component_faces: torch.Tensor, cameras: MVCameras,
                    source_core: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    """bool [F, S]: the points of the faces ``component_faces`` (bool [M]) that some view shows outside the rest of
    the source (inside the source's eroded silhouette, outside ``rest``, :func:`_rest_silhouettes`): the part of
    a component the views can judge (an arm's stretch inside the torso's outline cannot be seen to go).
    ``source_core``: :func:`_source_core` for the views."""
    points = _face_points(source)[component_faces.cpu()]
    flat = points.reshape(-1, 3)
    return (_view_coverage(flat, source_core, cameras) & ~_view_coverage(flat, rest, cameras)).any(0).reshape(
        points.shape[:2])


@dataclass(frozen=True)
class SilhouetteChange:
    """How each component's silhouettes changed between the source's render and the edited views (per component,
    float64 [K], over all views): ``pushed`` the fraction of its outline (its pixels next to the background) the
    edited silhouette now reaches past, ``grown_area`` the new silhouette pixels nearest to it over its own visible
    pixels, ``visible`` its visible pixels."""

    pushed: torch.Tensor
    grown_area: torch.Tensor
    visible: torch.Tensor


def silhouette_change(source_face_id: torch.Tensor, face_component: torch.Tensor, num_components: int,
                      alpha: torch.Tensor) -> SilhouetteChange:
    """:class:`SilhouetteChange` of each component from the source's face ids int64 [V, H, W] (-1: background) in the
    views and the edited silhouettes float [V, 1, H, W]; growth within ``GROWTH_TOLERANCE_PX`` is not change."""
    from scipy import ndimage

    h = alpha.shape[-2]
    r = max(1, round(GROWTH_TOLERANCE_PX * h / 256))
    fid = source_face_id.cpu()
    src = (fid >= 0).to(torch.float32)[:, None]
    pix_comp = torch.where(fid >= 0, face_component.cpu()[fid.clamp(min=0)], torch.full_like(fid, -1))
    edited = (alpha.cpu() > 0.5).to(torch.float32)
    grown = edited * (1.0 - F.max_pool2d(src, 2 * r + 1, stride=1, padding=r))
    outline = src * F.max_pool2d(1.0 - src, 3, stride=1, padding=1)
    pushed = outline * F.max_pool2d(grown, 2 * r + 5, stride=1, padding=r + 2)
    k = num_components
    bins = lambda x: torch.bincount(pix_comp[x].reshape(-1), minlength=k)[:k].to(torch.float64)  # noqa: E731
    visible = bins(pix_comp >= 0)
    outline_n, pushed_n = bins(outline[:, 0] > 0), bins(pushed[:, 0] > 0)
    grown_by = torch.zeros(k, dtype=torch.float64)
    for v in range(fid.shape[0]):  # each new pixel counts for the component nearest to it in its view
        new = grown[v, 0].numpy() > 0
        if not new.any():
            continue
        _, (iy, ix) = ndimage.distance_transform_edt(fid[v].numpy() < 0, return_indices=True)
        owner = pix_comp[v].numpy()[iy[new], ix[new]]
        grown_by += torch.from_numpy(np.bincount(owner[owner >= 0], minlength=k)[:k].astype(np.float64))
    return SilhouetteChange(pushed_n / outline_n.clamp(min=1.0), grown_by / visible.clamp(min=1.0), visible)


def _source_colour(source: MeshAsset, cameras: MVCameras, h: int, seen: Optional[hull.SourceViews]) -> tuple:
    """(rgb over black, alpha, world-frame normals) of the source's unlit render at ``h`` px on the CPU: ``seen``'s
    when it has them."""
    if seen is not None and seen.rgb is not None and seen.rgb.shape[-1] == h:
        return seen.rgb.cpu(), seen.alpha.cpu(), None if seen.normals is None else seen.normals.cpu()
    from ..render import render_views

    r = render_views(source, cameras, resolution=h, background=(0.0, 0.0, 0.0), lighting="unlit", device="cpu")
    return r.rgb, r.alpha, r.normals


def changed_from_source(rgb: torch.Tensor, background, source_rgb: torch.Tensor, source_alpha: torch.Tensor,
                        source_normals: Optional[torch.Tensor] = None, cameras: Optional[MVCameras] = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(bool [V, 1, H, W] the view pixels that do not show the source's render, the views' brightness relative to it
    [V, 1, H, W]): colours compared as ``bake.change_from_source`` does (the views' gain fitted, or their shading when
    ``source_normals`` and ``cameras`` are given and the views are lit: ``bake.view_shading``; a shift search of
    ``CHANGE_SEARCH_PX``), on the CPU."""
    from .bake import CHANGE_SEARCH_PX, CHANGE_TOLERANCE, change_from_source, view_shading

    v, _, h, _ = rgb.shape
    rgb = rgb.cpu().to(torch.float32)
    bg = torch.as_tensor(background, dtype=torch.float32).cpu().reshape(-1, 3).expand(v, 3)
    radius = max(1, round(CHANGE_SEARCH_PX * h / 256))
    gain = view_shading(rgb, source_rgb, source_alpha, radius, source_normals, cameras)
    return change_from_source(rgb, bg, source_rgb, source_alpha, radius, gain) > CHANGE_TOLERANCE, gain


def removed_by_appearance(source: MeshAsset, face_component: torch.Tensor, source_face_id: torch.Tensor,
                          candidates: torch.Tensor, rgb: torch.Tensor, background, cameras: MVCameras,
                          seen: Optional[hull.SourceViews] = None) -> torch.Tensor:
    """bool [K]: the ``candidates`` (bool [K]) components the edited views show gone by their colours, where their
    silhouettes need not say so (a part hidden in every outline behind others: a cabin inside its four windows).

    A component is tested when its visible pixels (``source_face_id`` int64 [V, H, W] of the source's render, -1
    background) largely differ from a render of the source (``APPEARANCE_CHANGED_FRACTION``). Among its pixels where
    the source rendered without it looks different from the source (what is behind it shows), it is removed when the
    views match the render without it in most (``APPEARANCE_REMOVED_FRACTION``) and the render with it in few
    (``APPEARANCE_KEPT_FRACTION``): a recoloured or covered part matches neither, a shrunk one still matches itself.
    Colours are compared as ``bake.change_from_source`` does (unlit renders, the views' gain fitted, a 2 px shift
    search). ``rgb``: float [V, 3, H, W] square views a multiple of 8 px (else nothing is removed); ``background``:
    each view's background colour, [V, 3] or an RGB triple; ``seen``: the source's :class:`~.hull.SourceViews` with
    colour at the views' size, when the caller has them."""
    from .bake import CHANGE_SEARCH_PX, CHANGE_TOLERANCE, change_from_source

    k = int(candidates.shape[0])
    out = torch.zeros(k, dtype=torch.bool)
    v, _, h, w = rgb.shape
    if h != w or h % 8 or h > 1024 or not bool(candidates.any()):
        return out
    rgb = rgb.cpu().to(torch.float32)
    bg = torch.as_tensor(background, dtype=torch.float32).cpu().reshape(-1, 3).expand(v, 3)
    fid = source_face_id.cpu()
    pix_comp = torch.where(fid >= 0, face_component.cpu()[fid.clamp(min=0)], torch.full_like(fid, -1))[:, None]
    radius = max(1, round(CHANGE_SEARCH_PX * h / 256))
    min_px = APPEARANCE_MIN_PX * (h / 256) ** 2

    with_rgb, with_alpha, with_normals = _source_colour(source, cameras, h, seen)
    off_with, gain = changed_from_source(rgb, bg, with_rgb, with_alpha, with_normals, cameras)
    for i in candidates.nonzero().squeeze(1).tolist():
        mine = pix_comp == i
        shown = float(mine.sum())
        if shown < min_px or float((off_with & mine).sum()) < APPEARANCE_CHANGED_FRACTION * shown:
            continue
        others = face_component.cpu() != i
        if not bool(others.any()):  # the whole source: without it the views would be empty, which the silhouettes judge
            continue
        without_rgb, without_alpha, _ = _source_colour(source.with_faces(others), cameras, h, None)
        # telling pixels: the two renders differ there even a shift apart, either way round
        with_composite = with_rgb + (1.0 - with_alpha) * bg[..., None, None]
        without_composite = without_rgb + (1.0 - without_alpha) * bg[..., None, None]
        telling = mine & (change_from_source(with_composite, bg, without_rgb, without_alpha, radius)
                          > 2 * CHANGE_TOLERANCE) & (change_from_source(without_composite, bg, with_rgb, with_alpha,
                                                                        radius) > 2 * CHANGE_TOLERANCE)
        n = float(telling.sum())
        if n < min_px:
            continue
        like_without = change_from_source(rgb, bg, without_rgb, without_alpha, radius, gain) <= CHANGE_TOLERANCE
        for_removal = float((telling & like_without & off_with).sum()) / n
        for_keeping = float((telling & ~off_with).sum()) / n
        out[i] = for_removal >= APPEARANCE_REMOVED_FRACTION and for_keeping <= APPEARANCE_KEPT_FRACTION
    return out


@dataclass(frozen=True)
class KeepDecision:
    """What a component-aware lift keeps: ``kept_faces`` bool [M] over the source's faces, ``removed_faces`` bool [M]
    (faces of components carved away whole: neither kept nor rebuilt), and by component name the ``kept``, ``edited``
    (named by the caller or the prompt), ``removed``, ``trimmed`` (kept but for faces the edited silhouettes no
    longer cover) and ``reshaped`` (grown or shrunk in the views: rebuilt whole from them) ones."""

    kept_faces: torch.Tensor
    kept: tuple
    edited: tuple
    removed: tuple
    trimmed: tuple
    removed_faces: Optional[torch.Tensor] = None
    reshaped: tuple = ()

    def rebuilt_faces(self) -> torch.Tensor:
        """bool [M]: source faces whose solid is rebuilt from the views (edited and reshaped components, trimmed
        faces)."""
        gone = self.removed_faces if self.removed_faces is not None else torch.zeros_like(self.kept_faces)
        return ~self.kept_faces & ~gone


def decide_kept_faces(source: MeshAsset, components: Components, alpha: torch.Tensor, cameras: MVCameras,
                      keep=KeepPolicy.ALL_BUT_EDITED, names: Sequence[str] = (), prompt: Optional[str] = None,
                      carve: bool = True, rgb: Optional[torch.Tensor] = None, background=None,
                      seen: Optional[hull.SourceViews] = None) -> KeepDecision:
    """Which source faces keep their exact geometry.

    Args:
        keep: the policy. ``names`` are the edited components for "all_but_edited" (added to those the prompt leaves
            out) and the kept ones for "listed".
        alpha: the edited views' silhouettes float [V, 1, H, W]; "all_but_edited" drops faces they no longer show
            (more than half of a face's :func:`lost_points`), and a component
            whole when it loses more than ``REMOVED_COMPONENT_FRACTION`` of the surface the views can judge and the
            views show nothing where it was; a component that grew all round (:func:`silhouette_change`) or shrank
            (lost that surface, but the views still show it) is reshaped: rebuilt whole from the views. Unless
            ``carve`` is False (the caller found the silhouettes unchanged).
        rgb, background: the edited views float [V, 3, H, W] and their background colours ([V, 3] or a triple); given,
            a component they show gone by its colours is removed too (:func:`removed_by_appearance`: a part hidden in
            every outline behind others), whether or not ``carve``.
        seen: the source's :class:`~.hull.SourceViews` at the views' size, when the caller has them.

    Raises:
        ConfigError: a name the source's components do not have; "listed" without names.
    """
    policy = as_keep_policy(keep)
    names = split_names(names)
    n = len(components.names)
    comp = components.face_component.cpu()
    m = comp.shape[0]
    if policy == KeepPolicy.NONE:
        return KeepDecision(torch.zeros(m, dtype=torch.bool), (), tuple(components.names), (), ())
    if policy == KeepPolicy.LISTED:
        if not names:
            raise ConfigError(f"keep 'listed' needs the components to keep, e.g. {', '.join(components.names[:2])}; "
                              f"the source's components are {list(components.names)}")
        listed = set(_check_names(names, components, "the keep list"))
        kept_comp = torch.tensor([i in listed for i in range(n)], dtype=torch.bool)
        return KeepDecision(kept_comp[comp] if m else torch.zeros(0, dtype=torch.bool),
                            tuple(components.names[i] for i in sorted(listed)),
                            tuple(x for i, x in enumerate(components.names) if i not in listed), (), ())
    edited = set(_check_names(names, components, "the edited list"))
    edited |= {components.index(x) for x in edited_by_prompt(prompt, components)}
    kept_comp = torch.tensor([i not in edited for i in range(n)], dtype=torch.bool)
    faces = source.faces.cpu()
    lost_pts = torch.zeros(m, _FACE_SAMPLES.shape[0], dtype=torch.bool)
    removed, reshaped = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    h, w = alpha.shape[-2:]
    if seen is None or tuple(seen.face_id.shape[-2:]) != (h, w):
        seen = hull.source_views(source, cameras, h, w, colour=rgb is not None) if carve or rgb is not None else None
    face_id = seen.face_id.cpu() if seen is not None else None  # one render of the source for all tests
    if carve:
        src_core = _core((face_id >= 0)[:, None].to(device=alpha.device, dtype=torch.float32))
        lost_pts = lost_points(source, alpha, cameras, src_core)
        change = silhouette_change(face_id, comp, n, alpha)
        # a component whose outline grew nearly all round (scaled up, lengthened) is reshaped whole from the views
        # (a part among others: a single-component source's change is a chunk of it, which trimming handles)
        among_others = len(comp.unique()) > 1
        reshaped = kept_comp & (change.pushed >= RESHAPED_OUTLINE_FRACTION) & (change.grown_area <= RESHAPED_MAX_GROWTH)
        reshaped &= among_others
        area = _face_areas(source.vertices.cpu(), faces)
        edited_px = (alpha > 0.5).to(torch.float32)
        for i in comp[lost_pts.any(1)].unique().tolist():
            if not bool(kept_comp[i]) or bool(reshaped[i]):
                continue
            mine = comp == i
            rest = _rest_silhouettes(source, mine, cameras, src_core)
            exposed = _exposed_points(source, mine, cameras, src_core, rest)
            weight = area[mine][:, None] / _FACE_SAMPLES.shape[0]
            judged = float((weight * exposed).sum())
            lost_share = float((weight * (exposed & lost_pts[mine])).sum()) / max(judged, 1e-30)
            if not (judged > 0 and lost_share > min(REMOVED_COMPONENT_FRACTION, SHRUNK_LOST_FRACTION)):
                continue
            # where the views show it alone: still covered (shrunk: reshaped) or empty (removed when most is lost)
            alone = ((face_id >= 0) & mine[face_id.clamp(min=0)]).to(alpha.device)[:, None] & (rest < 0.5)
            still = float((edited_px * alone).sum()) / max(float(alone.sum()), 1.0) >= SHRUNK_VISIBLE_FRACTION
            reshaped[i] = still and lost_share > SHRUNK_LOST_FRACTION and among_others
            removed[i] = not still and lost_share > REMOVED_COMPONENT_FRACTION
    if rgb is not None:
        removed |= removed_by_appearance(source, comp, face_id, kept_comp & ~removed & ~reshaped, rgb, background,
                                         cameras, seen)
    covered = lost_pts.double().mean(1) <= 0.5
    kept_comp = kept_comp & ~removed & ~reshaped
    trimmed = kept_comp & torch.zeros(n, dtype=torch.bool).index_fill_(0, comp[~covered].unique(), True)
    kept_faces = kept_comp[comp] & covered
    pick = lambda flags: tuple(x for i, x in enumerate(components.names) if bool(flags[i]))  # noqa: E731
    return KeepDecision(kept_faces, pick(kept_comp), tuple(components.names[i] for i in sorted(edited)),
                        pick(removed), pick(trimmed), removed_faces=removed[comp], reshaped=pick(reshaped))


def _surface_samples(verts: np.ndarray, faces: np.ndarray, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Area-uniform points on the faces (plus every face's centroid, so small faces are never missed) and their face."""
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    rng = np.random.default_rng(seed)
    total = area.sum()
    idx = rng.choice(len(faces), size=count, p=area / total) if total > 0 else np.zeros(0, np.int64)
    u, v = rng.random(len(idx)), rng.random(len(idx))
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    pts = a[idx] + (b[idx] - a[idx]) * u[:, None] + (c[idx] - a[idx]) * v[:, None]
    cent = (a + b + c) / 3.0
    return np.concatenate([pts, cent]), np.concatenate([idx, np.arange(len(faces))])


def _nearest_face_label(grid: hull.VoxelGrid, where: torch.Tensor, source: MeshAsset, face_label: torch.Tensor
                        ) -> torch.Tensor:
    """int64 [X, Y, Z]: the ``face_label`` (int64 [M]) of the nearest source surface, evaluated only at ``where``
    (0 elsewhere).

    Looked up on every ``LABEL_STRIDE``-th sample along each axis first; a sample whose coarse neighbours (two coarse
    steps either way, those looked up) all carry one label takes it, the others (along the borders between labels) are
    looked up themselves. The same labels as looking every sample up (a label region thinner than the coarse steps
    could slip between them: measured none of 0.2M samples differing on spot/Fox REMOVE, truck ADD, kenney SCALE;
    one in the Fox's 28k with one step), at a fraction of the nearest-neighbour queries (spot REMOVE at grid 128:
    3.6-4.3 s -> 0.7 s of CPU; truck ADD 2.0-2.6 -> 0.3-0.45 s)."""
    from scipy.spatial import cKDTree

    out = torch.zeros(grid.shape, dtype=torch.int64)
    where = where.cpu()
    labels = face_label.cpu()
    if not bool(where.any()):
        return out
    if int(labels.max()) == int(labels.min()):  # one label: no lookup
        return out.masked_fill_(where, int(labels[0]))
    verts = source.vertices.cpu().double().numpy()
    faces = source.faces.cpu().numpy()
    pts, fidx = _surface_samples(verts, faces, LABEL_SAMPLES)
    tree = cKDTree(pts)

    def lookup(index: torch.Tensor) -> torch.Tensor:  # labels at flat fine-grid indices
        _, near = tree.query(grid.points_at(index).double().numpy(), workers=-1)
        return labels[torch.from_numpy(fidx[near])]

    flat = out.reshape(-1)
    s = LABEL_STRIDE
    if s <= 1:
        sel = where.reshape(-1).nonzero().squeeze(1)
        flat[sel] = lookup(sel)
        return out
    # coarse samples: every s-th sample where some sample of its s-cell (or a neighbouring cell) is wanted
    need = F.max_pool3d(where[None, None].to(torch.float32), 2 * s + 1, stride=s, padding=s)[0, 0] > 0
    ci = need.nonzero()
    coarse = torch.full(need.shape, -1, dtype=torch.int64)
    ny, nz = grid.shape[1], grid.shape[2]
    coarse_index = ((ci[:, 0] * s).clamp(max=grid.shape[0] - 1) * ny + (ci[:, 1] * s).clamp(max=ny - 1)) * nz \
        + (ci[:, 2] * s).clamp(max=nz - 1)
    coarse[need] = lookup(coarse_index)
    c = coarse.to(torch.float32)[None, None]
    hi = F.max_pool3d(c, 5, stride=1, padding=2)[0, 0]
    lo = -F.max_pool3d(torch.where(c < 0, torch.full_like(c, -1e9), -c), 5, stride=1, padding=2)[0, 0]
    settled = (hi == lo) & (lo >= 0)  # the coarse neighbours looked up carry one label
    up = lambda t: t.repeat_interleave(s, 0).repeat_interleave(s, 1).repeat_interleave(s, 2)[  # noqa: E731
        : grid.shape[0], : grid.shape[1], : grid.shape[2]]
    # a fine sample's coarse neighbourhood: its cell and two cells either side (the coarse samples within s are in it)
    fine_settled, fine_label = up(settled), up(coarse.clamp(min=0))
    ok = where & fine_settled
    out[ok] = fine_label[ok]
    rest = (where & ~fine_settled).reshape(-1).nonzero().squeeze(1)
    if rest.numel():
        flat[rest] = lookup(rest)
    return out


@dataclass(frozen=True)
class RescaledPart:
    """A rebuilt part the edited silhouettes show scaled: its source faces (bool [M]) scaled by ``scale`` about
    ``centre`` (float64 [3], the mean of their vertices) match them best (``residual``: mismatched pixels over the
    part's pixels, scaled or not, whichever are more)."""

    faces: torch.Tensor
    centre: torch.Tensor
    scale: float
    residual: float

    def vertices(self, source: MeshAsset) -> torch.Tensor:
        """float32 [N, 3]: the source's vertices with this part's scale applied about its centre (all of them: index
        them with the part's faces)."""
        v = source.vertices.cpu().double()
        return (self.centre + (v - self.centre) * self.scale).to(torch.float32)


def _box_mask(grid: hull.VoxelGrid, points: torch.Tensor, margin: int) -> torch.Tensor:
    """bool [X, Y, Z]: the grid samples inside the box of ``points`` [N, 3] grown by ``margin`` voxels."""
    lo = torch.tensor(grid.lo, dtype=torch.float64)
    first = ((points.double().amin(0) - lo) / grid.spacing).floor().long() - margin
    last = ((points.double().amax(0) - lo) / grid.spacing).ceil().long() + margin
    out = torch.zeros(grid.shape, dtype=torch.bool)
    a, b = first.clamp(min=0).tolist(), [min(int(x) + 1, n) for x, n in zip(last.tolist(), grid.shape)]
    if all(x < y for x, y in zip(a, b)):
        out[a[0]:b[0], a[1]:b[1], a[2]:b[2]] = True
    return out


def _with_parts_rescaled(source: MeshAsset, parts: Sequence[RescaledPart]) -> tuple:
    """(vertices float32 [N', 3], faces int64 [M, 3]): ``source``'s mesh with each of ``parts`` scaled (their faces
    on scaled copies of the vertices)."""
    verts, faces = [source.vertices.cpu().to(torch.float32)], source.faces.cpu().clone()
    n = verts[0].shape[0]
    for i, part in enumerate(parts):
        verts.append(part.vertices(source))
        faces[part.faces] = source.faces.cpu()[part.faces] + (i + 1) * n
    return torch.cat(verts), faces


def _tolerant_target(target: torch.Tensor) -> tuple:
    """(``target`` bool [V, H, W], it dilated, it eroded by a pixel): what :func:`_silhouette_mismatch` compares with."""
    t = target[:, None].to(torch.float32)
    return (target, F.max_pool2d(t, 3, stride=1, padding=1)[:, 0] > 0.5,
            -F.max_pool2d(-t, 3, stride=1, padding=1)[:, 0] > 0.5)


def _silhouette_mismatch(mask: torch.Tensor, tolerant_target: tuple) -> tuple:
    """(pixels where bool [V, H, W] ``mask`` and the target differ by more than a pixel (keying moves outlines by one):
    ``mask`` outside the target dilated, or the target eroded outside ``mask``; pixels where they differ at all, which
    orders scales the first count cannot tell apart) for ``tolerant_target`` (:func:`_tolerant_target`)."""
    target, grown, core = tolerant_target
    return float((mask & ~grown).sum() + (core & ~mask).sum()), float((mask ^ target).sum())


def rescaled_parts(alpha: torch.Tensor, cameras: MVCameras, source: MeshAsset, rebuilt_faces: torch.Tensor) -> list:
    """:class:`RescaledPart` for each of the source's parts rebuilt whole (``rebuilt_faces`` covers all its faces)
    that the edited silhouettes (float [V, 1, H, W]) show uniformly scaled about its centre.

    A 1-D search of the scale (``FIT_SCALES``, refined between the best's neighbours) minimising the pixels where the
    rest of the source plus the scaled part differ from the silhouettes by more than a pixel (at up to
    ``FIT_RESOLUTION`` px); kept when the best scale is inside the searched range, differs from 1 and explains the
    change (``FIT_MAX_RESIDUAL``, ``FIT_MAX_GAIN``). A part scaled x0.7 or x1.3 is then rebuilt as its own source
    solid at that scale, cut by the edited hull, instead of its old solid inside the hull's four-plane shell."""
    from ..raster import rasterize_views

    h, w = alpha.shape[-2:]
    res = (min(h, FIT_RESOLUTION), max(1, round(w * min(h, FIT_RESOLUTION) / h)))
    target = _tolerant_target(F.interpolate(alpha.cpu().to(torch.float32), size=res, mode="area")[:, 0] > 0.5)
    verts, faces = source.vertices.cpu().to(torch.float32), source.faces.cpu()
    rebuilt = rebuilt_faces.cpu()
    out = []
    parts = source.part_ids.cpu()
    for part in parts[rebuilt].unique().tolist():
        mine = parts == part
        if not bool(rebuilt[mine].all()):  # a part trimmed where the views no longer show it is not scaled whole
            continue
        rest = faces[~mine]
        rest_mask = (rasterize_views(verts, rest, cameras, res).mask if rest.shape[0]
                     else torch.zeros_like(target[0]))
        centre = verts[faces[mine].unique()].double().mean(0)

        def mismatch(scale: float) -> tuple:  # (tolerant count, exact count, the part's pixels)
            v = (centre + (verts.double() - centre) * scale).to(torch.float32)
            shown = rasterize_views(v, faces[mine], cameras, res).mask
            return (*_silhouette_mismatch(shown | rest_mask, target), float(shown.sum()))

        coarse = [mismatch(float(x))[:2] for x in FIT_SCALES]
        best = min(range(len(coarse)), key=coarse.__getitem__)
        if best in (0, len(FIT_SCALES) - 1):
            continue
        fine = np.geomspace(FIT_SCALES[best - 1], FIT_SCALES[best + 1], FIT_REFINE_STEPS)
        errs = [mismatch(float(x)) for x in fine]
        k = min(range(len(errs)), key=lambda i: errs[i][:2])
        scale, (err, _, shown) = float(fine[k]), errs[k]
        unchanged, _, shown_before = mismatch(1.0)
        size = max(shown, shown_before, 1.0)  # a shrunk part is judged against what it was
        if abs(np.log(scale)) < np.log(1.0 + FIT_MIN_CHANGE) or err > FIT_MAX_RESIDUAL * size \
                or err > FIT_MAX_GAIN * unchanged:
            continue
        out.append(RescaledPart(mine, centre, scale, err / size))
    return out


def _grow_within(seed: torch.Tensor, allowed: torch.Tensor, steps: int) -> torch.Tensor:
    """Geodesic dilation of a soft grid: ``steps`` one-voxel max-pool steps, each capped by ``allowed``."""
    out = seed
    for _ in range(steps):
        out = torch.maximum(out, torch.minimum(F.max_pool3d(out[None, None], 3, stride=1, padding=1)[0, 0], allowed))
    return out


def _drop_unneeded_solids(added: torch.Tensor, alpha: torch.Tensor, cameras: MVCameras, source: MeshAsset,
                          grid: hull.VoxelGrid, seen: Optional[hull.SourceViews] = None) -> tuple[torch.Tensor, int]:
    """``added`` without the solids no view needs: (occupancy, number of solids dropped).

    Where the edited silhouettes grow past the source's (the "grown" pixels), the four-view hull also holds ghosts: a
    region the new part covers in one direction and the source's thin parts (a spider's legs) in the others is inside
    every edited silhouette and outside the source's, with nothing there. A solid is needed when it covers grown
    pixels that the larger solids do not already cover; solids are taken largest first, and one whose grown pixels
    are at least ``GHOST_COVERED`` covered already is dropped.
    """
    from scipy import ndimage

    inside = (added > hull.ISO_LEVEL).cpu().numpy()
    labels, n = ndimage.label(inside)
    if n < 2:
        return added, 0
    h, w = alpha.shape[-2:]
    dilate = hull.source_silhouette_dilation(h)
    src = (seen.silhouettes(dilate) if seen is not None and tuple(seen.face_id.shape[-2:]) == (h, w)
           else hull.source_silhouettes(source, cameras, h, w, dilate)).cpu()
    grown = (alpha.cpu() > 0.5) & (src < 0.5)  # [V, 1, H, W]
    flat = torch.from_numpy(labels.reshape(-1))
    sizes = torch.bincount(flat, minlength=n + 1)
    covered = torch.zeros_like(grown)
    dropped = torch.zeros(n + 1, dtype=torch.bool)
    for k in (torch.argsort(sizes[1:], descending=True) + 1).tolist():
        mine = hull.point_footprints(grid.points_at((flat == k).nonzero().squeeze(1)), cameras, h, w)[:, None]
        explains = mine & grown
        if int(explains.sum()) and float((explains & covered).sum()) >= GHOST_COVERED * float(explains.sum()):
            dropped[k] = True
            continue
        covered |= mine
    if not bool(dropped.any()):
        return added, 0
    ghost = torch.from_numpy(dropped.numpy()[labels]).to(added.device)
    return torch.where(ghost, torch.zeros_like(added), added), int(dropped.sum())


def new_material_pixels(alpha: torch.Tensor, rgb: torch.Tensor, background, source: MeshAsset, cameras: MVCameras,
                        seen: hull.SourceViews, dilate: bool = True) -> torch.Tensor:
    """bool [V, H, W]: where the edited views show something other than the source: inside the edited silhouettes
    and outside the source's, or in another colour than its render (:func:`changed_from_source`); dilated by
    ``CARVE_TOLERANCE_PX`` (a new part's outline a pixel or two off) when ``dilate``."""
    h = alpha.shape[-2]
    changed, _ = changed_from_source(rgb, background, *_source_colour(source, cameras, h, seen), cameras)
    edited = alpha.cpu() > 0.5
    new = edited & (changed | (seen.face_id.cpu() < 0)[:, None])
    if not dilate:
        return new[:, 0]
    r = _carve_radius(h)
    return F.max_pool2d(new.to(torch.float32), 2 * r + 1, stride=1, padding=r)[:, 0] > 0.5


def carve_in_front_of_unchanged(occupancy: torch.Tensor, grid: hull.VoxelGrid, cameras: MVCameras,
                                seen: hull.SourceViews, new_pixels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``occupancy`` (new material, float [X, Y, Z] on ``grid``) without the voxels some view would show in front of
    the source's surface where it shows that surface unchanged (``new_pixels`` bool [V, H, W] false: see
    :func:`new_material_pixels`; in front: more than ``FRONT_MARGIN_VOXELS`` nearer than ``seen.depth``), and how many
    were carved. Behind the source, or where the view shows new material, a voxel stays (the view cannot see it, or
    it may be what the view shows)."""
    inside = (occupancy > hull.ISO_LEVEL).reshape(-1).nonzero().squeeze(1).cpu()
    if inside.numel() == 0:
        return occupancy, 0
    h, w = new_pixels.shape[-2:]
    source_depth = seen.depth.cpu()
    margin = FRONT_MARGIN_VOXELS * grid.spacing
    carved = torch.zeros(inside.numel(), dtype=torch.bool)
    pix, depth = cameras.project(grid.points_at(inside), h, w)
    for v in range(pix.shape[0]):
        x, y = pix[v, :, 0].floor().long(), pix[v, :, 1].floor().long()
        ok = (x >= 0) & (x < w) & (y >= 0) & (y < h) & (depth[v] > 0)
        x, y = x.clamp(0, w - 1), y.clamp(0, h - 1)
        surface_at = source_depth[v][y, x]
        carved |= ok & (surface_at > 0) & (depth[v] < surface_at - margin) & ~new_pixels[v][y, x]
    if not bool(carved.any()):
        return occupancy, 0
    out = occupancy.clone().reshape(-1)
    out[inside[carved].to(out.device)] = 0.0
    return out.reshape(occupancy.shape), int(carved.sum())


def _drop_small(occ: torch.Tensor, min_voxels: int) -> torch.Tensor:
    from scipy import ndimage

    inside = (occ > hull.ISO_LEVEL).cpu().numpy()
    labels, n = ndimage.label(inside)
    if n == 0:
        return occ
    sizes = np.bincount(labels.ravel())
    small = torch.from_numpy((sizes < min_voxels)[labels] & inside).to(occ.device)
    return torch.where(small, torch.zeros_like(occ), occ)


def component_aware_geometry(alpha: torch.Tensor, cameras: MVCameras, source: MeshAsset, kept_faces: torch.Tensor,
                             grid: int, face_budget: int, check: Callable[[], None],
                             rebuilt_faces: Optional[torch.Tensor] = None, shaped_by: Optional[tuple] = None,
                             seen: Optional[hull.SourceViews] = None, rgb: Optional[torch.Tensor] = None,
                             background=None) -> tuple:
    """The kept source faces exactly, plus smooth new geometry where the edit changed the shape.

    ``shaped_by`` (vertices [N, 3], faces [M, 3] in the world frame: a reconstructor's mesh of the edited views, e.g.
    LGM's) shapes the added material: it is the reconstructor's solid inside the change region the silhouettes found,
    instead of that region rounded by its thickness; the kept faces and the rebuilt source solid are as without it.

    ``rebuilt_faces`` (bool [M], default: those not kept) are the source faces whose solid is rebuilt, cut by the edited
    hull; faces neither kept nor rebuilt (a component the views no longer show) are gone. ``seen``: the source's
    :class:`~.hull.SourceViews` at the views' size, when the caller has them; with them and the views' colours ``rgb``
    [V, 3, H, W] and ``background``, added material the views show the source's surface in front of is carved
    (:func:`carve_in_front_of_unchanged`). The new geometry is one
    closed surface that overlaps the kept solid at the joint, so the result has no boundary edges the kept faces did
    not have (a crack-free, watertight-where-the-source-was join; the overlap is hidden inside the kept solid).

    Returns:
        (vertices float64 [N, 3], faces int64 [M, 3], source face of each face int64 [M] (-1 for new faces), stats).
    """
    kept_idx = kept_faces.cpu().nonzero().squeeze(1)
    src_faces = source.faces.cpu()
    verts_all = source.vertices.cpu().double().numpy()
    kv, kf, kept_local = surface.drop_unused_vertices(verts_all, src_faces[kept_idx].numpy().astype(np.int64),
                                                      return_face_index=True)
    kept_source_faces = kept_idx.numpy()[kept_local]
    both = hull.edited_and_source_solids(alpha, cameras, source, grid, check, seen)
    fine, reach = both.grid, both.hull_edited > 0.01
    hull_edited, hull_source, solid = both.hull_edited.cpu(), both.hull_source.cpu(), both.source_solid.cpu()
    check()
    rebuilt_faces = ~kept_faces.cpu() if rebuilt_faces is None else rebuilt_faces.cpu()
    rebuilt_any = bool(rebuilt_faces.any())
    # rebuilt parts the views show scaled become their own source solid scaled (their old solid is dropped)
    rescaled = rescaled_parts(alpha, cameras, source, rebuilt_faces) if rebuilt_any and shaped_by is None else []
    face_label = rebuilt_faces.to(torch.int64)  # 0: kept, 1: rebuilt from its solid cut by the hull, 2: rescaled
    for part in rescaled:
        face_label[part.faces] = 2
    label = (_nearest_face_label(fine, reach & (solid > 0.01), source, face_label) if rebuilt_any
             else torch.zeros(solid.shape, dtype=torch.int64))
    kept_solid = solid * (label == 0)
    rebuilt = torch.minimum(solid * (label == 1), hull_edited)
    # material where the edited silhouettes grow past the source's, grown back through the hull's slack to the solid
    seeds = hull.open_solid(torch.minimum(hull.gaussian_smooth(hull_edited, hull.HULL_SMOOTH_SIGMA), 1.0 - hull_source), 1)
    if rescaled:
        # the hull of the source with its parts scaled explains the new silhouettes there: only growth past it is added
        # material (else the four views' slack around a scaled part comes back as a shell)
        h, w = alpha.shape[-2:]
        moved = hull.mesh_silhouettes(*_with_parts_rescaled(source, rescaled), cameras, h, w,
                                      hull.source_silhouette_dilation(h)).to(alpha.device)
        explained = hull.silhouette_occupancy(moved, cameras, fine, check, where=seeds > 0).cpu()
        seeds = torch.minimum(seeds, 1.0 - explained)
    scaled = torch.zeros_like(solid)  # the rescaled parts' solids: exact already, not blurred like the hull's
    surfaces: list = []  # rescaled open parts as (vertices, faces): their scaled source faces themselves
    for part in rescaled:
        check()
        v, f = part.vertices(source), src_faces[part.faces]
        shape = hull.mesh_occupancy(v, f, fine, where=reach & _box_mask(fine, v[f.unique()], 2), check_interrupt=check)
        if int((shape > hull.ISO_LEVEL).sum()) < MIN_NEW_VOXELS:
            # an open surface (a neck tube, a sheet) has no solid to voxelize (a stray voxel or two, which the noise
            # filter would drop with the part): its own faces, scaled, are the part
            used, local = np.unique(f.numpy(), return_inverse=True)
            surfaces.append((v.double().numpy()[used], local.reshape(-1, 3).astype(np.int64)))
        scaled = torch.maximum(scaled, torch.minimum(shape.cpu(), hull_edited))
        # the new material the scaled part explains is not an added part
        near = F.max_pool3d(shape.cpu()[None, None], 2 * OVERLAP_VOXELS + 1, stride=1, padding=OVERLAP_VOXELS)[0, 0]
        seeds = torch.where(near > hull.ISO_LEVEL, torch.zeros_like(seeds), seeds)
    allowed, slack = torch.minimum(hull_edited, 1.0 - kept_solid), SLACK_VOXELS
    if shaped_by is not None:
        # the reconstructor's solid inside the edited hull: the seeds and their growth follow its surface (further
        # than the silhouettes' slack, towards the kept solid); away from the change region it is not used
        shape = hull.mesh_occupancy(torch.as_tensor(np.asarray(shaped_by[0]), dtype=torch.float32),
                                    torch.as_tensor(np.asarray(shaped_by[1]), dtype=torch.int64), fine, where=reach,
                                    check_interrupt=check).cpu()
        seeds, allowed, slack = torch.minimum(seeds, shape), torch.minimum(allowed, shape), SHAPED_SLACK_VOXELS
    added = _grow_within(seeds, allowed, slack) if bool((seeds > hull.ISO_LEVEL).any()) else seeds
    carved_in_front, new_px = 0, None
    if rgb is not None and seen is not None and seen.rgb is not None and bool((added > hull.ISO_LEVEL).any()):
        new_px = new_material_pixels(alpha, rgb, background, source, cameras, seen, dilate=False)
        r = _carve_radius(alpha.shape[-2])
        near_new = F.max_pool2d(new_px[:, None].to(torch.float32), 2 * r + 1, stride=1, padding=r)[:, 0] > 0.5
        added, carved_in_front = carve_in_front_of_unchanged(added, fine, cameras, seen, near_new)
    if shaped_by is None:
        # four views see a ball as two crossed cylinders; cut each added solid to the ellipse inscribed in its slices
        # (a reconstructor's surface has no such ridges)
        added = (rounding.round_solids(added, alpha, cameras, fine, check) if new_px is None else
                 rounding.round_solids(added, alpha, cameras, fine, check, shown=new_px, behind=seen.depth,
                                       margin=FRONT_MARGIN_VOXELS * fine.spacing))
    added, ghosts = _drop_unneeded_solids(added, alpha, cameras, source, fine, seen)
    new = _drop_small(torch.maximum(torch.maximum(rebuilt, added), scaled), MIN_NEW_VOXELS)
    stats = {"voxel_size": fine.spacing, "grid_shape": list(fine.shape), "kept_faces": int(len(kf)),
             "rescaled_parts": [round(p.scale, 3) for p in rescaled], "ghost_solids_dropped": ghosts,
             "voxels_carved_in_front": carved_in_front,
             "added_volume_fraction": float((added > 0.5).sum()) / max(float((solid > 0.5).sum()), 1.0)}
    if not bool((new > hull.ISO_LEVEL).any()):
        stats["new_faces"] = 0
        return _with_surfaces(kv, kf, kept_source_faces, stats, surfaces)
    new = torch.maximum(hull.gaussian_smooth(new, NEW_PART_SIGMA if shaped_by is None else SHAPED_PART_SIGMA),
                        torch.minimum(new, scaled))
    if not bool((new > hull.ISO_LEVEL).any()):  # a sliver the smoothing took away: nothing to add
        stats["new_faces"] = 0
        return _with_surfaces(kv, kf, kept_source_faces, stats, surfaces)
    # reach a few voxels into the kept solid next to the new material: the joint overlaps, it never cracks
    reach_in = torch.minimum(F.max_pool3d(new[None, None], 2 * OVERLAP_VOXELS + 1, stride=1,
                                          padding=OVERLAP_VOXELS)[0, 0], kept_solid)
    occ = torch.maximum(new, reach_in)
    check()
    nv, nf = surface.marching_cubes(occ, fine, check)
    # kept closed (no cut where it enters the kept solid): a cut would leave boundary edges, hidden but not watertight
    budget = max(int(face_budget) - len(kf), int(face_budget) // 5) if face_budget else 0
    nv, nf = surface.smooth_and_decimate(nv, nf, budget, NEW_PART_TAUBIN, check_interrupt=check)
    stats["new_faces"] = 0
    return _with_surfaces(kv, kf, kept_source_faces, stats, [(nv, nf)] + surfaces)


def _with_surfaces(verts: np.ndarray, faces: np.ndarray, source_faces: np.ndarray, stats: dict, surfaces: list) -> tuple:
    """The lift's (vertices, faces, source face per face, stats) with new surfaces [(vertices, faces)] appended as new
    faces (source face -1), counted in ``stats["new_faces"]``."""
    for nv, nf in surfaces:
        if not len(nf):
            continue
        faces = np.concatenate([faces, nf + len(verts)])
        verts = np.concatenate([verts, nv])
        source_faces = np.concatenate([source_faces, np.full(len(nf), -1, np.int64)])
        stats["new_faces"] = stats.get("new_faces", 0) + int(len(nf))
    return verts, faces, source_faces, stats


__all__ = ["KeepPolicy", "KEEP_POLICIES", "Components", "KeepDecision", "as_keep_policy", "source_components",
           "prompt_tokens", "edited_by_prompt", "split_names", "decide_kept_faces", "lost_points",
           "removed_by_appearance",
           "component_aware_geometry"]
