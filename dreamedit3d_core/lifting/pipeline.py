"""``lift_to_mesh``: four views (and their cameras) to a textured triangle mesh, plus the reconstructor plug-in slot.

The recipe (``../shared/design/render-lift.md`` §5): silhouettes -> geometry (visual hull, source-guided occupancy, the
source mesh itself, or a registered reconstruction model) -> marching cubes and cleanup -> xatlas UVs -> depth-tested,
facing-weighted bake with feathered view masks -> 3D nearest fill of unseen texels -> optional texture refinement.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..cameras import MVCameras
from ..errors import ConfigError, LiftError
from ..progress import Progress, as_progress
from ..types import LiftedMesh, MeshAsset
from . import bake, hull, surface
from .views import DEFAULT_KEY_THRESHOLD, check_masks, check_views, key_background

MODES = ("hull", "source_guided", "keep_source")
#: Weight of a view's silhouette band (inside the mask, outside its eroded core) relative to its core.
EDGE_BAND_WEIGHT = 1e-4
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


def _check_options(mode, source, grid, texture_size, face_budget, refine_steps, reconstructor):
    if mode not in MODES:
        raise ConfigError(f"unknown lift mode {mode!r}; valid modes are {list(MODES)}")
    if mode != "hull" and source is None:
        raise ConfigError(f"mode {mode!r} needs the source asset (source=MeshAsset); use mode='hull' without one")
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
        if mode == "keep_source":
            raise ConfigError("mode 'keep_source' keeps the source geometry; it cannot use a reconstructor")


def _run_reconstructor(name, rgb, alpha, cameras, grid, device) -> tuple[np.ndarray, np.ndarray]:
    out = _RECONSTRUCTORS[name](rgb, alpha, cameras, grid=int(grid), device=device)
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
    verts, faces = surface.marching_cubes(occ, fine)
    return verts, faces, {"voxel_size": fine.spacing, "grid_shape": list(fine.shape)}


def _source_guided_geometry(alpha, cameras, source, grid, check) -> tuple[np.ndarray, np.ndarray, dict]:
    h, w = alpha.shape[-2:]
    fine = hull.fit_grid(lambda g: hull.silhouette_occupancy(alpha, cameras, g, check), grid, "visual hull")
    hull_edited = hull.silhouette_occupancy(alpha, cameras, fine, check)
    src_sil = hull.source_silhouettes(source, cameras, h, w, dilate_px=max(2, h // 96))
    hull_source = hull.silhouette_occupancy(src_sil, cameras, fine, check)
    solid = hull.mesh_occupancy(source.vertices, source.faces, fine, where=hull_edited > 0.01, check_interrupt=check)
    occ = hull.source_guided_occupancy(hull_edited, hull_source, solid)
    occ = hull.keep_main_solids(occ)
    verts, faces = surface.marching_cubes(occ, fine)
    added = float((torch.minimum(hull_edited, 1 - hull_source) > 0.5).sum()) / max(float((occ > 0.5).sum()), 1.0)
    return verts, faces, {"voxel_size": fine.spacing, "grid_shape": list(fine.shape), "added_volume_fraction": added}


def _source_prior_views(source: MeshAsset, cameras: MVCameras, size: int, background) -> list:
    """Renders of the source from above and below: a colour prior, depth-tested against the source's own depth."""
    from ..render import render_views

    views = []
    for elev, offset in SOURCE_PRIOR_VIEWS:
        azimuths = torch.tensor([0.0, 180.0], dtype=torch.float64) + float(cameras.azimuth_deg[0]) + offset
        cams = MVCameras(elevation_deg=elev, azimuth_deg=azimuths, fov_deg=cameras.fov_deg, radius=cameras.radius)
        r = render_views(source, cams, resolution=size, background=tuple(background), ssaa=1)
        views.append(bake.ViewSet(r.rgb, bake.feathered_mask(r.alpha, 1, 0), cams, r.depth[:, 0], alpha=r.alpha,
                                   background=tuple(background)))
    return views


