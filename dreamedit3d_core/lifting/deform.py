"""Fit the source surface to the edited views by a smooth deformation: a reshaped chunk of a part ("a longer ear",
"a bigger nose", "a fatter belly") is the source's own surface moved, not a new part.

The unknown is a displacement of each of the source's welded vertices (coincident vertices of UV or colour seams move
together, or the surface tears) near the change: an offset along the source's normal plus a more strongly held free
3-D part. It is fitted by Adam (each step can be smoothed over the surface, Nicolet et al. 2021's preconditioning:
:data:`PRECONDITION`, measured and off), in pixels of the views at :data:`FIT_RESOLUTION`, to

- every vertex's projection inside every edited silhouette (the outside-distance field of each, sampled bilinearly:
  differentiable through the camera projection);
- every edited-silhouette pixel the deformed mesh does not cover (rasterized every :data:`RASTER_EVERY` steps, not
  differentiated) pulling the movable vertex whose projection is nearest to it: a vertex on the mesh's outline in that
  view, whose in-image motion is what the outline's growth shows (2-D chamfer);
- a bi-Laplacian (uniform Laplacian, squared) of the displacement: smooth, so the surface's detail moves with it and
  vertices no outline constrains (the front of a grown crown, seen by the side views only as outline) follow their
  neighbours;
- an anchor to no displacement that is strong where no view shows a change (there depth is unobserved).

The fit is accepted only when it explains the change (:func:`fit_deformation`): the deformed silhouettes match the
edited ones far better than the source's, no edge or triangle is stretched or squashed past what a reshaped chunk does
(a ball added on a head read as a stretched crown is not; a removed chunk read as a squashed one is not), and the
deformed source's colours match the views where the silhouettes changed (its texture moves with it; an added part's
new colour does not).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..cameras import MVCameras
from ..types import MeshAsset

#: Side (px) of the silhouettes the deformation is fitted on (larger views are box-filtered down to it).
FIT_RESOLUTION = 256
#: Adam steps, learning rate (world units per step, about 0.5 px at 256 px) and how often the deformed mesh is
#: rasterized for the uncovered pixels' pull.
STEPS = 150
LEARNING_RATE = 2.5e-3
RASTER_EVERY = 25
#: Weight of the squared uniform Laplacian of the displacement (in px²), relative to the silhouette terms.
SMOOTHNESS = 60.0
#: Smoothing of each Adam step: the step is taken on (I + PRECONDITION K) x, K the combinatorial Laplacian (0: off).
#: Measured on the x1.3 crowns (surface error, max % of the diagonal, 0 -> 10): ellipsoid 1.38 -> 1.19, lee 1.08 ->
#: 0.94, spot 0.97 -> 0.80, but the coarse vertex-coloured PLY 1.03 -> 1.75 (held-out worst IoU 0.961 -> 0.948, F
#: 0.982 -> 0.939): off.
PRECONDITION = 0.0
#: Weight (per px² of displacement) holding the free 3-D part of the displacement, beside its offset along the normal.
TANGENT_HOLD = 0.05
#: Weight of the uncovered pixels' pull relative to the vertices' outside distance.
COVER_WEIGHT = 1.0
#: Anchor to no displacement: weak near the changed pixels, strong from ``ANCHOR_FREE`` to ``ANCHOR_FREE +
#: ANCHOR_RAMP`` of the object's size (px) away from them in every view.
ANCHOR_NEAR = 1e-3
ANCHOR_FAR = 10.0
ANCHOR_FREE = 0.12
ANCHOR_RAMP = 0.12
#: Outline tolerance (px at 256) within which silhouettes count as the same shape (keying, antialiasing, registration).
TOLERANCE_PX = 2.0
#: Accept: the mismatch left at most this fraction of the source's ...
MAX_RESIDUAL_GAIN = 0.25
#: ... and at most this fraction of the source's silhouette area in any view.
MAX_RESIDUAL_FRACTION = 0.02
#: No fit is tried when no view's silhouette changed by more than this fraction of the source's area.
MIN_CHANGE_FRACTION = 0.005
#: Accept: edge-length ratios (deformed / source: 99th percentile at most MAX_STRETCH, 1st at least MIN_SQUASH) and
#: triangle-area ratios (99th percentile at most MAX_AREA_RATIO, 1st at least MIN_AREA_RATIO). A chunk scaled x1.3
#: and blended into the rest stretches its edges by at most about 1.5 and its areas by 1.7-2; a removed chunk read as
#: a squashed one shrinks areas to half or less.
MAX_STRETCH = 1.8
MAX_AREA_RATIO = 2.6
MIN_SQUASH = 0.75
MIN_AREA_RATIO = 0.6
#: The fit stops from step ABORT_AFTER on (checked when it rasterizes) once its distortion is past those limits by
#: this factor (measured: an added ball on the truck or the spot stretches 4-11x; a reshaped chunk stays below 1.5).
ABORT_AFTER = 50
ABORT_MARGIN = 1.5
#: Accept: of the changed pixels the deformed source covers, at most this fraction may differ in colour from its
#: render by more than ``COLOUR_TOLERANCE`` (max over channels, after a per-view gain fit).
MAX_COLOUR_MISMATCH = 0.3
COLOUR_TOLERANCE = 0.15


@dataclass
class Deformation:
    """A fitted deformation of the source: ``vertices`` float32 [N, 3] in the source's vertex layout (the fit, also
    when it is rejected; the source's own when none was tried), whether it explains the change (``accepted``) and why
    not (``reason``), and figures for the lift's stats (``deform_*``)."""

    vertices: torch.Tensor
    accepted: bool
    reason: str
    stats: dict = field(default_factory=dict)


