"""Checking the views handed to lifting, and building their silhouettes.

MVSample gives colour only, so a silhouette is keyed out of the known background colour and cleaned up morphologically
(``../shared/design/render-lift.md`` §5 step 1). A render or a user MASK gives alpha directly.
"""

from __future__ import annotations

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


def _key_one(diff_raw: np.ndarray, diff_blur: np.ndarray, threshold: float) -> np.ndarray:
    strict = _clean_mask(diff_raw > threshold)
    if not strict.any():
        return strict
    # Light object parts on a light background (a white van on white) differ from it by less than `threshold`, and
    # hole filling cannot recover them where they touch the outline. A flood fill of the background from the border,
    # through pixels that match it closely after denoising, stops at them. It is trusted only inside the strict mask's
    # box, so a background that drifts (vignetting, gradients) far from the object adds nothing.
    from scipy import ndimage

    loose = ~_flood_background(diff_blur < min(FLOOD_THRESHOLD, threshold))
    loose = _clean_mask(ndimage.binary_erosion(loose, structure=np.ones((3, 3), bool)))  # undo the blur's 1 px spread
    rows, cols = np.flatnonzero(strict.any(1)), np.flatnonzero(strict.any(0))
    pad = 4
    box = np.zeros_like(strict)
    box[max(rows[0] - pad, 0):rows[-1] + pad + 1, max(cols[0] - pad, 0):cols[-1] + pad + 1] = True
    return _clean_mask(strict | (loose & box))


def key_background(rgb: torch.Tensor, background: Sequence[float] = (1.0, 1.0, 1.0),
                   threshold: float = DEFAULT_KEY_THRESHOLD) -> torch.Tensor:
    """Silhouettes of views composited over a flat ``background`` colour.

    A pixel is object when any channel differs from the background by more than ``threshold``; each mask is then opened
    (3x3), reduced to its significant components and hole-filled, so white details inside the object stay object.
    Near the object, pixels the background cannot reach by a flood fill from the image border (through pixels within
    0.02 of the background colour after a 3x3 blur) are object too: this keeps light parts that touch the outline.

    Args:
        rgb: float [V, 3, H, W] in 0..1.
        background: RGB in 0..1.
        threshold: colour distance in 0..1.

    Returns:
        float32 [V, 1, H, W] in {0, 1} on ``rgb``'s device.
    """
    if len(background) != 3:
        raise ShapeError(f"background must be an RGB triple in 0..1, got {background!r}")
    bg = torch.tensor([float(c) for c in background], dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    diff = rgb - bg
    diff_raw = diff.abs().amax(dim=1).cpu().numpy()
    blurred = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(diff, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    diff_blur = blurred.abs().amax(dim=1).cpu().numpy()
    masks = np.stack([_key_one(r, b, threshold) for r, b in zip(diff_raw, diff_blur)])
    return torch.from_numpy(masks).to(device=rgb.device, dtype=torch.float32)[:, None]


def check_masks(alpha: torch.Tensor, keyed: bool, background: Sequence[float] = (1.0, 1.0, 1.0)) -> None:
    """Raise LiftError for a view whose silhouette is empty or fills the whole frame."""
    v = alpha.shape[0]
    names = view_names(v)
    area = (alpha[:, 0] > 0.5).flatten(1).sum(1).cpu()
    total = alpha.shape[-1] * alpha.shape[-2]
    for i in range(v):
        if int(area[i]) < MIN_MASK_PIXELS:
            how = (f"no pixel differs from the background colour {tuple(background)}; set `background` to the views' "
                   "background or pass alpha") if keyed else "its alpha is empty"
            raise LiftError(f"view {i} ({names[i]}) shows no object: {how}")
        if float(area[i]) > MAX_MASK_FRACTION * total:
            how = (f"the background colour {tuple(background)} does not match the image; set `background` or pass alpha"
                   if keyed else "pass alpha that is 0 on the background")
            raise LiftError(f"view {i} ({names[i]}) is object everywhere ({float(area[i]) / total:.0%} of its pixels): {how}")
