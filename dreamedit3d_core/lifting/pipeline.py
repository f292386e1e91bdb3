"""``lift_to_mesh``: four views (and their cameras) to a textured triangle mesh, plus the reconstructor plug-in slot.

The recipe (``../shared/design/render-lift.md`` §5): silhouettes -> geometry (visual hull, source-guided occupancy, the
source mesh itself, or a registered reconstruction model) -> marching cubes and cleanup -> xatlas UVs -> depth-tested,
facing-weighted bake with feathered view masks -> 3D nearest fill of unseen texels -> optional texture refinement.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from ..cameras import MVCameras
from ..errors import ConfigError, LiftError
from ..geometry import SourceFrame
from ..progress import Progress, as_progress
from ..types import ComponentMasks, LiftedMesh, MeshAsset
from . import bake, hull, surface
from . import components as component_lift
from .views import (AUTO_BACKGROUND, DEFAULT_KEY_THRESHOLD, add_background_coloured_source, background_rows, check_masks,
                    check_views, describe_unkeyable, key_background, key_views_auto, register_to_source, shift_images,
                    unkeyable_views)


class LiftMode(str, Enum):
    """Where the lifted geometry comes from (a ``str`` Enum: the plain strings are accepted everywhere)."""

    #: The visual hull of the four silhouettes: a preview-quality block-out (four views cannot see concavities, and
    #: parts hidden behind others in every view become slabs). Used when there is no source and no reconstructor.
    HULL = "hull"
    #: The source's solid where the edited silhouettes still cover it, plus the edited hull where they grow past it.
    SOURCE_GUIDED = "source_guided"
    #: The source mesh exactly, re-textured from the views (appearance edits).
    KEEP_SOURCE = "keep_source"
    #: The source's components the edit does not touch keep their exact faces and texture; smooth new geometry only
    #: where the edited silhouettes grow past the source's; parts they no longer show are removed (``components``).
    COMPONENT_AWARE = "component_aware"


MODES = tuple(m.value for m in LiftMode)
#: Weight of a view's silhouette band (inside the mask, outside its eroded core) relative to its core.
EDGE_BAND_WEIGHT = 1e-4
#: Outline tolerance, in pixels at 256 px, within which edited and source silhouettes count as the same shape.
SILHOUETTE_TOLERANCE_PX = 2.0
#: Source-guided lifting keeps the source mesh exactly when no view's silhouette changed by more than this fraction of
#: the source's area beyond that tolerance (measured: keyed renders of unedited assets 0.1-0.6 %, a removed arm 3-8 %).
SILHOUETTE_CHANGE_FRACTION = 0.01
#: (elevation, azimuth offset) in degrees of the extra source renders used as that prior: two from above, two from below.
SOURCE_PRIOR_VIEWS = ((70.0, 45.0), (-60.0, 45.0))

_RECONSTRUCTORS: dict = {}


def register_reconstructor(name: str, fn: Callable, overwrite: bool = False) -> None:
    """Make a reconstruction model (LRM/InstantMesh/Hunyuan3D-2mv type) available to ``lift_to_mesh(reconstructor=name)``.

    The function replaces only the geometry step; cleanup, UVs and the bake from the views stay ours. Contract::

        fn(rgb, alpha, cameras, *, grid, device) -> (vertices, faces)

    with ``rgb`` float [V, 3, H, W] in 0..1, ``alpha`` float [V, 1, H, W] in 0..1, ``cameras`` the views' :class:`MVCameras`,
    ``grid`` the requested resolution (a hint), and the result as tensors or arrays: vertices float [N, 3] in OUR world frame
    (OpenGL y-up, the asset's front facing +x, the object inside about [-0.5, 0.5]^3, as the views show it) and faces int
    [M, 3] with outward winding. Weights are the plug-in's business (loaded from the user's folders); nothing is downloaded.
    A function that also takes a ``progress`` keyword gets the lift's :class:`~dreamedit3d_core.progress.Progress`: it
    should call ``progress.check_interrupt()`` at least once a second in its long loops.

    Raises:
        ConfigError: a bad name, a non-callable, or a taken name without ``overwrite``.
    """
    if not isinstance(name, str) or not name or name in MODES:
        raise ConfigError(f"reconstructor name must be a non-empty string other than {list(MODES)}, got {name!r}")
    if not callable(fn):
        raise ConfigError(f"reconstructor {name!r} must be callable, got {type(fn).__name__}")
    if name in _RECONSTRUCTORS and not overwrite:
        raise ConfigError(f"reconstructor {name!r} is already registered; pass overwrite=True to replace it")
    _RECONSTRUCTORS[name] = fn


def unregister_reconstructor(name: str) -> None:
    _RECONSTRUCTORS.pop(name, None)


def list_reconstructors() -> tuple:
    """Names registered with :func:`register_reconstructor`, sorted."""
    return tuple(sorted(_RECONSTRUCTORS))


def registered_reconstructor(name: str) -> Optional[Callable]:
    """The function registered as ``name``, or None (lets a caller that registers for one run put back what was there)."""
    return _RECONSTRUCTORS.get(name)


def as_lift_mode(mode) -> LiftMode:
    """``mode`` (a :class:`LiftMode` or its string value) as a :class:`LiftMode`.

    Raises:
        ConfigError: an unknown mode.
    """
    try:
        return LiftMode(mode)
    except ValueError:
        raise ConfigError(f"unknown lift mode {mode!r}; valid modes are {list(MODES)}") from None


def best_mode(has_source: bool, reconstructor: Optional[str] = None) -> tuple:
    """What a lift should use when the caller does not choose, as (mode, reconstructor name or None): component-aware
    geometry when the views come from a source asset (with ``reconstructor``, when given, shaping the new parts only);
    else ``reconstructor`` when given; else the first reconstructor registered with :func:`register_reconstructor`;
    else the visual hull, a preview-quality block-out."""
    if has_source:
        return LiftMode.COMPONENT_AWARE, reconstructor
    if reconstructor is not None:
        return LiftMode.HULL, reconstructor
    registered = list_reconstructors()
    return LiftMode.HULL, (registered[0] if registered else None)


def lift_alpha(mode, source_alpha: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The silhouettes to give a lift in ``mode``: the source render's own ``source_alpha`` when the mode keeps the
    source's geometry as it is ("keep_source": an appearance edit, whose views need no keying), else None (the lift
    keys the views, whose silhouettes may have changed)."""
    return source_alpha if as_lift_mode(mode) == LiftMode.KEEP_SOURCE else None