def lift_to_mesh(
    rgb: torch.Tensor,
    cameras: MVCameras,
    alpha: Optional[torch.Tensor] = None,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    source: Optional[MeshAsset] = None,
    mode: str = "hull",
    grid: int = 128,
    texture_size: int = 1024,
    face_budget: int = 50000,
    refine_steps: int = 0,
    progress: Optional[Progress] = None,
    device=None,
    reconstructor: Optional[str] = None,
    key_threshold: float = DEFAULT_KEY_THRESHOLD,
) -> LiftedMesh:
    """Lift the views of one object to a textured triangle mesh.

    Args:
        rgb: float [V, 3, H, W] in 0..1, the views in camera order (front, right, back, left for MVDream's four).
        cameras: the exact cameras the views were made with (``MultiViewRender.cameras``).
        alpha: float [V, 1, H, W] (or [V, H, W]) silhouettes in 0..1; None keys out ``background`` with morphological cleanup.
        background: RGB in 0..1 of the views' flat background: keyed out when ``alpha`` is None, and un-mixed from
            antialiased silhouette pixels (where alpha is soft) when baking colour.
        source: the asset the views were edited from; needed by "source_guided" and "keep_source", used as colour prior.
        mode: "hull" (silhouette visual hull), "source_guided" (source solid where the edited silhouettes still cover it,
            plus the edited hull where they grow past the source) or "keep_source" (the source mesh exactly, re-textured).
        grid: voxels along the object's longest side (16..512).
        texture_size: side of the square texture; 0 bakes vertex colours only.
        face_budget: decimate to at most this many faces (0: none). "keep_source" never decimates.
        refine_steps: Adam steps refining the texture against the views (0: off). Geometry refinement is not implemented.
        progress: reports stages and refinement steps; its ``check_interrupt`` is polled inside every loop.
        device: where the tensor work runs (default: ``rgb``'s device).
        reconstructor: name of a model registered with :func:`register_reconstructor` to use instead of the hull.
        key_threshold: colour distance from ``background`` that counts as object when keying.

    Returns:
        LiftedMesh on ``device`` with uv + texture (unless ``texture_size`` is 0), vertex colours, and ``stats``
        (timings in seconds, face count, unseen texel fraction, ...).

    Raises:
        ShapeError: views or alpha of the wrong type/shape/count/size, NaN pixels, values outside 0..1.
        LiftError: a view with an empty (or full-frame) silhouette, an empty hull, a failing reconstructor.
        ConfigError: unknown mode or out-of-range options.
    """
    prog = as_progress(progress)
    check_views(rgb, cameras, alpha)
    _check_options(mode, source, grid, texture_size, face_budget, refine_steps, reconstructor)
    device = torch.device(device) if device is not None else rgb.device
    rgb = rgb.to(device=device, dtype=torch.float32).clamp(0.0, 1.0)
    times, stats = {}, {"mode": mode, "grid": int(grid), "texture_size": int(texture_size)}
    total = 5
    t0 = time.perf_counter()

    # 1. silhouettes
    keyed = alpha is None
    if keyed:
        alpha = key_background(rgb, background, key_threshold)
    else:
        alpha = alpha.to(device=device, dtype=torch.float32).clamp(0.0, 1.0)
        alpha = alpha[:, None] if alpha.ndim == 3 else alpha
    check_masks(alpha, keyed, background)
    if source is not None:
        source = source.to(device)
    prog.check_interrupt()
    prog.update(1, total, None, stage="silhouettes")

    # 2. geometry
    t = time.perf_counter()
    check = prog.check_interrupt
    if mode == "keep_source":
        verts = source.vertices.detach().cpu().double().numpy()
        faces = source.faces.detach().cpu().numpy().astype(np.int64)
        verts, faces = surface.drop_unused_vertices(verts, faces)
    elif reconstructor is not None:
        verts, faces = _run_reconstructor(reconstructor, rgb, alpha, cameras, grid, device)
        stats["reconstructor"] = reconstructor
    elif mode == "hull":
        verts, faces, info = _hull_geometry(alpha, cameras, grid, check)
        stats.update(info)
    else:
        verts, faces, info = _source_guided_geometry(alpha, cameras, source, grid, check)
        stats.update(info)
    times["geometry_s"] = time.perf_counter() - t
    prog.update(2, total, None, stage="geometry")

    # 3. cleanup: smoothing and decimation (the source keeps its exact geometry)
    t = time.perf_counter()
    if mode != "keep_source":
        iterations = 0 if reconstructor is not None else surface.TAUBIN_ITERATIONS
        verts, faces = surface.smooth_and_decimate(verts, faces, int(face_budget), iterations)
    if faces.shape[0] == 0:
        raise LiftError("the lifted mesh has no faces; nothing to texture")
    v_t = torch.from_numpy(verts).to(device=device, dtype=torch.float32)
    f_t = torch.from_numpy(faces).to(device)
    normals = bake.vertex_normals(v_t, f_t)
    times["cleanup_s"] = time.perf_counter() - t
    prog.check_interrupt()
    prog.update(3, total, None, stage="cleanup")

    # 4. colour: views (depth-tested against the lifted mesh); the source stands in where no view sees the surface
    t = time.perf_counter()
    h, w = rgb.shape[-2:]
    frags = bake.render_fragments(v_t, f_t, cameras, h, w)
    # inside the silhouette but outside its eroded, feathered core a view still counts, faintly: its (un-mixed) colour
    # beats the source prior and the nearest-neighbour fill for surface only seen near silhouettes
    weight_mask = bake.feathered_mask(alpha, max(1, h // 256), max(1, h // 256)) + EDGE_BAND_WEIGHT * (alpha > 0.5)
    view_sets = [bake.ViewSet(rgb, weight_mask, cameras, frags.depth, alpha=alpha, background=tuple(background))]
    # the source's colours stand in only where no view sees the surface (render-lift.md §5 step 5; the design's blend
    # at weight 1e-3 tinted what the views see at grazing angles, measured -2 dB in the round trip)
    prior_sets = _source_prior_views(source, cameras, min(128, (h // 8) * 8), background) if source is not None else []
    vertex_colors, vstats = bake.bake_vertex_colors(v_t, normals, view_sets, prior_sets)
    stats.update(vstats)
    uv = texture = None
    out_v, out_f = v_t, f_t
    if texture_size:
        vmap, faces_uv, uv_np = surface.uv_atlas(verts, faces, int(texture_size))
        vmap_t = torch.from_numpy(vmap).to(device)
        out_v, out_f = v_t[vmap_t], torch.from_numpy(faces_uv).to(device)
        uv = torch.from_numpy(uv_np).to(device)
        vertex_colors = vertex_colors[vmap_t]
        prog.check_interrupt()
        texture, tstats = bake.bake_texture(out_v, out_f, normals[vmap_t], uv, view_sets, int(texture_size),
                                            vertex_colors, check, prior_sets)
        stats.update(tstats)
    times["texture_s"] = time.perf_counter() - t
    prog.update(4, total, None, stage="texture")

    # 5. optional texture refinement against the views
    t = time.perf_counter()
    if refine_steps:
        covered = bake.rasterize_uv(uv, out_f, int(texture_size)).face_id[0] >= 0
        frags_views = bake.render_fragments(out_v, out_f, cameras, h, w)
        texture, losses = bake.refine_texture(texture, uv, out_f, frags_views, rgb, alpha, int(refine_steps), progress=prog)
        texture = bake.pad_gutter(texture, covered)
        stats["refine_loss_first"], stats["refine_loss_last"] = losses[0], losses[-1]
    times["refine_s"] = time.perf_counter() - t
    prog.update(5, total, None, stage="done")

    times["total_s"] = time.perf_counter() - t0
    stats.update(times)
    stats["num_faces"] = int(out_f.shape[0])
    stats["num_vertices"] = int(out_v.shape[0])
    return LiftedMesh(vertices=out_v, faces=out_f, uv=uv, texture=texture, vertex_colors=vertex_colors, stats=stats)
