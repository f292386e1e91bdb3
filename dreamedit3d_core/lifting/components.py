"""Component-aware lifting (issue 13 item 3): the source's components the edit does not touch keep their exact faces,
new geometry is built only where the edited silhouettes grow past the source's, and parts they no longer show go.

Which components an edit touches comes from three places, in this order: the components the caller names (a keep list,
or an edited list), the edit prompt (a prompt that uses some components' learned tokens, ``<dog>``, keeps those as they
are and edits the components whose tokens it leaves out, ``a <dog> wearing a crown`` edits ``hat``), and the views
themselves (source faces the edited silhouettes no longer cover are removed; a component that loses most of its surface
that way is removed whole).

The new geometry is the edited visual hull where it grows past the source's hull, grown back to the kept solid through
the hull's slack (so it sits on the kept parts, no floating gap), smoothed, plus the source's solid of the components
that are rebuilt, cut by the edited hull; it is one closed surface reaching a few voxels into the kept solid (an
overlap, never a crack). Components the views no longer show are neither kept nor rebuilt.
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
from . import hull, surface


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
#: Each added solid is also blurred by this fraction of its inscribed radius (its thickness, so a thin antenna stays):
#: four views see a ball as two crossed cylinders (+27 % volume); rounding their ridges brings it back towards the ball (measured: added-ball IoU 0.83-0.86 -> 0.87-0.90 on
#: kenney/spot at grid 64 and 128; 0.4 shrinks it too far).
ROUNDING_FRACTION = 0.3
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
#: New solids smaller than this many voxels are noise (a silhouette a pixel off), not geometry.
MIN_NEW_VOXELS = 27
#: Points sampled per unit of surface area (in the views' world, object about 1 across) to label the source's solid.
LABEL_SAMPLES = 60_000
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


def _exposed_points(source: MeshAsset, component_faces: torch.Tensor, cameras: MVCameras,
                    source_core: torch.Tensor) -> torch.Tensor:
    """bool [F, S]: the points of the faces ``component_faces`` (bool [M]) that some view shows outside the rest of
    the source (inside the source's eroded silhouette, outside the dilated silhouette of the other faces): the part of
    a component the views can judge (an arm's stretch inside the torso's outline cannot be seen to go).
    ``source_core``: :func:`_source_core` for the views."""
    from ..raster import rasterize_views

    src_core, device = source_core, source_core.device
    h, w = src_core.shape[-2:]
    r = _carve_radius(h)
    others = source.faces.cpu()[~component_faces.cpu()]
    rest = (rasterize_views(source.vertices.to(torch.float32).cpu(), others, cameras, (h, w)).mask[:, None]
            .to(device=device, dtype=torch.float32) if others.shape[0] else torch.zeros_like(src_core))
    rest = F.max_pool2d(rest, 2 * r + 1, stride=1, padding=r)
    points = _face_points(source)[component_faces.cpu()]
    flat = points.reshape(-1, 3)
    return (_view_coverage(flat, src_core, cameras) & ~_view_coverage(flat, rest, cameras)).any(0).reshape(
        points.shape[:2])


@dataclass(frozen=True)
class KeepDecision:
    """What a component-aware lift keeps: ``kept_faces`` bool [M] over the source's faces, ``removed_faces`` bool [M]
    (faces of components carved away whole: neither kept nor rebuilt), and by component name the ``kept``, ``edited``
    (named by the caller or the prompt), ``removed`` and ``trimmed`` (kept but for faces the edited silhouettes no
    longer cover) ones."""

    kept_faces: torch.Tensor
    kept: tuple
    edited: tuple
    removed: tuple
    trimmed: tuple
    removed_faces: Optional[torch.Tensor] = None

    def rebuilt_faces(self) -> torch.Tensor:
        """bool [M]: source faces whose solid is rebuilt from the views (edited components, trimmed faces)."""
        gone = self.removed_faces if self.removed_faces is not None else torch.zeros_like(self.kept_faces)
        return ~self.kept_faces & ~gone


def decide_kept_faces(source: MeshAsset, components: Components, alpha: torch.Tensor, cameras: MVCameras,
                      keep=KeepPolicy.ALL_BUT_EDITED, names: Sequence[str] = (), prompt: Optional[str] = None,
                      carve: bool = True) -> KeepDecision:
    """Which source faces keep their exact geometry.

    Args:
        keep: the policy. ``names`` are the edited components for "all_but_edited" (added to those the prompt leaves
            out) and the kept ones for "listed".
        alpha: the edited views' silhouettes float [V, 1, H, W]; "all_but_edited" drops faces they no longer show
            (more than half of a face's :func:`lost_points`), and a component
            whole when it loses more than ``REMOVED_COMPONENT_FRACTION`` of the surface the views can judge; unless
            ``carve`` is False (the caller found the silhouettes unchanged).

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
    if carve:
        src_core = _source_core(source, cameras, *alpha.shape[-2:], alpha.device)  # once: each component's test uses it
        lost_pts = lost_points(source, alpha, cameras, src_core)
    covered = lost_pts.double().mean(1) <= 0.5
    area = _face_areas(source.vertices.cpu(), faces)
    removed = torch.zeros(n, dtype=torch.bool)
    for i in comp[lost_pts.any(1)].unique().tolist():
        if not bool(kept_comp[i]):
            continue
        mine = comp == i
        exposed = _exposed_points(source, mine, cameras, src_core)
        weight = area[mine][:, None] / _FACE_SAMPLES.shape[0]
        seen = float((weight * exposed).sum())
        removed[i] = seen > 0 and float((weight * (exposed & lost_pts[mine])).sum()) > REMOVED_COMPONENT_FRACTION * seen
    trimmed = kept_comp & ~removed & torch.zeros(n, dtype=torch.bool).index_fill_(0, comp[~covered].unique(), True)
    kept_comp = kept_comp & ~removed
    kept_faces = kept_comp[comp] & covered
    return KeepDecision(kept_faces, tuple(x for i, x in enumerate(components.names) if bool(kept_comp[i])),
                        tuple(components.names[i] for i in sorted(edited)),
                        tuple(x for i, x in enumerate(components.names) if bool(removed[i])),
                        tuple(x for i, x in enumerate(components.names) if bool(trimmed[i])),
                        removed_faces=removed[comp])


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


def _kept_fraction(grid: hull.VoxelGrid, where: torch.Tensor, source: MeshAsset, rebuilt_faces: torch.Tensor
                   ) -> torch.Tensor:
    """float32 [X, Y, Z]: 0 where the nearest source surface is a rebuilt face, 1 elsewhere (only evaluated at
    ``where``)."""
    from scipy.spatial import cKDTree

    verts = source.vertices.cpu().double().numpy()
    faces = source.faces.cpu().numpy()
    pts, fidx = _surface_samples(verts, faces, LABEL_SAMPLES)
    flag = ~rebuilt_faces.cpu().numpy()[fidx]
    out = torch.ones(grid.num_points, dtype=torch.float32)
    sel = where.reshape(-1).cpu().nonzero().squeeze(1)
    if sel.numel() == 0:
        return out.reshape(grid.shape)
    q = grid.points_at(sel).double().numpy()
    _, near = cKDTree(pts).query(q, workers=-1)
    out[sel] = torch.from_numpy(flag[near].astype(np.float32))
    return out.reshape(grid.shape)


def _rounded(added: torch.Tensor, fraction: Optional[float] = None) -> torch.Tensor:
    """Each connected solid of ``added`` blurred by ``fraction`` of its inscribed radius (voxels; none below
    ``NEW_PART_SIGMA``, which the whole new part gets anyway): rounds the ridges the four silhouettes leave."""
    from scipy import ndimage

    inside = (added > hull.ISO_LEVEL).cpu().numpy()
    labels, n = ndimage.label(inside)
    if n == 0:
        return added
    radius = np.asarray(ndimage.maximum(ndimage.distance_transform_edt(inside), labels, np.arange(1, n + 1)))
    fraction = ROUNDING_FRACTION if fraction is None else fraction
    out = added
    for i in np.flatnonzero(fraction * radius > NEW_PART_SIGMA):
        mine = torch.from_numpy(labels == i + 1).to(added.device)
        part = torch.where(mine, added, torch.zeros_like(added))
        out = torch.maximum(torch.where(mine, torch.zeros_like(out), out),
                            hull.gaussian_smooth(part, float(fraction * radius[i])))
    return out


def _grow_within(seed: torch.Tensor, allowed: torch.Tensor, steps: int) -> torch.Tensor:
    """Geodesic dilation of a soft grid: ``steps`` one-voxel max-pool steps, each capped by ``allowed``."""
    out = seed
    for _ in range(steps):
        out = torch.maximum(out, torch.minimum(F.max_pool3d(out[None, None], 3, stride=1, padding=1)[0, 0], allowed))
    return out


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
                             rebuilt_faces: Optional[torch.Tensor] = None, shaped_by: Optional[tuple] = None) -> tuple:
    """The kept source faces exactly, plus smooth new geometry where the edit changed the shape.

    ``shaped_by`` (vertices [N, 3], faces [M, 3] in the world frame: a reconstructor's mesh of the edited views, e.g.
    LGM's) shapes the added material: it is the reconstructor's solid inside the change region the silhouettes found,
    instead of that region rounded by its thickness; the kept faces and the rebuilt source solid are as without it.

    ``rebuilt_faces`` (bool [M], default: those not kept) are the source faces whose solid is rebuilt, cut by the edited
    hull; faces neither kept nor rebuilt (a component the views no longer show) are gone. The new geometry is one
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
    both = hull.edited_and_source_solids(alpha, cameras, source, grid, check)
    fine, reach = both.grid, both.hull_edited > 0.01
    hull_edited, hull_source, solid = both.hull_edited.cpu(), both.hull_source.cpu(), both.source_solid.cpu()
    check()
    rebuilt_faces = ~kept_faces.cpu() if rebuilt_faces is None else rebuilt_faces.cpu()
    rebuilt_any = bool(rebuilt_faces.any())
    kept_share = (_kept_fraction(fine, reach & (solid > 0.01), source, rebuilt_faces) if rebuilt_any
                  else torch.ones_like(solid))
    kept_solid = solid * kept_share
    rebuilt = torch.minimum(solid * (1.0 - kept_share), hull_edited)
    # material where the edited silhouettes grow past the source's, grown back through the hull's slack to the solid
    seeds = hull.open_solid(torch.minimum(hull.gaussian_smooth(hull_edited, hull.HULL_SMOOTH_SIGMA), 1.0 - hull_source), 1)
    allowed, slack = torch.minimum(hull_edited, 1.0 - kept_solid), SLACK_VOXELS
    if shaped_by is not None:
        # the reconstructor's solid inside the edited hull: the seeds and their growth follow its surface (further
        # than the silhouettes' slack, towards the kept solid); away from the change region it is not used
        shape = hull.mesh_occupancy(torch.as_tensor(np.asarray(shaped_by[0]), dtype=torch.float32),
                                    torch.as_tensor(np.asarray(shaped_by[1]), dtype=torch.int64), fine, where=reach,
                                    check_interrupt=check).cpu()
        seeds, allowed, slack = torch.minimum(seeds, shape), torch.minimum(allowed, shape), SHAPED_SLACK_VOXELS
    added = _grow_within(seeds, allowed, slack) if bool((seeds > hull.ISO_LEVEL).any()) else seeds
    if shaped_by is None:
        added = _rounded(added)  # the silhouettes alone leave ridges; a reconstructor's surface has none
    new = _drop_small(torch.maximum(rebuilt, added), MIN_NEW_VOXELS)
    stats = {"voxel_size": fine.spacing, "grid_shape": list(fine.shape), "kept_faces": int(len(kf)),
             "added_volume_fraction": float((added > 0.5).sum()) / max(float((solid > 0.5).sum()), 1.0)}
    if not bool((new > hull.ISO_LEVEL).any()):
        stats["new_faces"] = 0
        return kv, kf, kept_source_faces, stats
    new = hull.gaussian_smooth(new, NEW_PART_SIGMA if shaped_by is None else SHAPED_PART_SIGMA)
    if not bool((new > hull.ISO_LEVEL).any()):  # a sliver the smoothing took away: nothing to add
        stats["new_faces"] = 0
        return kv, kf, kept_source_faces, stats
    # reach a few voxels into the kept solid next to the new material: the joint overlaps, it never cracks
    reach_in = torch.minimum(F.max_pool3d(new[None, None], 2 * OVERLAP_VOXELS + 1, stride=1,
                                          padding=OVERLAP_VOXELS)[0, 0], kept_solid)
    occ = torch.maximum(new, reach_in)
    check()
    nv, nf = surface.marching_cubes(occ, fine, check)
    # kept closed (no cut where it enters the kept solid): a cut would leave boundary edges, hidden but not watertight
    budget = max(int(face_budget) - len(kf), int(face_budget) // 5) if face_budget else 0
    nv, nf = surface.smooth_and_decimate(nv, nf, budget, NEW_PART_TAUBIN, check_interrupt=check)
    stats["new_faces"] = int(len(nf))
    verts = np.concatenate([kv, nv]) if len(nf) else kv
    faces = np.concatenate([kf, nf + len(kv)]) if len(nf) else kf
    source_faces = np.concatenate([kept_source_faces, np.full(len(nf), -1, np.int64)])
    return verts, faces, source_faces, stats


__all__ = ["KeepPolicy", "KEEP_POLICIES", "Components", "KeepDecision", "as_keep_policy", "source_components",
           "prompt_tokens", "edited_by_prompt", "split_names", "decide_kept_faces", "lost_points",
           "component_aware_geometry"]