def _check_options(mode, source, grid, texture_size, face_budget, refine_steps, reconstructor):
    mode = as_lift_mode(mode)
    if mode != "hull" and source is None:
        raise ConfigError(f"mode {mode.value!r} needs the source asset (source=MeshAsset); use mode='hull' without one")
    if source is not None and not isinstance(source, MeshAsset):
        raise ConfigError(f"source must be a MeshAsset, got {type(source).__name__}")
    if mode == "keep_source" and source.faces.shape[0] == 0:
        raise LiftError("the source mesh has no faces; it cannot be re-textured")
    if not (16 <= int(grid) <= 512):
        raise ConfigError(f"grid must be within 16..512, got {grid}")
    if int(texture_size) != 0 and not (64 <= int(texture_size) <= 8192):
        raise ConfigError(f"texture_size must be 0 (vertex colours only) or within 64..8192, got {texture_size}")
    if int(face_budget) < 0 or 0 < int(face_budget) < 100:
        raise ConfigError(f"face_budget must be 0 (no decimation) or at least 100, got {face_budget}")
    if int(refine_steps) < 0:
        raise ConfigError(f"refine_steps must be >= 0, got {refine_steps}")
    if refine_steps and not texture_size:
        raise ConfigError("refine_steps refines the texture: set texture_size > 0")
    if reconstructor is not None:
        if reconstructor not in _RECONSTRUCTORS:
            raise ConfigError(f"unknown reconstructor {reconstructor!r}; registered: {list(list_reconstructors())}")
        if mode in ("keep_source", "source_guided"):
            raise ConfigError(f"mode {mode.value!r} keeps the source geometry; it cannot use a reconstructor (use "
                              "'hull', or 'component_aware' where it shapes the new parts only)")


def _accepts_progress(fn: Callable) -> bool:
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "progress" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _run_reconstructor(name, rgb, alpha, cameras, grid, device, progress=None) -> tuple[np.ndarray, np.ndarray]:
    fn = _RECONSTRUCTORS[name]
    extra = {"progress": progress} if progress is not None and _accepts_progress(fn) else {}
    out = fn(rgb, alpha, cameras, grid=int(grid), device=device, **extra)
    try:
        verts, faces = out
        verts = np.asarray(verts.detach().cpu() if isinstance(verts, torch.Tensor) else verts, np.float64)
        faces = np.asarray(faces.detach().cpu() if isinstance(faces, torch.Tensor) else faces, np.int64)
    except (TypeError, ValueError) as err:
        raise LiftError(f"reconstructor {name!r} must return (vertices [N, 3], faces [M, 3]): {err}") from None
    if verts.ndim != 2 or verts.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3 or faces.shape[0] == 0:
        raise LiftError(f"reconstructor {name!r} returned vertices {list(verts.shape)} and faces {list(faces.shape)}; "
                        "expected a non-empty [N, 3] / [M, 3] mesh")
    if not np.isfinite(verts).all() or faces.min() < 0 or faces.max() >= len(verts):
        raise LiftError(f"reconstructor {name!r} returned NaN vertices or faces indexing missing vertices")
    return verts, faces


def _hull_geometry(alpha, cameras, grid, check) -> tuple[np.ndarray, np.ndarray, dict]:
    fine = hull.fit_grid(lambda g: hull.silhouette_occupancy(alpha, cameras, g, check), grid, "visual hull")
    occ = hull.silhouette_occupancy(alpha, cameras, fine, check)
    occ = hull.keep_main_solids(hull.gaussian_smooth(occ, hull.HULL_SMOOTH_SIGMA))
    verts, faces = surface.marching_cubes(occ, fine, check)
    return verts, faces, {"voxel_size": fine.spacing, "grid_shape": list(fine.shape)}


def silhouettes_agree(alpha: torch.Tensor, source_alpha: torch.Tensor,
                      fraction: float = SILHOUETTE_CHANGE_FRACTION) -> tuple[bool, float]:
    """Whether the edited silhouettes show the source's shape in every view, and the largest change found.

    A view's change is the area the edit grew past the source's silhouette dilated by ``SILHOUETTE_TOLERANCE_PX`` (at
    256 px) plus the area it lost inside the source's eroded silhouette, as a fraction of the source's area: keying and
    antialiasing move outlines by a pixel or two, an added hat or a removed arm moves a region.
    """
    h = alpha.shape[-2]
    r = max(1, round(SILHOUETTE_TOLERANCE_PX * h / 256))
    edited, src = (alpha > 0.5).to(torch.float32), (source_alpha > 0.5).to(torch.float32)
    grown = edited * (1 - torch.nn.functional.max_pool2d(src, 2 * r + 1, stride=1, padding=r))
    lost = (-torch.nn.functional.max_pool2d(-src, 2 * r + 1, stride=1, padding=r)) * (1 - edited)
    change = (grown + lost).flatten(1).sum(1) / src.flatten(1).sum(1).clamp(min=1.0)
    worst = float(change.max())
    return worst <= fraction, worst


