"""The edit metrics as pure functions of images and loaded models, each one score per view (:class:`ViewScores`):
CLIP directional similarity, CLIPScore, CLIP-I, DINO identity (optionally over the protected components only), and
masked PSNR. Definitions: the package docstring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

import torch
import torch.nn.functional as F

from ..errors import ConfigError, ShapeError
from ..personalize.losses import downsample_mask
from ..types import ComponentMasks
from .models import ClipMetricModel, DinoMetricModel

_RANGE_TOL = 1e-3
#: Guard for empty masks.
_EPS = 1e-12
#: PSNR of identical pixels is reported as this value instead of infinity.
MAX_PSNR_DB = 100.0

ImageMask = Union[torch.Tensor, None]

# ----------------------------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class ViewScores:
    """One metric for every view of one edit.

    Attributes:
        name: metric key ("clip_directional", "clip_score", "clip_image", "dino_identity", ...).
        per_view: one float per view (NaN where a view has no score, e.g. an empty protected mask).
        mean: mean over the views that have a score.
    """

    name: str
    per_view: tuple
    mean: float

    @staticmethod
    def from_tensor(name: str, values: torch.Tensor) -> "ViewScores":
        vals = [float(v) for v in values.detach().float().cpu()]
        valid = [v for v in vals if not math.isnan(v)]
        return ViewScores(name, tuple(vals), sum(valid) / len(valid) if valid else float("nan"))


# ----------------------------------------------------------------------------------------------------------------
# checks


def check_images(name: str, images) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise ShapeError(f"{name} must be a torch.Tensor [V, 3, H, W], got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] < 1:
        raise ShapeError(f"{name} must have shape [V, 3, H, W] (channels first, RGB), got {list(images.shape)}")
    if not images.is_floating_point():
        raise ShapeError(f"{name} must be a float tensor in 0..1, got {images.dtype}")
    if not bool(torch.isfinite(images).all()):
        raise ShapeError(f"{name} contains NaN or inf values")
    lo, hi = float(images.min()), float(images.max())
    if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
        raise ShapeError(f"{name} must be in 0..1, got values in [{lo:.3g}, {hi:.3g}]; map -1..1 images with (x + 1) / 2")
    return images


def check_pair(source_images, edited_images) -> None:
    check_images("source_images", source_images)
    check_images("edited_images", edited_images)
    if source_images.shape[0] != edited_images.shape[0]:
        raise ShapeError(f"source_images has {source_images.shape[0]} views but edited_images has "
                         f"{edited_images.shape[0]}; render the source with the same cameras as the edit")


def check_caption(name: str, caption) -> str:
    if not isinstance(caption, str) or not caption.strip():
        raise ConfigError(f"{name} must be a non-empty string, got {caption!r}")
    return caption


# ----------------------------------------------------------------------------------------------------------------
# metrics


def clip_directional_similarity(source_images: torch.Tensor, edited_images: torch.Tensor, source_caption: str,
                                edit_caption: str, clip: ClipMetricModel) -> ViewScores:
    """CLIP directional similarity per view: ``cos(E_I(edit_v) - E_I(src_v), E_T(t_edit) - E_T(t_src))``.

    Args:
        source_images, edited_images: float [V, 3, H, W] in 0..1, view ``v`` of both seen by the same camera.
        source_caption: a caption of the source; edit_caption: a caption of the intended result.
        clip: from :func:`load_metric_clip` (needs the text tower).

    Returns:
        ViewScores "clip_directional", values in [-1, 1].
    """
    check_pair(source_images, edited_images)
    texts = clip.embed_texts([check_caption("source_caption", source_caption), check_caption("edit_caption", edit_caption)])
    images = clip.embed_images(torch.cat([source_images, edited_images]))
    src, edit = images.chunk(2)
    text_direction = (texts[1] - texts[0]).unsqueeze(0)
    return ViewScores.from_tensor("clip_directional", F.cosine_similarity(edit - src, text_direction, dim=-1))


def clip_text_image_score(edited_images: torch.Tensor, caption: str, clip: ClipMetricModel) -> ViewScores:
    """CLIPScore per view: ``max(100 * cos(E_I(edit_v), E_T(caption)), 0)`` in [0, 100]."""
    check_images("edited_images", edited_images)
    text = clip.embed_texts([check_caption("caption", caption)])
    cos = (clip.embed_images(edited_images) * text).sum(-1)
    return ViewScores.from_tensor("clip_score", (100.0 * cos).clamp_min(0.0))


def clip_image_similarity(source_images: torch.Tensor, edited_images: torch.Tensor, clip: ClipMetricModel) -> ViewScores:
    """CLIP-I per view: ``cos(E_I(edit_v), E_I(src_v))`` in [-1, 1]; works with an image-only clip_vision file."""
    check_pair(source_images, edited_images)
    src, edit = clip.embed_images(torch.cat([source_images, edited_images])).chunk(2)
    return ViewScores.from_tensor("clip_image", (src * edit).sum(-1))


def protected_mask(masks: ComponentMasks, edited_components: Union[str, Sequence[str]]) -> torch.Tensor:
    """The pixels of every component that is *not* edited: bool [V, H, W].

    Args:
        masks: the components' masks (bool [K, V, H, W]).
        edited_components: names (with or without angle brackets) of the components the edit changes, as a list or
            one string separated by commas ("hat, <scarf>").

    Raises:
        ConfigError: no name, an unknown component name, or no component left to protect.
    """
    if isinstance(edited_components, str):
        edited_components = edited_components.replace(";", ",").split(",")
    edited = {n.strip().strip("<>").strip() for n in edited_components} - {""}
    if not edited:
        raise ConfigError(f"name the edited component(s), e.g. 'hat'; the masks have {list(masks.names)}")
    unknown = sorted(edited - set(masks.names))
    if unknown:
        raise ConfigError(f"unknown component(s) {unknown}; the masks have {list(masks.names)}")
    keep = [i for i, n in enumerate(masks.names) if n not in edited]
    if not keep:
        raise ConfigError(f"every component ({list(masks.names)}) is edited: nothing is left to protect")
    return masks.masks[keep].any(dim=0)


def apply_protected_mask(images: torch.Tensor, mask: torch.Tensor, background=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """Composite ``images * m + background * (1 - m)``: keep only the protected pixels.

    Args:
        images: float [V, 3, H, W] in 0..1.
        mask: bool or float (0..1) [V, H, W] or [V, 1, H, W], 1 = protected (kept).
        background: RGB in 0..1 that replaces every other pixel (the renders' background).
    """
    if not isinstance(mask, torch.Tensor):
        raise ShapeError(f"mask must be a torch.Tensor [V, H, W], got {type(mask).__name__}")
    m = mask[:, 0] if mask.ndim == 4 and mask.shape[1] == 1 else mask
    if m.ndim != 3 or m.shape[0] != images.shape[0] or tuple(m.shape[1:]) != tuple(images.shape[2:]):
        raise ShapeError(f"mask must have shape [V, H, W] = {[images.shape[0], *images.shape[2:]]} to match the images, "
                         f"got {list(mask.shape)}")
    if len(background) != 3:
        raise ConfigError(f"background must be an RGB triple in 0..1, got {background!r}")
    m = m.to(images.device, images.dtype).unsqueeze(1)
    bg = images.new_tensor(tuple(float(c) for c in background)).view(1, 3, 1, 1)
    return images * m + bg * (1 - m)


def dino_identity(source_images: torch.Tensor, edited_images: torch.Tensor, dino: DinoMetricModel,
                  mask: ImageMask = None, background=(1.0, 1.0, 1.0)) -> ViewScores:
    """DINO identity per view: cosine of the [CLS] embeddings of the source and the edited view.

    Args:
        source_images, edited_images: float [V, 3, H, W] in 0..1, same cameras; same H, W when ``mask`` is given.
        dino: from :func:`load_metric_dino`.
        mask: optional protected mask bool/float [V, H, W] (1 = component the edit must not touch, see
            :func:`protected_mask`); both images keep only those pixels (:func:`apply_protected_mask`).
        background: the colour that replaces unprotected pixels.

    Returns:
        ViewScores "dino_identity" (or "dino_identity_protected" with a mask); NaN for a view whose mask is empty.

    Raises:
        ShapeError: bad shapes or values, or a mask that is empty in every view.
    """
    check_pair(source_images, edited_images)
    name = "dino_identity"
    empty = None
    if mask is not None:
        if source_images.shape != edited_images.shape:
            raise ShapeError(f"with a mask, source_images {list(source_images.shape)} and edited_images "
                             f"{list(edited_images.shape)} must have the same size")
        source_images = apply_protected_mask(source_images, mask, background)
        edited_images = apply_protected_mask(edited_images, mask, background)
        empty = (mask.reshape(mask.shape[0], -1) > 0).sum(-1) == 0
        if bool(empty.all()):
            raise ShapeError("the protected mask is empty in every view: nothing is left to compare; check which "
                             "components are marked as edited")
        name = "dino_identity_protected"
    src, edit = dino.embed_images(torch.cat([source_images, edited_images])).chunk(2)
    cos = F.cosine_similarity(edit, src, dim=-1)
    if empty is not None:
        cos = cos.masked_fill(empty.to(cos.device), float("nan"))
    return ViewScores.from_tensor(name, cos)


def masked_psnr(reference: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PSNR in dB over the pixels of a mask, per view: ``10·log10(1 / mean_{mask, RGB}((x − y)²))`` (range 0..1).

    Args:
        reference, image: float [V, 3, H, W] in 0..1.
        mask: bool/float [V, H, W] (nearest-resized to H, W).

    Returns:
        float32 [V]; NaN for a view whose mask is empty, :data:`MAX_PSNR_DB` for identical pixels.
    """
    if reference.shape != image.shape or reference.ndim != 4:
        raise ShapeError(f"images must both be [V, 3, H, W], got {list(reference.shape)} and {list(image.shape)}")
    m = downsample_mask(mask, reference.shape[-2:]).to(reference.device)
    err = ((reference.float() - image.float()) ** 2).sum(dim=1)  # [V, H, W], summed over RGB
    area = m.sum(dim=(-2, -1))
    mse = (err * m).sum(dim=(-2, -1)) / (3.0 * area.clamp_min(_EPS))
    psnr = (10.0 * torch.log10(1.0 / mse.clamp_min(10 ** (-MAX_PSNR_DB / 10)))).clamp(max=MAX_PSNR_DB)
    return torch.where(area > 0, psnr, torch.full_like(psnr, float("nan"))).cpu()