def weld(vertices: np.ndarray, faces: np.ndarray, tolerance: float = 1e-6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coincident vertices (within ``tolerance`` of the bounding box's diagonal) merged: (positions float64 [W, 3],
    faces int64 [M, 3] over them, int64 [N]: the welded vertex each vertex is)."""
    diag = float(np.linalg.norm(vertices.max(0) - vertices.min(0))) if len(vertices) else 1.0
    keys = np.round(vertices / max(tolerance * diag, 1e-12)).astype(np.int64)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    return vertices[first], inverse[faces], inverse


def _edges(faces: np.ndarray) -> np.ndarray:
    """int64 [E, 2]: the mesh's undirected edges, once each (lower index first), without degenerate ones."""
    e = np.unique(np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), 1), axis=0)
    return e[e[:, 0] != e[:, 1]]


def uniform_laplacian(faces: np.ndarray, num_vertices: int):
    """The uniform graph Laplacian ``I - D^-1 A`` of the mesh's edges as a scipy CSR float64 [N, N] matrix (rows of
    isolated vertices are zero)."""
    from scipy import sparse

    e = _edges(faces)
    rows, cols = np.concatenate([e[:, 0], e[:, 1]]), np.concatenate([e[:, 1], e[:, 0]])
    degree = np.bincount(rows, minlength=num_vertices).astype(np.float64)
    adjacency = sparse.csr_matrix((1.0 / degree[rows], (rows, cols)), shape=(num_vertices,) * 2)
    return (sparse.diags((degree > 0).astype(np.float64)) - adjacency).tocsr()