def _source_mesh(source: MeshAsset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The source's exact mesh as a lift's geometry: (vertices float64 [N, 3] (those its faces use), faces int64
    [M, 3], the source face each face is int64 [M])."""
    verts = source.vertices.detach().cpu().double().numpy()
    faces = source.faces.detach().cpu().numpy().astype(np.int64)
    return surface.drop_unused_vertices(verts, faces, return_face_index=True)


def _source_guided_geometry(alpha, cameras, source, grid, check) -> tuple[np.ndarray, np.ndarray, dict]:
    """The source's exact mesh when the edited silhouettes agree with it (an appearance edit, or none), else the
    source-guided occupancy surface."""
    h, w = alpha.shape[-2:]
    agree, change = silhouettes_agree(alpha, hull.source_silhouettes(source, cameras, h, w))
    if agree:
        verts, faces, kept = _source_mesh(source)
        return verts, faces, {"geometry": "source", "silhouette_change": change, "added_volume_fraction": 0.0,
                              "source_faces": kept}
    both = hull.edited_and_source_solids(alpha, cameras, source, grid, check)
    fine, hull_edited, hull_source, solid = both.grid, both.hull_edited, both.hull_source, both.source_solid
    occ = hull.source_guided_occupancy(hull_edited, hull_source, solid)
    occ = hull.keep_main_solids(occ)
    verts, faces = surface.marching_cubes(occ, fine, check)
    added = float((torch.minimum(hull_edited, 1 - hull_source) > 0.5).sum()) / max(float((occ > 0.5).sum()), 1.0)
    return verts, faces, {"voxel_size": fine.spacing, "grid_shape": list(fine.shape), "added_volume_fraction": added,
                          "geometry": "source_guided_occupancy", "silhouette_change": change}


def _source_prior_views(source: MeshAsset, cameras: MVCameras, size: int, background) -> list:
    """Renders of the source from above and below: a colour prior, depth-tested against the source's own depth."""
    from ..render import render_views

    views = []
    for elev, offset in SOURCE_PRIOR_VIEWS:
        azimuths = torch.tensor([0.0, 180.0], dtype=torch.float64) + float(cameras.azimuth_deg[0]) + offset
        cams = MVCameras(elevation_deg=elev, azimuth_deg=azimuths, fov_deg=cameras.fov_deg, radius=cameras.radius)
        r = render_views(source, cams, resolution=size, background=tuple(background), ssaa=1)
        views.append(bake.ViewSet(r.rgb, bake.feathered_mask(r.alpha, 1, 0), cams, r.depth[:, 0], alpha=r.alpha,
                                   background=tuple(background), on_surface_only=True))
    return views


#: Stages reported to ``progress`` (step i of this many).
NUM_STAGES = 5


@dataclass
class _LiftState:
    """What the stages of one lift hand each other (internal; world = our MVDream frame)."""

    rgb: torch.Tensor
    cameras: MVCameras
    device: torch.device
    progress: Progress
    source: Optional[MeshAsset] = None
    alpha: Optional[torch.Tensor] = None
    background: Optional[torch.Tensor] = None  # float32 [V, 3]: each view's background colour
    verts: Optional[np.ndarray] = None
    faces: Optional[np.ndarray] = None
    source_faces: Optional[np.ndarray] = None  # int64 [M]: the source face each face is (-1: a new face), or None
    parts: dict = field(default_factory=dict)  # component-aware options: keep, names, prompt, masks
    stats: dict = field(default_factory=dict)
    _seen: Optional[tuple] = None  # (the source they show, its hull.SourceViews)

    def check(self) -> None:
        self.progress.check_interrupt()

    def source_views(self) -> hull.SourceViews:
        """The source seen by the views' cameras at their size (face ids, unlit colour), rendered once per lift for
        every stage that compares the views with it (again only if a stage replaced the source)."""
        if self._seen is None or self._seen[0] is not self.source:
            h, w = (self.rgb if self.alpha is None else self.alpha).shape[-2:]
            self._seen = (self.source, hull.source_views(self.source, self.cameras, h, w))
        return self._seen[1]


def _silhouettes(st: _LiftState, alpha, background, key_threshold) -> None:
    """Stage 1: each view's silhouette and background colour.

    Given ``alpha`` is used as is. Otherwise the background is keyed out: with ``background="auto"`` each view's colour is
    read off its border (sampled views: the white or grey the sampler was asked for); a view whose border is not a flat
    background cannot be keyed, and takes the source's silhouette when a source is given (one warning), else fails.
    """
    rgb, v = st.rgb, st.rgb.shape[0]
    auto = isinstance(background, str)
    if auto and background != AUTO_BACKGROUND:
        raise ConfigError(f"background must be {AUTO_BACKGROUND!r} or an RGB triple in 0..1, got {background!r}")
    keyed_auto, estimate = key_views_auto(rgb, key_threshold) if auto else (None, None)
    st.background = estimate.colors if auto else background_rows(background, v, st.device)
    if alpha is not None:
        alpha = alpha.to(device=st.device, dtype=torch.float32).clamp(0.0, 1.0)
        st.alpha = alpha[:, None] if alpha.ndim == 3 else alpha
        st.stats["silhouettes"] = "alpha"
        check_masks(st.alpha, keyed=False)
        return
    if not auto:
        st.alpha = key_background(rgb, st.background, key_threshold)
        st.stats["silhouettes"] = "keyed"
        _match_source_render(st, key_threshold)
        check_masks(st.alpha, keyed=True, background=st.background)
        return
    st.alpha = keyed_auto
    st.stats["silhouettes"] = "keyed_auto"
    _match_source_render(st, estimate.thresholds)
    bad = unkeyable_views(estimate)
    if bad and st.source is None:
        raise LiftError(describe_unkeyable(estimate, key_threshold))
    if bad:
        h, w = rgb.shape[-2:]
        warnings.warn(describe_unkeyable(estimate, key_threshold) + "; using the source's silhouettes for them",
                      stacklevel=3)
        source_alpha = hull.source_silhouettes(st.source, st.cameras, h, w)
        st.alpha[bad] = source_alpha[bad]
        st.stats["silhouettes"] = "keyed_auto+source"
        st.stats["source_silhouette_views"] = len(bad)
    check_masks(st.alpha, keyed=True, background=st.background, views=[i for i in range(v) if i not in bad])


def _match_source_render(st: _LiftState, threshold) -> None:
    """Keyed views against a render of the source: each view moved by the whole pixels that register it to the source
    (``views.register_to_source``: sampled views sit a pixel or two off), then the source's surface that has the
    background's colour put back where the views still show it (``views.add_background_coloured_source``: a white van
    on white keys as a few dark islands otherwise)."""
    v, _, h, w = st.rgb.shape
    if st.source is None or h != w or h % 8 or h > 1024:  # the render stage makes square views, 8 px multiples
        return
    r = st.source_views()
    bg = st.background.to(st.device).view(v, 3, 1, 1)
    shifts, _ = register_to_source(st.rgb, r.rgb.to(st.device) + (1.0 - r.alpha.to(st.device)) * bg)
    if bool(shifts.any()):
        st.rgb = shift_images(st.rgb, shifts, st.background.to(st.device))
        st.alpha = shift_images(st.alpha, shifts, torch.zeros(v, 1, device=st.device))
        st.stats["view_shift_px"] = shifts.tolist()
    colour = r.rgb / r.alpha.clamp(min=1e-6)  # over black: rgb = coverage x colour
    before = float((st.alpha > 0.5).sum())
    st.alpha = add_background_coloured_source(st.alpha, st.rgb, st.background, threshold, colour, r.alpha)
    added = float((st.alpha > 0.5).sum()) - before
    if added > 0:
        st.stats["source_coloured_pixels"] = int(added)


def _component_aware(st: _LiftState, grid: int, face_budget: int, reconstructor: Optional[str] = None) -> dict:
    """Stage 2 for "component_aware": the kept components' source faces exactly and new geometry where the edit
    changed the shape (``component_lift.component_aware_geometry``); the source as it is when nothing changed shape.
    With a ``reconstructor``, its mesh of the edited views shapes the new material (inside the edited hull's change
    region only); the kept components stay the source's faces."""
    opts = st.parts
    policy = component_lift.as_keep_policy(opts.get("keep", component_lift.KeepPolicy.ALL_BUT_EDITED))
    comps = component_lift.source_components(st.source, st.cameras, opts.get("masks"))
    seen = st.source_views()
    agree, change = silhouettes_agree(st.alpha, seen.silhouettes().to(st.alpha.device))

    def decide():  # unchanged silhouettes carve nothing (a low-poly part's outline a keyed pixel off is not a removal)
        return component_lift.decide_kept_faces(st.source, comps, st.alpha, st.cameras, policy, opts.get("names", ()),
                                                opts.get("prompt"), carve=not agree, rgb=st.rgb,
                                                background=st.background, seen=seen)

    decision = decide()
    fitted = {"deformed": False}
    if not agree and not decision.reshaped and not decision.removed:
        # a chunk of the surface moved ("a longer ear"), not a whole part (rescaled or removed whole above): the source
        # deformed to the views, when that explains the change, is the source the rest of the lift keeps faces of,
        # textures and exports (same faces, UVs, parts)
        from dataclasses import replace

        from .deform import fit_deformation

        movable = None  # "listed": the listed components stay as they are
        if policy == component_lift.KeepPolicy.LISTED:
            listed = [comps.index(n) for n in component_lift.split_names(opts.get("names", ()))]
            listed = torch.tensor([i for i in listed if i is not None], dtype=torch.int64)
            movable = ~torch.isin(comps.face_component.cpu(), listed)
        fit = fit_deformation(st.source, st.alpha, st.cameras, rgb=st.rgb, movable_faces=movable,
                              check_interrupt=st.check)
        fitted.update(deformed=fit.accepted, **fit.stats)
        if fit.accepted:
            st.source = replace(st.source, vertices=fit.vertices)
            seen = st.source_views()
            fitted["silhouette_change_before_deform"] = change
            agree, change = silhouettes_agree(st.alpha, seen.silhouettes().to(st.alpha.device))
            decision = decide()
        else:
            fitted["deform_rejected"] = fit.reason
    info = {"silhouette_change": change, "keep": policy.value, "components_kept": list(decision.kept),
            "components_edited": list(decision.edited), "components_removed": list(decision.removed),
            "components_trimmed": list(decision.trimmed),
            "components_reshaped": list(decision.reshaped), **fitted}
    if agree and policy == component_lift.KeepPolicy.ALL_BUT_EDITED and not decision.removed:
        st.verts, st.faces, st.source_faces = _source_mesh(st.source)
        return {**info, "geometry": "source", "added_volume_fraction": 0.0, "kept_faces": int(len(st.faces)),
                "new_faces": 0}
    shaped_by = None
    if reconstructor is not None:
        shaped_by = _run_reconstructor(reconstructor, st.rgb, st.alpha, st.cameras, grid, st.device, st.progress)
        info.update(reconstructor=reconstructor, added_from="reconstructor")
    st.verts, st.faces, st.source_faces, more = component_lift.component_aware_geometry(
        st.alpha, st.cameras, st.source, decision.kept_faces, grid, face_budget, st.check, decision.rebuilt_faces(),
        shaped_by=shaped_by, seen=seen, rgb=st.rgb, background=st.background)
    return {**info, **more, "geometry": "component_aware"}


def _geometry(st: _LiftState, mode: LiftMode, grid: int, reconstructor: Optional[str], face_budget: int = 0) -> None:
    """Stage 2: raw geometry (vertices float64 [N, 3], faces int64 [M, 3]) in our world frame."""
    if mode == LiftMode.KEEP_SOURCE:
        st.verts, st.faces, st.source_faces = _source_mesh(st.source)
        st.stats["geometry"] = "source"
        return
    if mode == LiftMode.COMPONENT_AWARE:
        st.stats.update(_component_aware(st, grid, face_budget, reconstructor))
        return
    if reconstructor is not None:
        st.verts, st.faces = _run_reconstructor(reconstructor, st.rgb, st.alpha, st.cameras, grid, st.device,
                                                st.progress)
        st.stats["reconstructor"] = reconstructor
        return
    if mode == LiftMode.HULL:
        st.verts, st.faces, info = _hull_geometry(st.alpha, st.cameras, grid, st.check)
    else:
        st.verts, st.faces, info = _source_guided_geometry(st.alpha, st.cameras, st.source, grid, st.check)
        st.source_faces = info.pop("source_faces", None)
    st.stats.update(info)


def _cleanup(st: _LiftState, mode: LiftMode, face_budget: int, reconstructor: Optional[str]) -> None:
    """Stage 3: smoothing and decimation (the source keeps its exact geometry, and so do the component-aware lift's kept
    faces, whose new part was smoothed on its own; a reconstructor's mesh is not smoothed)."""
    if mode not in (LiftMode.KEEP_SOURCE, LiftMode.COMPONENT_AWARE) and st.stats.get("geometry") != "source":
        iterations = 0 if reconstructor is not None else surface.TAUBIN_ITERATIONS
        st.verts, st.faces = surface.smooth_and_decimate(st.verts, st.faces, int(face_budget), iterations,
                                                         check_interrupt=st.check)
    if st.faces.shape[0] == 0:
        raise LiftError("the lifted mesh has no faces; nothing to texture")


def _colour(st: _LiftState, texture_size: int) -> dict:
    """Stage 4: vertex colours and (``texture_size`` > 0) a UV atlas and its baked texture.

    The views' colour is depth-tested against the lifted mesh; the source stands in only where no view sees the surface.
    Returns the mesh fields (vertices, faces, uv, texture, vertex_colors) on ``st.device``.
    """
    rgb, alpha, device = st.rgb, st.alpha, st.device
    v_t = torch.from_numpy(st.verts).to(device=device, dtype=torch.float32)
    f_t = torch.from_numpy(st.faces).to(device)
    normals = bake.vertex_normals(v_t, f_t)
    h, w = rgb.shape[-2:]
    frags = bake.render_fragments(v_t, f_t, st.cameras, h, w)
    # inside the silhouette but outside its eroded, feathered core a view still counts, faintly: its (un-mixed) colour
    # beats the source prior and the nearest-neighbour fill for surface only seen near silhouettes
    weight_mask = bake.feathered_mask(alpha, max(1, h // 256), max(1, h // 256)) + EDGE_BAND_WEIGHT * (alpha > 0.5)
    view_sets = [bake.ViewSet(rgb, weight_mask, st.cameras, frags.depth, alpha=alpha, background=st.background)]
    # the source's colours stand in only where no view sees the surface (render-lift.md §5 step 5; the design's blend
    # at weight 1e-3 tinted what the views see at grazing angles, measured -2 dB in the round trip)
    prior_sets = (_source_prior_views(st.source, st.cameras, min(128, (h // 8) * 8), (1.0, 1.0, 1.0))
                  if st.source is not None else [])
    st.check()
    kept = (st.source, torch.from_numpy(st.source_faces).to(device)) if st.source_faces is not None else None
    # without a texture the vertex colours are the lift's colour: the source's own where the edit left it alone (with
    # one, they only fill texels no view sees, and the texture takes that decision itself)
    vertex_colors, vstats = bake.bake_vertex_colors(v_t, normals, view_sets, prior_sets, check_interrupt=st.check,
                                                    source=None if texture_size else kept, faces=f_t)
    st.stats.update(vstats)
    out = dict(vertices=v_t, faces=f_t, uv=None, texture=None, vertex_colors=vertex_colors)
    if not texture_size:
        return out
    st.check()
    own = _source_texture_layout(st)
    if own is not None:
        # every face is a source face: the source's own UVs and texture, only the texels the edit changed re-baked
        uv, image, covered = own
        out["uv"] = uv.to(device=device, dtype=torch.float32)
        texture, tstats = bake.bake_texture(v_t, f_t, normals, out["uv"], view_sets, image.shape[0], vertex_colors,
                                            st.check, prior_sets, kept)
        out["texture"] = bake.write_into_image(image, texture, covered)
        st.stats.update(tstats, texture_layout="source")
        return out
    textured = _image_textured_faces(st)
    quadrant = None if textured is None else _canvas_quadrant(st.source.textures[0].shape[0], int(texture_size))
    atlas_size = int(texture_size) if quadrant is None else quadrant
    packed = _source_image_faces(st) if quadrant is None else None  # several images, or one the quadrants cannot take
    vmap, faces_uv, uv_np = surface.uv_atlas(st.verts, st.faces, atlas_size, st.check)
    vmap_t = torch.from_numpy(vmap).to(device)
    out.update(vertices=v_t[vmap_t], faces=torch.from_numpy(faces_uv).to(device), uv=torch.from_numpy(uv_np).to(device),
               vertex_colors=vertex_colors[vmap_t])
    st.check()
    # the mesh is (partly) the source's own (keep_source, component_aware, or source_guided where nothing changed shape):
    # keep its texture on the components the views agree with
    out["texture"], tstats = bake.bake_texture(out["vertices"], out["faces"], normals[vmap_t], out["uv"], view_sets,
                                               atlas_size, out["vertex_colors"], st.check, prior_sets, kept)
    st.stats.update(tstats, texture_layout="atlas")
    if quadrant is not None:
        keeps = textured.to(device) & bake.faces_keeping_source(out["texture"], out["uv"], out["faces"], st.source,
                                                                kept[1], st.check)
        if bool(keeps.any()):
            out.update(_source_canvas(st, out, keeps, v_t, vertex_colors, quadrant))
            st.stats.update(texture_layout="source+atlas", source_layout_faces=int(keeps.sum()), atlas_size=quadrant)
    elif packed is not None:
        keeps = packed.to(device) & bake.faces_keeping_source(out["texture"], out["uv"], out["faces"], st.source,
                                                              kept[1], st.check)
        if bool(keeps.any()):
            canvas, cstats = _packed_canvas(st, out, keeps, v_t, vertex_colors)
            st.stats.update(cstats)
            if canvas is not None:
                out.update(canvas)
                st.stats.update(texture_layout="source+atlas", atlas_size=atlas_size)
    return out


# Canvas layout (a lift whose faces are partly the source's own, of a source textured by one square image that the
# source layout cannot take whole: overlapping UVs, untextured or new faces): the source's image in the top-left
# quadrant of a square canvas, the atlas of the other faces in the top-right one. Re-baking kept faces into an atlas
# resamples their texture and, from afar, mipmaps it differently from the source's own layout (the truck: 29.5 dB
# from held-out cameras mipmapped, 43.0 dB without mipmaps); in a quadrant that is the image's side times a power of
# two, the mip levels the renderer picks are the source's own.

#: The canvas's quadrants grow from half the source image's side towards ``texture_size`` up to this side: the canvas
#: is at most 4096², or the source image's own side when that is larger (an 8K image: an 8K canvas of 4K quadrants).
MAX_CANVAS_QUADRANT = 2048


def _image_textured_faces(st: _LiftState) -> Optional[torch.Tensor]:
    """bool [M]: the lifted faces that are source faces textured by the source's single square image alone (white
    base colour, UVs inside 0..1), or None when the source is not textured that way or no face is."""
    src, sf = st.source, st.source_faces
    if src is None or sf is None or src.uv is None or len(src.textures) != 1 or src.vertex_colors is not None:
        return None
    image = src.textures[0]
    if image.ndim != 3 or image.shape[0] != image.shape[1] or image.shape[0] % 2 or src.face_textures is None:
        return None
    sf_t = torch.from_numpy(sf).to(src.faces.device)
    fid = sf_t.clamp(min=0)
    corner_uv = src.uv[src.faces[fid]]
    textured = ((sf_t >= 0) & (src.face_textures[fid] == 0) & (src.face_base_color[fid] == 1).all(-1)
                & ((corner_uv >= 0) & (corner_uv <= 1)).flatten(1).all(-1))
    return textured if bool(textured.any()) else None


def _canvas_quadrant(image_size: int, texture_size: int) -> int:
    """Side of each quadrant of the canvas: the source image's size times a power of two, the smallest from half of it
    up that reaches ``texture_size`` (the atlas's side; the canvas is twice that), at most ``MAX_CANVAS_QUADRANT``. The
    image is box-filtered or repeated to it, so every mip level the renderer picks for it is one of the source's own."""
    q = image_size // 2
    while q < texture_size and q < MAX_CANVAS_QUADRANT:
        q *= 2
    return q


def _source_canvas(st: _LiftState, atlas: dict, keeps: torch.Tensor, v_t: torch.Tensor, vertex_colors: torch.Tensor,
                   quadrant: int) -> dict:
    """The mesh fields (vertices, faces, uv, vertex_colors, texture) with the faces ``keeps`` on the source's image
    (top-left quadrant, the source's own UVs) and the others on ``atlas``'s (top-right quadrant)."""
    import torch.nn.functional as F

    device, q = v_t.device, quadrant
    src = st.source
    image = src.textures[0].to(device=device, dtype=torch.float32)
    if image.shape[0] > q:
        image = F.avg_pool2d(image.permute(2, 0, 1)[None], 2)[0].permute(1, 2, 0)
    elif image.shape[0] < q:  # each texel repeated: its box filter by the same factor is the image again
        k = q // image.shape[0]
        image = image.repeat_interleave(k, 0).repeat_interleave(k, 1)
    canvas = torch.empty(2 * q, 2 * q, 3, dtype=torch.float32, device=device)
    canvas[:q, :q], canvas[:q, q:] = image, atlas["texture"]
    canvas[q:] = canvas[:q].flip(0)  # mirrored: filtering across the quadrants' lower edge reads their own colours
    # each kept corner is (lifted vertex, source vertex): a vertex of its own with the source's UV
    lifted = torch.from_numpy(st.faces).to(device)[keeps]
    source = src.faces.to(device)[torch.from_numpy(st.source_faces).to(device)[keeps]]
    pairs, inverse = torch.unique(torch.stack([lifted.reshape(-1), source.reshape(-1)], 1), dim=0, return_inverse=True)
    n = atlas["vertices"].shape[0]
    faces = atlas["faces"].clone()
    faces[keeps] = inverse.reshape(-1, 3) + n
    half = torch.tensor([0.5, 0.5], device=device)
    on_image = src.uv.to(device=device, dtype=torch.float32)[pairs[:, 1]] * 0.5 + torch.tensor([0.0, 0.5], device=device)
    uv = torch.cat([atlas["uv"].to(torch.float32) * 0.5 + half, on_image])
    verts = torch.cat([atlas["vertices"], v_t[pairs[:, 0]]])
    colours = torch.cat([atlas["vertex_colors"], vertex_colors[pairs[:, 0]]])
    used, remap = torch.unique(faces, return_inverse=True)  # atlas vertices only kept faces used go
    return dict(vertices=verts[used], faces=remap.reshape(-1, 3), uv=uv[used], vertex_colors=colours[used],
                texture=canvas)


# Packed canvas (a source with several images, or one image the quadrant canvas cannot take: not square, a base colour
# other than white, UVs that repeat the image): each image the kept faces use gets a copy of its own on the canvas,
# beside the atlas of the other faces, at its own texel size (so the renderer's mip levels are near the source's). A
# copy is the image times the faces' base colour (the lifted mesh has one texture and no material colour), repeated as
# far as the faces' UVs reach: each kept face is moved by whole repeats so its UVs start inside the first one.

#: The packed canvas's side is at most this, or the largest source image's side (rounded up to a power of two) when
#: that is larger; a lift never grows the texture past what the source itself needs.
MAX_CANVAS_SIDE = 4096
#: A kept face whose UVs span more than this many repeats of its image goes to the atlas (its copy would be large).
MAX_IMAGE_REPEATS = 2.0
#: Texels of the image's own continuation (wrapped) around each copy: bilinear filtering and the first mip levels read
#: the image, not a neighbour on the canvas.
CANVAS_MARGIN = 32
#: Copies (margins included) are multiples of this side, so each image's first texel sits on a multiple of
#: CANVAS_MARGIN: the canvas's mip levels average the same blocks of texels as the image's own, up to that size
#: (spider abdomen, a 768² image seen at mip levels 3-4: 8-texel alignment 39.1 dB no edit, 32: see commit).
CANVAS_ALIGN = 64
#: When the copies and the atlas do not fit the cap, the least-used copy is halved, down to 1/this of its size; past
#: that the lift keeps the atlas alone (and says so in stats ``canvas``).
MAX_CANVAS_SHRINK = 8


@dataclass
class _ImageCopy:
    """One source image as the kept faces that use it with one base colour see it, on the packed canvas."""

    texture: int
    colour: torch.Tensor  # float32 [3]: the faces' base colour
    rows: torch.Tensor  # int64 [K]: which of the kept faces use it
    content: tuple  # (texels across, texels down) the faces' shifted UVs reach, at the image's own size
    size: tuple  # (width, height) with margins, multiples of CANVAS_ALIGN
    used: float  # texels of the image the faces cover (which copy to shrink first)
    shrink: int = 1
    at: tuple = (0, 0)  # (x, y) of its top-left texel on the canvas


def _source_image_faces(st: _LiftState) -> Optional[torch.Tensor]:
    """bool [M]: the lifted faces that are source faces textured by one of the source's images (any base colour), or
    None when the source has no image, has vertex colours (a texture cannot carry their product), or no face is."""
    src, sf = st.source, st.source_faces
    if (src is None or sf is None or src.uv is None or not src.textures or src.vertex_colors is not None
            or src.face_textures is None):
        return None
    sf_t = torch.from_numpy(sf).to(src.faces.device)
    textured = (sf_t >= 0) & (src.face_textures[sf_t.clamp(min=0)] >= 0)
    return textured if bool(textured.any()) else None


def _shelf_pack(sizes: list, side: int) -> Optional[list]:
    """Top-left corners (x, y) of rectangles ``sizes`` [(w, h)] packed on shelves in a ``side`` square (tallest
    first), or None when they do not fit."""
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i][1], -sizes[i][0]))
    at, x, y, shelf = [None] * len(sizes), 0, 0, 0
    for i in order:
        w, h = sizes[i]
        if x + w > side:
            x, y, shelf = 0, y + shelf, 0
        if w > side or y + h > side:
            return None
        at[i] = (x, y)
        x, shelf = x + w, max(shelf, h)
    return at


def _image_copies(src: MeshAsset, source_faces: torch.Tensor, shift: torch.Tensor) -> list:
    """The :class:`_ImageCopy` of each (image, base colour) the faces ``source_faces`` [K] use, their corner UVs moved
    by ``shift`` [K, 2] whole repeats."""
    tex = src.face_textures[source_faces]
    colour = src.face_base_color[source_faces].to(torch.float32)
    keys, group = torch.unique(torch.cat([tex[:, None].to(torch.float64), colour.to(torch.float64)], 1), dim=0,
                               return_inverse=True)
    corner_uv = src.uv.to(torch.float64)[src.faces[source_faces]] - shift[:, None]
    t = corner_uv
    area = 0.5 * ((t[:, 1, 0] - t[:, 0, 0]) * (t[:, 2, 1] - t[:, 0, 1])
                  - (t[:, 2, 0] - t[:, 0, 0]) * (t[:, 1, 1] - t[:, 0, 1])).abs()
    copies, m = [], CANVAS_MARGIN
    for g in range(keys.shape[0]):
        rows = (group == g).nonzero().squeeze(1)
        ti = int(keys[g, 0])
        h, w = src.textures[ti].shape[:2]
        reach = corner_uv[rows].amax(1).amax(0)
        # whole CANVAS_MARGIN blocks of texels: the image's rows are laid out from the content's bottom (v = 0), so
        # its texel grid, and the blocks its mip levels and a halved copy average, stay on the canvas's
        content = tuple(-(-max(1, math.ceil(float(r) * n - 1e-6)) // m) * m for r, n in zip(reach.tolist(), (w, h)))
        size = tuple(-(-(c + 2 * m) // CANVAS_ALIGN) * CANVAS_ALIGN for c in content)
        copies.append(_ImageCopy(ti, keys[g, 1:].to(torch.float32), rows, content, size,
                                 float(area[rows].sum()) * w * h))
    return copies


def _copy_texels(image: torch.Tensor, copy: _ImageCopy) -> torch.Tensor:
    """The copy's texels float32 [height, width, 3] at its own size: the image repeated (its UV v = 0 row at the
    content's bottom, CANVAS_MARGIN texels of it wrapped around), times the base colour, then box-filtered by
    ``shrink``."""
    import torch.nn.functional as F

    h, w = image.shape[:2]
    (cu, cv), (sw, sh), m = copy.content, copy.size, CANVAS_MARGIN
    dev = image.device
    rows = h - 1 - torch.remainder(cv - 1 - (torch.arange(sh, device=dev) - m), h)
    cols = torch.remainder(torch.arange(sw, device=dev) - m, w)
    texels = image.to(torch.float32)[rows][:, cols] * copy.colour.to(dev)
    if copy.shrink > 1:
        texels = F.avg_pool2d(texels.permute(2, 0, 1)[None], copy.shrink)[0].permute(1, 2, 0)
    return texels


def _packed_canvas(st: _LiftState, atlas: dict, keeps: torch.Tensor, v_t: torch.Tensor,
                   vertex_colors: torch.Tensor) -> tuple[Optional[dict], dict]:
    """(The mesh fields with the faces ``keeps`` on copies of the source's own images and the others on ``atlas``'s,
    all on one square canvas; stats), or (None, stats saying why) when they do not fit the cap even with the
    least-used copies shrunk ``MAX_CANVAS_SHRINK`` times: the atlas is kept then."""
    src, device = st.source, v_t.device
    idx = keeps.nonzero().squeeze(1)
    sf = torch.from_numpy(st.source_faces).to(src.faces.device)[idx.to(src.faces.device)]
    corner_uv = src.uv.to(torch.float64)[src.faces[sf]]
    shift = torch.floor(corner_uv.amin(1))
    within = ((corner_uv - shift[:, None]).amax(1) <= MAX_IMAGE_REPEATS).all(-1)
    if not bool(within.any()):
        return None, {"canvas": "kept faces repeat their images too often: atlas"}
    idx, sf, shift = idx[within.to(idx.device)], sf[within], shift[within]
    copies = _image_copies(src, sf, shift)
    a = atlas["texture"].shape[0]
    biggest = max(max(t.shape[:2]) for t in src.textures)
    cap = max(MAX_CANVAS_SIDE, 1 << (biggest - 1).bit_length())
    while True:
        sizes = [(a, a)] + [(c.size[0] // c.shrink, c.size[1] // c.shrink) for c in copies]
        side = 1 << (max(max(wh) for wh in sizes) - 1).bit_length()
        placed = None
        while side <= cap and placed is None:
            placed = _shelf_pack(sizes, side)
            side = side if placed is not None else side * 2
        if placed is not None:
            break
        shrinkable = [c for c in copies if c.shrink < MAX_CANVAS_SHRINK]
        if not shrinkable:
            return None, {"canvas": f"the source's images and the atlas do not fit {cap}x{cap}: atlas"}
        min(shrinkable, key=lambda c: c.used).shrink *= 2
    canvas = torch.zeros(side, side, 3, dtype=torch.float32, device=device)
    covered = torch.zeros(side, side, dtype=torch.bool, device=device)
    (ax, ay), copy_at = placed[0], placed[1:]
    canvas[ay:ay + a, ax:ax + a], covered[ay:ay + a, ax:ax + a] = atlas["texture"], True
    for c, at in zip(copies, copy_at):
        c.at = at
        texels = _copy_texels(src.textures[c.texture].to(device), c)
        canvas[at[1]:at[1] + texels.shape[0], at[0]:at[0] + texels.shape[1]] = texels
        covered[at[1]:at[1] + texels.shape[0], at[0]:at[0] + texels.shape[1]] = True
    canvas = bake.pad_gutter(canvas, covered, rings=0)  # the space between copies: their colours, coarser and coarser
    # each kept corner is (lifted vertex, source vertex, copy, shift): a vertex of its own at its place on the copy
    group = torch.empty(len(idx), dtype=torch.int64, device=src.faces.device)
    for g, c in enumerate(copies):
        group[c.rows] = g
    lifted = torch.from_numpy(st.faces).to(src.faces.device)[idx.to(src.faces.device)]
    key = torch.stack([lifted.reshape(-1), src.faces[sf].reshape(-1), group.repeat_interleave(3),
                       shift[:, 0].long().repeat_interleave(3), shift[:, 1].long().repeat_interleave(3)], 1)
    corners, inverse = torch.unique(key, dim=0, return_inverse=True)
    local = src.uv.to(torch.float64)[corners[:, 1]] - corners[:, 3:].to(torch.float64)
    params = torch.tensor([[c.at[0], c.at[1], src.textures[c.texture].shape[1], src.textures[c.texture].shape[0],
                            c.content[1], c.shrink] for c in copies], dtype=torch.float64,
                          device=local.device)[corners[:, 2]]
    x = params[:, 0] + (CANVAS_MARGIN + local[:, 0] * params[:, 2]) / params[:, 5]
    y = params[:, 1] + (CANVAS_MARGIN + params[:, 4] - local[:, 1] * params[:, 3]) / params[:, 5]
    on_copies = torch.stack([x / side, 1.0 - y / side], 1).to(device=device, dtype=torch.float32)
    auv = atlas["uv"].to(torch.float64)
    on_atlas = torch.stack([(ax + auv[:, 0] * a) / side, 1.0 - (ay + (1.0 - auv[:, 1]) * a) / side], 1)
    n = atlas["vertices"].shape[0]
    faces = atlas["faces"].clone()
    faces[idx] = inverse.to(device).reshape(-1, 3) + n
    uv = torch.cat([on_atlas.to(device=device, dtype=torch.float32), on_copies])
    lifted_vertex = corners[:, 0].to(device)
    verts = torch.cat([atlas["vertices"], v_t[lifted_vertex]])
    colours = torch.cat([atlas["vertex_colors"], vertex_colors[lifted_vertex]])
    used, remap = torch.unique(faces, return_inverse=True)
    shrunk = ", ".join(f"image {c.texture} at 1/{c.shrink}" for c in copies if c.shrink > 1)
    stats = {"canvas": f"{len(copies)} source image copies and the atlas on {side}x{side}"
                       + (f" ({shrunk}: over the {cap}x{cap} cap)" if shrunk else ""),
             "canvas_size": side, "source_layout_faces": int(len(idx)),
             "canvas_shrunk_images": sum(c.shrink > 1 for c in copies)}
    return dict(vertices=verts[used], faces=remap.reshape(-1, 3), uv=uv[used], vertex_colors=colours[used],
                texture=canvas), stats


def _uv_overlap(uv: torch.Tensor, faces: torch.Tensor, covered: torch.Tensor) -> bool:
    """Whether faces share texels: their UV area adds up to more than the texels they cover (2 % slack for edges), or
    some face has less than a texel of its own (a palette texture collapses each face's UVs onto one swatch)."""
    t = uv.double()[faces]
    area = 0.5 * ((t[:, 1, 0] - t[:, 0, 0]) * (t[:, 2, 1] - t[:, 0, 1])
                  - (t[:, 2, 0] - t[:, 0, 0]) * (t[:, 1, 1] - t[:, 0, 1])).abs()
    texel = 1.0 / covered.numel()
    return float(area.sum()) > 1.02 * float(covered.double().mean()) + 1e-4 or bool((area < texel).any())


def _source_texture_layout(st: _LiftState) -> Optional[tuple]:
    """(uv float [N, 2] of the lifted vertices, the source's texture [T, T, 3], bool [T, T] the texels faces cover) when
    the lifted mesh is made of source faces only and the source is textured in one way the bake can write back
    exactly: one square image over every face, UVs inside 0..1 with no two faces on the same texels, white base
    colour, no vertex colours. Else None (a new atlas is made).

    Re-baking a kept texture into a new atlas resamples it (measured 28.9-31.3 dB against the source on the Fox and
    kenney, whose small swatches blur); in the source's own layout a kept texel IS the source's texel."""
    src, sf = st.source, st.source_faces
    if src is None or sf is None or len(sf) == 0 or (sf < 0).any() or src.uv is None or len(src.textures) != 1:
        return None
    image = src.textures[0]
    if image.ndim != 3 or image.shape[0] != image.shape[1] or src.vertex_colors is not None:
        return None
    sf_t = torch.from_numpy(sf).to(src.faces.device)
    if src.face_textures is None or not bool((src.face_textures[sf_t] == 0).all()):
        return None
    if not bool((src.face_base_color[sf_t] == 1).all()):
        return None
    used, inverse = np.unique(src.faces[sf_t].cpu().numpy().ravel(), return_inverse=True)
    if not np.array_equal(inverse.reshape(-1, 3), st.faces):  # the lifted vertices are not the source's used ones
        return None
    uv = src.uv.cpu().to(torch.float32)[torch.from_numpy(used)]
    if not bool(((uv >= 0) & (uv <= 1)).all()):  # wrapped (REPEAT) UVs: a texel is not one point of the surface
        return None
    faces = torch.from_numpy(st.faces)
    covered = bake.rasterize_texture(uv, faces, image.shape[0], st.check).face_id[0] >= 0
    # faces sharing texels (a palette texture: kenney's) cannot take an edit's colours in place, and a shared texel
    # shows one of its faces only, so whether the edit changed colour cannot be read there: a new atlas then
    if _uv_overlap(uv, faces, covered):
        return None
    return uv, image, covered


def _refine(st: _LiftState, mesh: dict, texture_size: int, refine_steps: int) -> None:
    """Stage 5 (optional): refine the texture against the views by differentiable rendering (geometry held fixed)."""
    h, w = st.rgb.shape[-2:]
    covered = bake.rasterize_texture(mesh["uv"], mesh["faces"], int(texture_size), st.check).face_id[0] >= 0
    frags_views = bake.render_fragments(mesh["vertices"], mesh["faces"], st.cameras, h, w)
    texture, losses = bake.refine_texture(mesh["texture"], mesh["uv"], mesh["faces"], frags_views, st.rgb, st.alpha,
                                          int(refine_steps), progress=st.progress)
    mesh["texture"] = bake.pad_gutter(texture, covered)
    st.stats["refine_loss_first"], st.stats["refine_loss_last"] = losses[0], losses[-1]


def lift_to_mesh(
    rgb: torch.Tensor,
    cameras: MVCameras,
    alpha: Optional[torch.Tensor] = None,
    background: Union[str, Sequence[float], torch.Tensor] = AUTO_BACKGROUND,
    source: Optional[MeshAsset] = None,
    mode: Union[LiftMode, str] = LiftMode.HULL,
    grid: int = 128,
    texture_size: int = 1024,
    face_budget: int = 50000,
    refine_steps: int = 0,
    progress: Optional[Progress] = None,
    device=None,
    reconstructor: Optional[str] = None,
    key_threshold: float = DEFAULT_KEY_THRESHOLD,
    frame: Optional[SourceFrame] = None,
    keep: Union[str, component_lift.KeepPolicy] = "all_but_edited",
    components: Union[str, Sequence[str]] = (),
    prompt: Optional[str] = None,
    component_masks: Optional[ComponentMasks] = None,
) -> LiftedMesh:
    """Lift the views of one object to a textured triangle mesh.

    Args:
        rgb: float [V, 3, H, W] in 0..1, the views in camera order (front, right, back, left for MVDream's four).
        cameras: the exact cameras the views were made with (``MultiViewRender.cameras``).
        alpha: float [V, 1, H, W] (or [V, H, W]) silhouettes in 0..1; None keys out the background with morphological
            cleanup.
        background: "auto" (default): each view's flat background colour is read off its border, as sampled views have
            it (MVDream samples on the white or grey it was trained with); views without a flat background take the
            source's silhouettes when a source is given, else raise. Or an RGB triple in 0..1 (or [V, 3] rows): keyed
            exactly. Either way it is un-mixed from antialiased silhouette pixels (where alpha is soft) when baking.
        source: the asset the views were edited from; needed by every mode but "hull", used as colour prior.
        mode: a :class:`LiftMode` or its value: "hull" (silhouette visual hull: a preview-quality block-out),
            "source_guided" (source solid where the edited silhouettes still cover it, plus the edited hull where they
            grow past the source), "keep_source" (the source mesh exactly, re-textured) or "component_aware" (the
            components the edit does not touch exactly, smooth new geometry where the silhouettes grow; see ``keep``).
        grid: voxels along the object's longest side (16..512).
        texture_size: side of the square texture; 0 bakes vertex colours only. A lift made of source faces only, of a
            source with one square texture over non-overlapping UVs, keeps that texture's layout and size instead
            (``stats["texture_layout"]`` "source"). Else, with a source textured by one square image, the faces the
            edit left alone keep that image and their UVs in a canvas twice the atlas's side (``stats["atlas_size"]``:
            the image's side times a power of two, from half of it towards ``texture_size``, at most 2048),
            the other faces on the atlas ("source+atlas"); else a new atlas ("atlas").
        face_budget: decimate to at most this many faces (0: none). "keep_source" never decimates.
        refine_steps: Adam steps refining the texture against the views (0: off). Geometry refinement is not implemented.
        progress: reports stages and refinement steps; its ``check_interrupt`` is polled inside every long loop.
        device: where the tensor work runs (default: ``rgb``'s device).
        reconstructor: name of a model registered with :func:`register_reconstructor` to use instead of the hull.
        key_threshold: colour distance from the background that counts as object when keying (raised per view for noisy
            backgrounds in "auto").
        keep: "component_aware" only: which of the source's components keep their exact faces and texture:
            "all_but_edited" (default: all but those ``components`` or the ``prompt`` edits, and parts the edited
            silhouettes no longer show), "listed" (only ``components``) or "none".
        components: component names (a list, or text separated by commas/spaces; ``<hat>`` works too): the
            edited ones for "all_but_edited", the kept ones for "listed".
        prompt: the edit prompt: when it uses some components' ``<token>``, those it leaves out count as edited.
        component_masks: ComponentMask's masks in these views: their names are the components (default: the source's
            parts).
        frame: the frame files are written in (``MultiViewRender.source_frame``: the rendered asset's own coordinates);
            default the source's, or glTF's +Y up / front +Z at unit size without a source.

    Returns:
        LiftedMesh on ``device`` in our MVDream world frame (y up, front +x, inside about [-0.5, 0.5]^3) with uv + texture
        (unless ``texture_size`` is 0), vertex colours, and ``stats`` (timings in seconds, face count, unseen texel
        fraction, ..., and ``output_frame``: the 16 row-major numbers of the 4x4 transform from that frame to the frame
        files are written in, i.e. the source's own coordinates, or glTF's +Y up / front +Z without a source;
        :func:`export_mesh` applies it).

    Raises:
        ShapeError: views or alpha of the wrong type/shape/count/size, NaN pixels, values outside 0..1.
        LiftError: a view with an empty (or full-frame) silhouette, views with no background to key and no source, an
            empty hull, a failing reconstructor.
        ConfigError: unknown mode or out-of-range options.
        Interrupted (or the host's own exception): ``progress.check_interrupt`` asked to stop.
    """
    from .export import output_frame

    prog = as_progress(progress)
    check_views(rgb, cameras, alpha)
    _check_options(mode, source, grid, texture_size, face_budget, refine_steps, reconstructor)
    mode = as_lift_mode(mode)
    device = torch.device(device) if device is not None else rgb.device
    st = _LiftState(rgb=rgb.to(device=device, dtype=torch.float32).clamp(0.0, 1.0), cameras=cameras, device=device,
                    progress=prog, source=None if source is None else source.to(device),
                    parts={"keep": component_lift.as_keep_policy(keep), "names": component_lift.split_names(components),
                           "prompt": prompt, "masks": component_masks})
    st.stats.update(mode=mode.value, grid=int(grid), texture_size=int(texture_size))
    times = {}
    t0 = time.perf_counter()

    def stage(i: int, name: str, key: Optional[str], fn, *args):
        t = time.perf_counter()
        result = fn(st, *args)
        if key is not None:
            times[key] = time.perf_counter() - t
        prog.check_interrupt()
        prog.update(i, NUM_STAGES, None, stage=name)
        return result

    stage(1, "silhouettes", None, _silhouettes, alpha, background, key_threshold)
    stage(2, "geometry", "geometry_s", _geometry, mode, grid, reconstructor, face_budget)
    stage(3, "cleanup", "cleanup_s", _cleanup, mode, face_budget, reconstructor)
    mesh = stage(4, "texture", "texture_s", _colour, texture_size)
    stage(5, "done", "refine_s", lambda s: _refine(s, mesh, texture_size, refine_steps) if refine_steps else None)

    times["total_s"] = time.perf_counter() - t0
    stats = {**st.stats, **times, "num_faces": int(mesh["faces"].shape[0]), "num_vertices": int(mesh["vertices"].shape[0])}
    stats["output_frame"] = output_frame(source, frame).reshape(-1).tolist()
    return LiftedMesh(**mesh, stats=stats)
