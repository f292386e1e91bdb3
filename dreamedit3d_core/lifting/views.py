"""Checking the views handed to lifting, and building their silhouettes.

MVSample gives colour only, so a silhouette is keyed out of the known background colour and cleaned up morphologically
(``../shared/design/render-lift.md`` §5 step 1). A render or a user MASK gives alpha directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ..cameras import MVCameras, view_names
from ..errors import LiftError, ShapeError

#: Smallest view side we lift from; smaller views carry too little silhouette to carve a hull.
MIN_VIEW_SIZE = 32
#: A view whose mask covers fewer pixels than this is treated as empty.
MIN_MASK_PIXELS = 16
#: A mask covering more than this fraction of its view means the background key did not match.
MAX_MASK_FRACTION = 0.97
#: Default colour distance (max over channels) above which a pixel counts as object when keying the background.
DEFAULT_KEY_THRESHOLD = 0.06
#: Components of a keyed mask smaller than this fraction of the largest one are dropped as speckle.
MIN_COMPONENT_FRACTION = 0.01


def check_views(rgb: torch.Tensor, cameras: MVCameras, alpha: Optional[torch.Tensor] = None) -> None:
    """Raise a clear error for views that cannot be lifted.

    Args:
        rgb: float [V, 3, H, W] in 0..1.
        cameras: the V cameras the views were made with.
        alpha: float [V, 1, H, W] in 0..1, or None.

    Raises:
        ShapeError: wrong type, shape, view count, size, NaN/inf, or values outside 0..1.
    """
    if not isinstance(cameras, MVCameras):
        raise ShapeError(f"cameras must be an MVCameras, got {type(cameras).__name__}; use the cameras the views were made with")
    if not isinstance(rgb, torch.Tensor) or not rgb.is_floating_point():
        raise ShapeError(f"rgb must be a float tensor [V, 3, H, W] in 0..1, got {type(rgb).__name__}"
                         f"{'' if not isinstance(rgb, torch.Tensor) else ' of ' + str(rgb.dtype)}")
    if rgb.ndim != 4 or rgb.shape[1] != 3:
        hint = " (this looks like ComfyUI's [B, H, W, 3]; permute to channels-first)" if rgb.ndim == 4 and rgb.shape[-1] == 3 else ""
        raise ShapeError(f"rgb must have shape [V, 3, H, W], got {list(rgb.shape)}{hint}")
    v, _, h, w = rgb.shape
    if v != cameras.num_views:
        raise ShapeError(f"got {v} views but the cameras have {cameras.num_views}; pass the {cameras.num_views} views of one "
                         f"object ({', '.join(view_names(cameras.num_views))}) in that order")
    if h < MIN_VIEW_SIZE or w < MIN_VIEW_SIZE:
        raise ShapeError(f"views are {h}x{w} pixels; lifting needs at least {MIN_VIEW_SIZE}x{MIN_VIEW_SIZE}")
    if not bool(torch.isfinite(rgb).all()):
        bad = [i for i in range(v) if not bool(torch.isfinite(rgb[i]).all())]
        raise ShapeError(f"rgb contains NaN or inf pixels in view(s) {bad}; the sampler diverged: re-sample these views")
    lo, hi = float(rgb.min()), float(rgb.max())
    if lo < -0.02 or hi > 1.02:
        raise ShapeError(f"rgb must be in 0..1, got values in {lo:.3g}..{hi:.3g}; convert -1..1 images with (x + 1) / 2")
    if alpha is None:
        return
    if not isinstance(alpha, torch.Tensor) or not alpha.is_floating_point():
        raise ShapeError(f"alpha must be a float tensor [V, 1, H, W] in 0..1, got {type(alpha).__name__}")
    if alpha.ndim == 3 and tuple(alpha.shape) == (v, h, w):
        alpha = alpha[:, None]  # accepted; the caller unsqueezes it the same way
    if tuple(alpha.shape) != (v, 1, h, w):
        raise ShapeError(f"alpha must have shape [{v}, 1, {h}, {w}] like rgb, got {list(alpha.shape)}")
    if not bool(torch.isfinite(alpha).all()):
        raise ShapeError("alpha contains NaN or inf values; pass a mask in 0..1")
    if float(alpha.min()) < -0.02 or float(alpha.max()) > 1.02:
        raise ShapeError(f"alpha must be in 0..1, got {float(alpha.min()):.3g}..{float(alpha.max()):.3g}")


#: Tighter colour distance, on a 3x3-blurred image, for the background flood fill from the image border.
FLOOD_THRESHOLD = 0.02
#: Components smaller than this many pixels are speckle whatever the object's size.
MIN_COMPONENT_PIXELS = 16


def _clean_mask(mask: np.ndarray) -> np.ndarray:
    """Opening (drop speckle), significant components, hole filling of one bool [H, W] mask."""
    from scipy import ndimage

    mask = ndimage.binary_opening(mask, structure=np.ones((3, 3), bool))
    labels, n = ndimage.label(mask)
    if n >= 1:
        sizes = np.bincount(labels.ravel())[1:]
        keep = np.flatnonzero(sizes >= max(MIN_COMPONENT_FRACTION * sizes.max(), MIN_COMPONENT_PIXELS)) + 1
        mask = np.isin(labels, keep)
    return ndimage.binary_fill_holes(mask)


def _flood_background(near_bg: np.ndarray) -> np.ndarray:
    """Pixels of ``near_bg`` [H, W] connected to the image border (4-connectivity)."""
    from scipy import ndimage

    labels, _ = ndimage.label(near_bg)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, border[border > 0])


def _key_one(diff_raw: np.ndarray, diff_blur: np.ndarray, threshold: float, flood_threshold: float) -> np.ndarray:
    strict = _clean_mask(diff_raw > threshold)
    if not strict.any():
        return strict
    # Light object parts on a light background (a white van on white) differ from it by less than `threshold`, and
    # hole filling cannot recover them where they touch the outline. A flood fill of the background from the border,
    # through pixels that match it closely after denoising, stops at them. It is trusted only inside the strict mask's
    # box, so a background that drifts (vignetting, gradients) far from the object adds nothing.
    from scipy import ndimage

    loose = ~_flood_background(diff_blur < flood_threshold)
    loose = _clean_mask(ndimage.binary_erosion(loose, structure=np.ones((3, 3), bool)))  # undo the blur's 1 px spread
    rows, cols = np.flatnonzero(strict.any(1)), np.flatnonzero(strict.any(0))
    pad = 4
    box = np.zeros_like(strict)
    box[max(rows[0] - pad, 0):rows[-1] + pad + 1, max(cols[0] - pad, 0):cols[-1] + pad + 1] = True
    return _clean_mask(strict | (loose & box))


#: Width of the border ring, as a fraction of the view's shorter side (at least 2 px), that estimates its background.
BORDER_FRACTION = 1.0 / 64.0
#: A view's border is a flat background when at least this fraction of its pixels lies within the key threshold of one
#: colour; an object may touch or leave the frame on part of the border, but not on most of it.
MIN_FLAT_BORDER_FRACTION = 0.6
#: The key threshold grows to this many times the border's own noise (95th percentile distance), so sampler noise on
#: the background is not keyed as object.
NOISE_KEY_FACTOR = 2.5
#: The flood fill through the background tolerates this many times the border's noise.
NOISE_FLOOD_FACTOR = 1.5
#: ... but never beyond this colour distance, which would eat light object parts.
MAX_AUTO_THRESHOLD = 0.15
#: ``background`` value that estimates each view's background colour from its border.
AUTO_BACKGROUND = "auto"


@dataclass(frozen=True)
class BackgroundEstimate:
    """Each view's background as read off its border ring.

    colors: float32 [V, 3] in 0..1 (the mean of the border pixels near the border's median colour); flat_fraction: [V]
    fraction of border pixels within the threshold of that colour; thresholds: [V] the key threshold per view (the
    caller's, raised for noisy backgrounds); flood_thresholds: [V] the flood fill's tolerance per view (``FLOOD_THRESHOLD``
    raised to ``NOISE_FLOOD_FACTOR`` times the border's noise, at most the key threshold).
    """

    colors: torch.Tensor
    flat_fraction: torch.Tensor
    thresholds: torch.Tensor
    flood_thresholds: torch.Tensor

    def is_flat(self) -> torch.Tensor:
        return self.flat_fraction >= MIN_FLAT_BORDER_FRACTION


def border_pixels(rgb: torch.Tensor) -> torch.Tensor:
    """The pixels of each view's border ring: float [V, P, 3]."""
    h, w = rgb.shape[-2:]
    k = max(2, int(round(min(h, w) * BORDER_FRACTION)))
    ring = torch.zeros(h, w, dtype=torch.bool, device=rgb.device)
    ring[:k] = ring[-k:] = True
    ring[:, :k] = ring[:, -k:] = True
    return rgb[:, :, ring].transpose(1, 2)


def estimate_background(rgb: torch.Tensor, threshold: float = DEFAULT_KEY_THRESHOLD) -> BackgroundEstimate:
    """Estimate each view's flat background colour from its border ring (robust to an object touching the frame).

    The median border colour is refined to the mean of the border pixels within ``threshold`` of it; the key threshold of a
    view is raised to ``NOISE_KEY_FACTOR`` times the 95th-percentile distance of those pixels (at most
    ``MAX_AUTO_THRESHOLD``), so a sampler's noisy white or grey background keys cleanly.

    Args:
        rgb: float [V, 3, H, W] in 0..1.
        threshold: the smallest key threshold, colour distance in 0..1.
    """
    px = border_pixels(rgb.to(torch.float32))  # [V, P, 3]
    median = px.median(dim=1).values  # [V, 3]
    dist = (px - median[:, None]).abs().amax(-1)  # [V, P]
    near = dist <= threshold
    colors = (px * near[..., None]).sum(1) / near.sum(1, keepdim=True).clamp(min=1)
    dist = (px - colors[:, None]).abs().amax(-1)
    near = dist <= threshold
    noise = torch.stack([d[n].quantile(0.95) if bool(n.any()) else d.new_tensor(1.0) for d, n in zip(dist, near)])
    thresholds = (NOISE_KEY_FACTOR * noise).clamp(min=threshold, max=max(threshold, MAX_AUTO_THRESHOLD))
    flood = torch.minimum((NOISE_FLOOD_FACTOR * noise).clamp(min=FLOOD_THRESHOLD), thresholds)
    return BackgroundEstimate(colors=colors, flat_fraction=near.to(torch.float32).mean(1), thresholds=thresholds,
                              flood_thresholds=flood)


def background_rows(background, num_views: int, device) -> torch.Tensor:
    """``background`` (an RGB triple, or one triple per view) as float32 [V, 3]."""
    bg = torch.as_tensor(background, dtype=torch.float32, device=device) if not isinstance(background, torch.Tensor) \
        else background.to(device=device, dtype=torch.float32)
    if bg.ndim == 1 and bg.shape[0] == 3:
        bg = bg.expand(num_views, 3)
    if bg.shape != (num_views, 3) or not bool(torch.isfinite(bg).all()) or float(bg.min()) < 0 or float(bg.max()) > 1:
        raise ShapeError(f"background must be 'auto', an RGB triple in 0..1 or one per view [{num_views}, 3], "
                         f"got {background!r}")
    return bg


def key_background(rgb: torch.Tensor, background=(1.0, 1.0, 1.0),
                   threshold=DEFAULT_KEY_THRESHOLD, flood_threshold=None) -> torch.Tensor:
    """Silhouettes of views composited over a flat ``background`` colour.

    A pixel is object when any channel differs from the background by more than ``threshold``; each mask is then opened
    (3x3), reduced to its significant components and hole-filled, so white details inside the object stay object.
    Near the object, pixels the background cannot reach by a flood fill from the image border (through pixels within
    0.02 of the background colour after a 3x3 blur) are object too: this keeps light parts that touch the outline.

    Args:
        rgb: float [V, 3, H, W] in 0..1.
        background: RGB in 0..1, or float [V, 3] (one colour per view, as :func:`estimate_background` gives).
        threshold: colour distance in 0..1, or float [V] (one per view).
        flood_threshold: the flood fill's tolerance, or float [V]; default ``min(FLOOD_THRESHOLD, threshold)``.

    Returns:
        float32 [V, 1, H, W] in {0, 1} on ``rgb``'s device.
    """
    v = rgb.shape[0]
    bg = background_rows(background, v, rgb.device).to(rgb.dtype).view(v, 3, 1, 1)
    thresholds = torch.as_tensor(threshold, dtype=torch.float32).reshape(-1).expand(v)
    floods = (thresholds.clamp(max=FLOOD_THRESHOLD) if flood_threshold is None
              else torch.as_tensor(flood_threshold, dtype=torch.float32).reshape(-1).expand(v))
    diff = rgb - bg
    diff_raw = diff.abs().amax(dim=1).cpu().numpy()
    blurred = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(diff, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    diff_blur = blurred.abs().amax(dim=1).cpu().numpy()
    masks = np.stack([_key_one(r, b, t, f) for r, b, t, f in zip(diff_raw, diff_blur, thresholds.tolist(), floods.tolist())])
    return torch.from_numpy(masks).to(device=rgb.device, dtype=torch.float32)[:, None]


def median3(rgb: torch.Tensor) -> torch.Tensor:
    """3x3 median filter of [V, C, H, W] images (replicated borders): removes pixel noise, keeps straight edges."""
    v, c, h, w = rgb.shape
    padded = torch.nn.functional.pad(rgb, (1, 1, 1, 1), mode="replicate")
    patches = torch.nn.functional.unfold(padded.reshape(v * c, 1, h + 2, w + 2), 3)  # [V*C, 9, H*W]
    return patches.median(dim=1).values.reshape(v, c, h, w)


def key_views_auto(rgb: torch.Tensor, threshold: float = DEFAULT_KEY_THRESHOLD
                   ) -> tuple[torch.Tensor, BackgroundEstimate]:
    """Silhouettes of views on unknown flat backgrounds (sampled views): each view's background is estimated from its
    border and keyed out, both on a 3x3-median-filtered copy, so sampler noise neither raises the threshold much nor
    speckles the mask.

    Returns:
        (float32 [V, 1, H, W] in {0, 1}, the estimate; check :func:`unkeyable_views` before trusting a view's mask).
    """
    clean = median3(rgb.to(torch.float32))
    estimate = estimate_background(clean, threshold)
    return key_background(clean, estimate.colors, estimate.thresholds, estimate.flood_thresholds), estimate


#: Largest shift, in pixels at 256 px, searched when registering a view to the source's render.
MAX_REGISTRATION_SHIFT_PX = 3
#: A shift is taken only when it lowers the view's mean colour difference from the source render by this fraction
#: (measured: views shifted 1-2 px with +-5 % gain, 0.06-0.12 lower at the true shift; unshifted views: best at 0).
MIN_REGISTRATION_GAIN = 0.03


def shift_images(images: torch.Tensor, shifts: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Each image moved by whole pixels: images float [V, C, H, W], shifts int [V, 2] (dx right, dy down), fill float
    [V, C] for the uncovered border."""
    v, c, h, w = images.shape
    out = fill.to(images.dtype).view(v, c, 1, 1).expand(v, c, h, w).clone()
    for i, (dx, dy) in enumerate(shifts.tolist()):
        dx, dy = max(-w + 1, min(w - 1, dx)), max(-h + 1, min(h - 1, dy))
        out[i, :, max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)] = \
            images[i, :, max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
    return out


def register_to_source(rgb: torch.Tensor, source_rgb: torch.Tensor,
                       max_shift_px: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole-pixel shift that puts each view on the source's render, and how much it lowers the difference.

    Edited views come from a sampler that does not place the object exactly where the source was rendered; comparing
    them with the source texel by texel (what kept, what changed) then sees a pixel or two of change along every edge.
    Each view is compared with the source render (both on the view's background) at every shift up to
    ``max_shift_px`` (default ``MAX_REGISTRATION_SHIFT_PX`` at 256 px, scaled with the view's size) by the mean absolute
    colour difference; an edit changes part of the image whatever the shift, so the minimum is still where the
    unchanged parts line up. A view keeps shift 0 unless the best shift lowers the difference by
    ``MIN_REGISTRATION_GAIN`` of it.

    Args:
        rgb: float [V, 3, H, W] the views; source_rgb: float [V, 3, H, W] the source render composited on the same
            backgrounds.

    Returns:
        (int64 [V, 2] shifts (dx right, dy down) to apply to the views, float [V] best difference / difference at 0).
    """
    v, _, h, w = rgb.shape
    r = max(1, round((MAX_REGISTRATION_SHIFT_PX if max_shift_px is None else max_shift_px) * h / 256))
    view = median3(rgb.to(torch.float32))
    src = median3(source_rgb.to(device=rgb.device, dtype=torch.float32))
    offsets = [(dx, dy) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
    # compare inside the frame both images cover at every offset: the border the shift uncovers is not evidence
    core_src = src[..., r:h - r, r:w - r]
    costs = torch.stack([(view[..., r - dy:h - r - dy, r - dx:w - r - dx] - core_src).abs().mean((1, 2, 3))
                         for dx, dy in offsets], 1)  # [V, offsets]
    zero = costs[:, offsets.index((0, 0))]
    best_cost, best = costs.min(1)
    ratio = best_cost / zero.clamp(min=1e-12)
    take = ratio <= 1.0 - MIN_REGISTRATION_GAIN
    shifts = torch.tensor([offsets[int(i)] for i in best], dtype=torch.int64) * take.cpu()[:, None]
    return shifts, torch.where(take, ratio, torch.ones_like(ratio))


def add_background_coloured_source(alpha: torch.Tensor, rgb: torch.Tensor, background: torch.Tensor, threshold,
                                   source_color: torch.Tensor, source_alpha: torch.Tensor) -> torch.Tensor:
    """Keyed silhouettes with the source's background-coloured surface put back where the views still show it.

    A white van on white (or any surface the colour of the background) cannot be keyed: no colour separates it from the
    background, and the flood fill leaks into it where it touches the outline. The source render knows where such
    surface is. A pixel that the key left out counts as object when the source covers it and the source's own colour
    there is, like the view's, within ``threshold`` of the background: the view agrees with the source. Surface the
    edit really removed is indistinguishable there (background-coloured both ways) and stays; surface of another
    colour that the edit removed (the view shows background where the source does not) goes.

    Args:
        alpha: float [V, 1, H, W] keyed silhouettes in {0, 1}.
        rgb: float [V, 3, H, W] the views (as keyed); background: float [V, 3] their background colours;
        threshold: the key's colour distance, a float or float [V].
        source_color: float [V, 3, H, W] the source's unlit colour (any value off its silhouette);
        source_alpha: float [V, 1, H, W] the source's coverage.

    Returns:
        float32 [V, 1, H, W] in {0, 1}: the masks, cleaned again like keyed masks.
    """
    v = rgb.shape[0]
    bg = background.to(device=rgb.device, dtype=torch.float32).view(v, 3, 1, 1)
    thr = torch.as_tensor(threshold, dtype=torch.float32, device=rgb.device).reshape(-1).expand(v).view(v, 1, 1)
    view_like_bg = (rgb.to(torch.float32) - bg).abs().amax(1) <= thr
    source_like_bg = (source_color.to(device=rgb.device, dtype=torch.float32) - bg).abs().amax(1) <= thr
    inside_source = source_alpha.to(rgb.device)[:, 0] > 0.5
    add = view_like_bg & source_like_bg & inside_source & (alpha[:, 0] <= 0.5)
    if not bool(add.any()):
        return alpha
    merged = ((alpha[:, 0] > 0.5) | add).cpu().numpy()
    masks = np.stack([_clean_mask(m) for m in merged])
    return torch.from_numpy(masks).to(device=alpha.device, dtype=torch.float32)[:, None]


def unkeyable_views(estimate: BackgroundEstimate) -> list:
    """Indices of the views whose border is not a flat background."""
    return [i for i, flat in enumerate(estimate.is_flat().tolist()) if not flat]


def describe_unkeyable(estimate: BackgroundEstimate, threshold: float) -> str:
    """One line naming the views without a flat background and what to do."""
    bad = unkeyable_views(estimate)
    names = view_names(estimate.colors.shape[0])
    worst = min(bad, key=lambda i: float(estimate.flat_fraction[i]))
    return (f"view(s) {', '.join(f'{i} ({names[i]})' for i in bad)} have no flat background to key out: only "
            f"{float(estimate.flat_fraction[worst]):.0%} of view {worst}'s border pixels lie within {threshold:g} of one "
            "colour; pass alpha (e.g. ComponentMask or SAM masks), a `background` colour, or a source asset")


def check_masks(alpha: torch.Tensor, keyed: bool, background=(1.0, 1.0, 1.0),
                views: Optional[Sequence[int]] = None) -> None:
    """Raise LiftError for a view whose silhouette is empty or fills the whole frame.

    ``background`` (an RGB triple or [V, 3] rows) is only quoted in the messages of keyed silhouettes; ``views`` limits
    the check to these view indices (default: all).
    """
    v = alpha.shape[0]
    names = view_names(v)
    area = (alpha[:, 0] > 0.5).flatten(1).sum(1).cpu()
    total = alpha.shape[-1] * alpha.shape[-2]
    rows = background_rows(background, v, "cpu") if keyed else None

    def colour(i):
        return "(" + ", ".join(f"{c:.3g}" for c in rows[i].tolist()) + ")"

    for i in range(v) if views is None else views:
        if int(area[i]) < MIN_MASK_PIXELS:
            how = (f"no pixel differs from its background colour {colour(i)}; re-sample this view, set `background` to "
                   "the views' background or pass alpha") if keyed else "its alpha is empty"
            raise LiftError(f"view {i} ({names[i]}) shows no object: {how}")
        if float(area[i]) > MAX_MASK_FRACTION * total:
            how = (f"the background colour {colour(i)} does not match the image; set `background` or pass alpha"
                   if keyed else "pass alpha that is 0 on the background")
            raise LiftError(f"view {i} ({names[i]}) is object everywhere ({float(area[i]) / total:.0%} of its pixels): {how}")