def _fit_masks(alpha: torch.Tensor) -> torch.Tensor:
    """bool [V, H, W] silhouettes at most ``FIT_RESOLUTION`` px tall (box-filtered down, then thresholded)."""
    a = alpha.detach().to(torch.float32).cpu()
    a = a[:, None] if a.ndim == 3 else a
    factor = max(1, a.shape[-2] // FIT_RESOLUTION)
    if factor > 1:
        a = F.avg_pool2d(a, factor)
    return a[:, 0] > 0.5


def _vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    from .bake import vertex_normals

    return vertex_normals(vertices, faces).to(torch.float64)


def _silhouettes(vertices: torch.Tensor, faces: torch.Tensor, cameras: MVCameras, h: int, w: int) -> torch.Tensor:
    from ..raster import rasterize_views

    return rasterize_views(vertices.to(torch.float32), faces, cameras, (h, w)).mask.cpu()


def _dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    return F.max_pool2d(mask[:, None].to(torch.float32), 2 * r + 1, stride=1, padding=r)[:, 0] > 0.5


def _erode(mask: torch.Tensor, r: int) -> torch.Tensor:
    return ~_dilate(~mask, r)


def silhouette_mismatch(mask: torch.Tensor, edited: torch.Tensor, tolerance_px: int) -> torch.Tensor:
    """float [V]: pixels of ``edited`` past ``mask`` dilated by ``tolerance_px`` plus pixels of ``mask`` eroded by it
    that ``edited`` lacks (bool [V, H, W] both)."""
    grown = edited & ~_dilate(mask, tolerance_px)
    lost = _erode(mask, tolerance_px) & ~edited
    return (grown | lost).flatten(1).sum(1).to(torch.float64)


def _sample(field_: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """[V, N] values of ``field_`` [V, H, W] bilinearly at ``pixels`` [V, N, 2] (x = column, y = row; pixel centres
    at +0.5); positions outside the frame take the border's value."""
    _, h, w = field_.shape
    grid = torch.stack([pixels[..., 0] / w * 2.0 - 1.0, pixels[..., 1] / h * 2.0 - 1.0], -1)[:, :, None]
    return F.grid_sample(field_[:, None], grid.to(field_.dtype), mode="bilinear", padding_mode="border",
                         align_corners=False)[:, 0, :, 0]


def _edt(outside: np.ndarray) -> np.ndarray:
    """Distance (px) of every pixel to the nearest pixel not in ``outside`` (bool [V, H, W]), per view."""
    from scipy.ndimage import distance_transform_edt

    return np.stack([distance_transform_edt(o) if o.any() else np.zeros(o.shape) for o in outside])


def _cover_pairs(mask: torch.Tensor, edited: torch.Tensor, projected: np.ndarray, candidates: np.ndarray) -> tuple:
    """The edited pixels the deformed mesh does not cover, each with the vertex among ``candidates`` (indices into
    ``projected`` [V, N, 2]) whose projection is nearest: (view int64 [P], vertex int64 [P], pixel centre float64
    [P, 2])."""
    from scipy.spatial import cKDTree

    views, verts, targets = [], [], []
    if len(candidates) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 2))
    uncovered = edited & ~_dilate(mask, 1)
    for v in range(mask.shape[0]):
        rows, cols = np.nonzero(uncovered[v].numpy())
        if len(rows) == 0:
            continue
        px = np.stack([cols + 0.5, rows + 0.5], 1)
        _, nearest = cKDTree(projected[v, candidates]).query(px)
        views.append(np.full(len(px), v))
        verts.append(candidates[nearest])
        targets.append(px)
    if not views:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 2))
    return np.concatenate(views), np.concatenate(verts), np.concatenate(targets)


def _distortion(before: np.ndarray, after: np.ndarray, faces: np.ndarray) -> dict:
    """Edge-length and triangle-area ratios of ``after`` to ``before`` (welded vertices, faces over them), as the
    percentiles the accept test reads."""
    e = np.unique(np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), 1), axis=0)
    l0 = np.linalg.norm(before[e[:, 0]] - before[e[:, 1]], axis=1)
    l1 = np.linalg.norm(after[e[:, 0]] - after[e[:, 1]], axis=1)
    ok = l0 > 1e-9 * max(float(l0.max(initial=0.0)), 1e-30)
    ratio = l1[ok] / l0[ok]

    def area(v):
        return 0.5 * np.linalg.norm(np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]]), axis=1)

    a0, a1 = area(before), area(after)
    okf = a0 > 1e-12 * max(float(a0.max(initial=0.0)), 1e-30)
    aratio = a1[okf] / a0[okf]
    moved = np.linalg.norm(after - before, axis=1) > 1e-6 * max(float(np.ptp(before, 0).max(initial=0.0)), 1e-30)
    if not moved.any():
        return {"stretch": 1.0, "squash": 1.0, "area_max": 1.0, "area_min": 1.0}
    return {"stretch": float(np.percentile(ratio, 99)) if len(ratio) else 1.0,
            "squash": float(np.percentile(ratio, 1)) if len(ratio) else 1.0,
            "area_max": float(np.percentile(aratio, 99)) if len(aratio) else 1.0,
            "area_min": float(np.percentile(aratio, 1)) if len(aratio) else 1.0}


def _far_past_limits(distortion: dict) -> bool:
    """Whether a fit's distortion (``_distortion``) is past the accept limits by ``ABORT_MARGIN``."""
    m = ABORT_MARGIN
    return (distortion["stretch"] > MAX_STRETCH * m or distortion["area_max"] > MAX_AREA_RATIO * m
            or distortion["squash"] < MIN_SQUASH / m or distortion["area_min"] < MIN_AREA_RATIO / m)


def _colour_mismatch(source: MeshAsset, vertices: torch.Tensor, rgb: torch.Tensor, changed: torch.Tensor,
                     cameras: MVCameras) -> Optional[float]:
    """Of the changed pixels (bool [V, h, w] at fit resolution) the deformed source covers, the fraction whose colour
    in the views differs from the deformed source's unlit render by more than ``COLOUR_TOLERANCE`` after a per-view
    gain fit; None when it covers none."""
    from dataclasses import replace

    from ..render import render_views

    v, _, h, w = rgb.shape
    size = (h // 8) * 8
    if h != w or size == 0 or size > 1024:
        return None
    r = render_views(replace(source, vertices=vertices.to(source.vertices)), cameras, resolution=size,
                     background=(0.0, 0.0, 0.0), lighting="unlit", ssaa=1)
    colour = (r.rgb / r.alpha.clamp(min=1e-6)).cpu()
    views = rgb.detach().to(torch.float32).cpu()[..., :size, :size]
    where = F.interpolate(changed[:, None].to(torch.float32), size=(size, size), mode="nearest")[:, 0] > 0.5
    where &= _erode(r.alpha.cpu()[:, 0] > 0.99, 1)
    if not bool(where.any()):
        return None
    bad = total = 0
    for i in range(v):
        m = where[i]
        if not bool(m.any()):
            continue
        a, b = colour[i][:, m], views[i][:, m]  # [3, P]
        gain = float((a * b).sum() / (a * a).sum().clamp(min=1e-9))
        gain = min(max(gain, 0.8), 1.25)
        bad += int(((a * gain - b).abs().amax(0) > COLOUR_TOLERANCE).sum())
        total += int(m.sum())
    return bad / max(total, 1)


def fit_deformation(source: MeshAsset, alpha: torch.Tensor, cameras: MVCameras, rgb: Optional[torch.Tensor] = None,
                    movable_faces: Optional[torch.Tensor] = None,
                    check_interrupt: Optional[Callable[[], None]] = None) -> Deformation:
    """Fit the source's surface to the edited silhouettes ``alpha`` (float [V, 1, H, W]) by a smooth displacement of
    its vertices, and decide whether it explains the change.

    Args:
        source: the asset the views were edited from (our world frame).
        rgb: the edited views float [V, 3, H, W]: given, the deformed source's colours must match them where the
            silhouettes changed.
        movable_faces: bool [M]: source faces that may move (default all); a vertex any other face uses stays put.

    Returns:
        :class:`Deformation`; ``accepted`` only when the deformed silhouettes leave at most ``MAX_RESIDUAL_GAIN`` of
        the source's mismatch (and at most ``MAX_RESIDUAL_FRACTION`` of its area in any view), edges and triangles
        stay within ``MIN_SQUASH``..``MAX_STRETCH`` and ``MIN_AREA_RATIO``..``MAX_AREA_RATIO``, and the colours agree
        (``MAX_COLOUR_MISMATCH``). No fit is tried when no view changed by more than ``MIN_CHANGE_FRACTION``.
    """
    from ..personalize.autograd import grad_enabled

    # ComfyUI runs every node under torch.inference_mode(), where autograd is off: the fit's gradients need it left
    # (its tensors are all made in the fit, from numpy, so none is an inference tensor)
    with grad_enabled():
        return _fit(source, alpha, cameras, rgb, movable_faces, check_interrupt or (lambda: None))


def _fit(source: MeshAsset, alpha: torch.Tensor, cameras: MVCameras, rgb: Optional[torch.Tensor],
         movable_faces: Optional[torch.Tensor], check: Callable[[], None]) -> Deformation:
    """:func:`fit_deformation`'s work, with autograd on."""
    verts_np = source.vertices.detach().cpu().double().numpy()
    faces_np = source.faces.detach().cpu().numpy().astype(np.int64)
    unchanged = Deformation(source.vertices, False, "", {})
    if len(faces_np) == 0:
        unchanged.reason = "the source has no faces"
        return unchanged
    edited = _fit_masks(alpha)
    _, h, w = edited.shape
    tol = max(1, round(TOLERANCE_PX * h / 256))
    welded, wfaces, inverse = weld(verts_np, faces_np)
    n = len(welded)
    movable = np.ones(n, bool)
    if movable_faces is not None:
        fixed = ~movable_faces.detach().cpu().numpy().astype(bool)
        movable[wfaces[fixed].reshape(-1)] = False
    wfaces_t = torch.from_numpy(wfaces)
    base = torch.from_numpy(welded)
    src_mask = _silhouettes(base, wfaces_t, cameras, h, w)
    area = src_mask.flatten(1).sum(1).to(torch.float64).clamp(min=1.0)
    before = silhouette_mismatch(src_mask, edited, tol)
    stats = {"deform_mismatch_before": float((before / area).max())}
    if not movable.any() or stats["deform_mismatch_before"] <= MIN_CHANGE_FRACTION:
        unchanged.reason = "nothing may move" if not movable.any() else "the silhouettes did not change"
        unchanged.stats = stats
        return unchanged
    check()

    # changed pixels, and each vertex's distance (px) from them in the view where it is nearest
    changed = (edited & ~_dilate(src_mask, tol)) | (_erode(src_mask, tol) & ~edited)
    size_px = float(area.sqrt().mean())
    to_change = torch.from_numpy(_edt(~changed.numpy()))
    pixels0, _ = cameras.project(base, h, w)
    near = _sample(to_change, pixels0).min(0).values.numpy()
    ramp = np.clip((near - ANCHOR_FREE * size_px) / (ANCHOR_RAMP * size_px), 0.0, 1.0)
    # past the ramp the anchor would hold a vertex anyway: it is not fitted at all (the fit costs what it moves)
    active = np.nonzero(movable & (ramp < 1.0))[0]
    if len(active) == 0:
        unchanged.reason = "no movable vertex is near the change"
        unchanged.stats = stats
        return unchanged
    anchor = ANCHOR_NEAR + (ANCHOR_FAR - ANCHOR_NEAR) * ramp[active] ** 2 * (3 - 2 * ramp[active])

    outside = torch.from_numpy(_edt(~edited.numpy()))  # px from the edited silhouette, 0 inside
    lap = uniform_laplacian(wfaces, n)[:, active]  # the other vertices' displacement is 0
    lap_edges = _edges(wfaces)
    px_per_unit = cameras.focal_px(h) / cameras.radius
    # the quadratic terms' gradient is written out (autograd through a sparse product costs more than all the rest):
    # d/dd of s²(SMOOTHNESS |L d|² + sum anchor |d|²) = 2 s² (SMOOTHNESS LᵀL + diag(anchor)) d
    from scipy import sparse

    quadratic = (2.0 * px_per_unit ** 2) * (SMOOTHNESS * (lap.T @ lap) + sparse.diags(anchor)).tocsr()
    active_t = torch.from_numpy(active)
    start = base[active_t]
    everyone = np.arange(len(active))
    # the displacement is an offset along the source's normals plus a (more strongly held) free one: smoothness on the
    # offset interpolates outward growth between the outlines that show it (a crown grown x1.3 is seen on the outline
    # only at four azimuths; smoothing the 3-D displacement there would average outward vectors 90° apart to 0.7 of it)
    normals = _vertex_normals(base, wfaces_t)[active_t]
    # with PRECONDITION > 0, Adam on u = (I + PRECONDITION K) params (K: the active vertices' combinatorial Laplacian),
    # as "large steps in inverse rendering" (Nicolet et al. 2021) does: each step is smooth over the surface
    from scipy.sparse.linalg import splu

    adjacency = sparse.csr_matrix((np.ones(2 * len(lap_edges)), (np.concatenate([lap_edges[:, 0], lap_edges[:, 1]]),
                                   np.concatenate([lap_edges[:, 1], lap_edges[:, 0]]))), shape=(n, n))
    combinatorial = (sparse.diags(np.asarray(adjacency.sum(1)).ravel()) - adjacency)[active][:, active]
    system = (sparse.identity(len(active)) + PRECONDITION * combinatorial).tocsc()
    solve = splu(system).solve if PRECONDITION > 0 else (lambda x: x)  # symmetric: its transpose's solve is the same
    # Adam written out: torch.optim's first use imports torch._dynamo (seconds of CPU in a fresh process)
    u = np.zeros((len(active), 4))  # (offset along the normal, free 3-D displacement), preconditioned
    params = torch.zeros(len(active), 4, dtype=torch.float64)
    first, second = np.zeros_like(u), np.zeros_like(u)
    beta1, beta2 = 0.9, 0.999
    held = 2.0 * px_per_unit ** 2 * TANGENT_HOLD
    pairs = None
    for step in range(STEPS):
        d = params[:, :1] * normals + params[:, 1:]
        if step % RASTER_EVERY == 0:
            check()
            moved = base.index_add(0, active_t, d)
            if step >= ABORT_AFTER and _far_past_limits(_distortion(welded, moved.numpy(), wfaces)):
                break  # an added part read as a stretched surface: it will not come back within the limits
            mask = _silhouettes(moved, wfaces_t, cameras, h, w)
            pv, pi, pt = _cover_pairs(mask, edited, cameras.project(start + d, h, w)[0].numpy(), everyone)
            pairs = (torch.from_numpy(pv), torch.from_numpy(pi), torch.from_numpy(pt))
        d.requires_grad_(True)
        pixels, _ = cameras.project(start + d, h, w)
        loss = (_sample(outside, pixels) ** 2).sum()
        if len(pairs[0]):
            loss = loss + COVER_WEIGHT * ((pixels[pairs[0], pairs[1]] - pairs[2]) ** 2).sum()
        (grad_d,) = torch.autograd.grad(loss, d)
        p_np = params.numpy()
        grad = np.concatenate([(grad_d * normals).sum(1, keepdim=True).numpy(), grad_d.numpy()], 1)
        grad += quadratic @ p_np
        grad[:, 1:] += held * p_np[:, 1:]
        grad = solve(grad)
        first = beta1 * first + (1 - beta1) * grad
        second = beta2 * second + (1 - beta2) * grad * grad
        lr = LEARNING_RATE * (1.0 if step < 0.6 * STEPS else 0.3)
        u = u - lr * (first / (1 - beta1 ** (step + 1))) / (np.sqrt(second / (1 - beta2 ** (step + 1))) + 1e-12)
        params = torch.from_numpy(solve(u))
    d = params[:, :1] * normals + params[:, 1:]

    final = base.index_add(0, active_t, d)
    mask = _silhouettes(final, wfaces_t, cameras, h, w)
    after = silhouette_mismatch(mask, edited, tol)
    shift = (final - base).norm(dim=1)
    diag = float((base.max(0).values - base.min(0).values).norm())
    stats.update(deform_mismatch_after=float((after / area).max()),
                 deform_residual=float(after.sum() / before.sum().clamp(min=1.0)),
                 deform_max_displacement=float(shift.max()) / max(diag, 1e-12),
                 **{f"deform_{k}": v for k, v in _distortion(welded, final.numpy(), wfaces).items()})
    vertices = final[torch.from_numpy(inverse)].to(source.vertices.dtype).to(source.vertices.device)
    reason = ""
    if stats["deform_residual"] > MAX_RESIDUAL_GAIN or stats["deform_mismatch_after"] > MAX_RESIDUAL_FRACTION:
        reason = "the deformed silhouettes do not match the edited ones"
    elif not (MIN_SQUASH <= stats["deform_squash"] and stats["deform_stretch"] <= MAX_STRETCH
              and MIN_AREA_RATIO <= stats["deform_area_min"] and stats["deform_area_max"] <= MAX_AREA_RATIO):
        reason = "the deformation stretches or squashes the surface past a reshaped chunk's"
    elif rgb is not None:
        check()
        colour = _colour_mismatch(source, vertices, rgb, changed, cameras)
        if colour is not None:
            stats["deform_colour_mismatch"] = colour
            if colour > MAX_COLOUR_MISMATCH:
                reason = "the views' colours where the silhouettes changed are not the deformed source's"
    return Deformation(vertices, not reason, reason, stats)


__all__ = ["Deformation", "fit_deformation", "weld", "uniform_laplacian", "silhouette_mismatch"]
