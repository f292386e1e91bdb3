"""The two losses of multi-view personalisation, as pure functions.

Break-a-Scene (google/break-a-scene ``train.py``) mapped onto MVDream (``../shared/design/mvdream.md`` §6):

* masked diffusion loss: ``L = mean((M·ε̂ − M·ε)²)`` over every element of every view, with ``M`` the union of the
  chosen components' masks, nearest-downsampled to the latent size. Not normalised by the mask's area.
* attention-alignment loss: for each chosen token ``i`` and each view ``v``, the token's cross-attention map (averaged
  over heads and the chosen layers) is pulled onto that component's mask in that view, nearest-downsampled to the
  map's size. Break-a-Scene max-normalises the map, ``A = a / max(a)``, and takes ``mean((A − M)²)``; that form lets
  the token of a small component sharpen a peak anywhere instead of moving into its mask, so the default here
  compares distributions instead, ``KL(M/ΣM ‖ a/Σa)`` (see :func:`attention_alignment_loss`; Break-a-Scene's form
  stays available as ``normalisation="max"``). Break-a-Scene sums over tokens and computes its maps from "the
  conditional sample, all heads"; that is what :func:`average_attention_maps` and :func:`attention_alignment_loss` do
  (its code keeps half the heads when prior preservation is off, a quirk we do not copy).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError, ShapeError

#: Guard against an all-zero attention map in the max-normalisation (a real softmax column is never all zero).
_MAX_NORM_EPS = 1e-12


def downsample_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour downsampling of masks, as ``F.interpolate(mode="nearest")`` (Break-a-Scene).

    Args:
        mask: bool or float [..., H, W] (values 0..1).
        size: (h, w) of the result.

    Returns:
        float32 [..., h, w] with the values of the chosen source pixels.
    """
    if mask.ndim < 2:
        raise ShapeError(f"mask must be [..., H, W], got shape {list(mask.shape)}")
    lead = mask.shape[:-2]
    flat = mask.reshape(-1, 1, *mask.shape[-2:]).to(torch.float32)
    out = F.interpolate(flat, size=tuple(int(s) for s in size), mode="nearest")
    return out.reshape(*lead, *out.shape[-2:])


def masked_diffusion_loss(eps_pred: torch.Tensor, eps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Noise-prediction MSE restricted to a mask: ``mean((M·ε̂ − M·ε)²)`` over all elements.

    Args:
        eps_pred: float [N, C, h, w] predicted noise (N = views of the object(s)).
        eps: float [N, C, h, w] the noise that was added.
        mask: bool/float [N, H, W] or [N, 1, H, W]: the union mask per view at any resolution; it is
            nearest-downsampled to (h, w) here.

    Returns:
        float32 scalar.
    """
    if eps_pred.shape != eps.shape or eps.ndim != 4:
        raise ShapeError(f"eps_pred and eps must both be [N, C, h, w], got {list(eps_pred.shape)} and {list(eps.shape)}")
    if mask.ndim == 4:
        if mask.shape[1] != 1:
            raise ShapeError(f"mask must be [N, H, W] or [N, 1, H, W], got {list(mask.shape)}")
        mask = mask[:, 0]
    if mask.ndim != 3 or mask.shape[0] != eps.shape[0]:
        raise ShapeError(f"mask must be [N={eps.shape[0]}, H, W], got {list(mask.shape)}")
    m = downsample_mask(mask, eps.shape[-2:]).to(device=eps.device)[:, None]
    diff = m * eps_pred.float() - m * eps.float()
    return diff.pow(2).mean()


def average_attention_maps(maps: Mapping[str, torch.Tensor], batch: int) -> torch.Tensor:
    """Average recorded cross-attention probabilities over heads and layers.

    Args:
        maps: {layer name: probs float [batch·heads, HW, T]} with diffusers' batch-major head layout
            (index = n·heads + head, n view-contiguous). All layers must share HW and T; head counts may differ.
        batch: N, the number of images (views) in the forward pass.

    Returns:
        float32 [N, HW, T].
    """
    if not maps:
        raise ShapeError("no cross-attention maps were recorded: check the layer names given to the recorder")
    total = None
    shape = None
    for name, probs in maps.items():
        if probs.ndim != 3 or probs.shape[0] % batch:
            raise ShapeError(f"attention map of {name} must be [batch·heads, HW, T] with batch {batch}, got {list(probs.shape)}")
        if shape is None:
            shape = probs.shape[1:]
        elif probs.shape[1:] != shape:
            raise ShapeError(f"attention maps have different sizes: {list(shape)} vs {list(probs.shape[1:])} ({name})")
        heads = probs.shape[0] // batch
        mean = probs.float().reshape(batch, heads, *probs.shape[1:]).mean(dim=1)
        total = mean if total is None else total + mean
    return total / len(maps)


def map_size(hw: int, aspect: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a flattened attention map of ``hw`` queries whose image has aspect ``aspect`` = (H, W)."""
    ah, aw = aspect
    h = int(round(math.sqrt(hw * ah / aw)))
    if h <= 0 or hw % h or h * aw != (hw // h) * ah:
        raise ShapeError(f"cannot unflatten {hw} attention queries into an image of aspect {ah}:{aw}")
    return h, hw // h


#: How :func:`attention_alignment_loss` normalises a token's map before comparing it with the mask (the training
#: phases take it from ``ObjectiveConfig.attention_normalisation``).
ATTENTION_NORMALISATIONS = ("distribution", "max")


def attention_alignment_loss(attention: torch.Tensor, token_positions: Sequence[int], masks: torch.Tensor,
                             normalisation: str = "distribution") -> torch.Tensor:
    """Pull each token's cross-attention map onto its component's mask, view by view.

    ``normalisation="distribution"`` (the default): the token's map in view v becomes a distribution over the map's
    pixels, ``p = a / Σ a``, the mask the uniform distribution over its pixels, ``q = M / Σ M``, and the loss is
    ``KL(q ‖ p) = Σ_x q(x)·log(q(x) / p(x))``, averaged over the views whose (downsampled) mask is not empty and summed
    over tokens. It is 0 exactly when the attention is spread evenly over the mask and nowhere else, and it weighs a
    small component as much as a large one.

    ``normalisation="max"``: Break-a-Scene's ``A = a / max(a)`` and ``mean_{v, pixels}((A − M)²)``. Its value for a
    map with one sharp peak *anywhere* is about the mask's area share, far below the ``1 − area`` of an even map, so
    for a component covering little of the image the gradient mostly sharpens the map's current peak, wherever that
    is, instead of moving attention into the mask: on the tiny model's two-block asset the smaller block's token
    gained no isolation over λ = 0 with it (issue 18; figures in ``bench/token_isolation_study.py``).

    Args:
        attention: float [N, h, w, T] head- and layer-averaged probabilities (N views).
        token_positions: for each chosen token i, its position in the T text positions.
        masks: bool/float [k, N, H, W]: mask of token i's component in each view (any resolution;
            nearest-downsampled to (h, w)).
        normalisation: "distribution" or "max" (see above).

    Returns:
        float32 scalar.
    """
    if normalisation not in ATTENTION_NORMALISATIONS:
        raise ConfigError(f"normalisation must be one of {ATTENTION_NORMALISATIONS}, got {normalisation!r}")
    if attention.ndim != 4:
        raise ShapeError(f"attention must be [N, h, w, T], got {list(attention.shape)}")
    n, h, w, t = attention.shape
    if masks.ndim != 4 or masks.shape[0] != len(token_positions) or masks.shape[1] != n:
        raise ShapeError(f"masks must be [k={len(token_positions)}, N={n}, H, W], got {list(masks.shape)}")
    target = downsample_mask(masks, (h, w)).to(attention.device)
    loss = attention.new_zeros((), dtype=torch.float32)
    for i, pos in enumerate(token_positions):
        if not 0 <= int(pos) < t:
            raise ShapeError(f"token position {pos} is outside the {t} text positions")
        a = attention[..., int(pos)].float()  # [N, h, w]
        if normalisation == "max":
            a = a / a.amax(dim=(-2, -1), keepdim=True).clamp_min(_MAX_NORM_EPS)
            loss = loss + F.mse_loss(a, target[i])
            continue
        area = target[i].sum(dim=(-2, -1))  # [N]
        present = area > 0
        if not bool(present.any()):
            continue
        p = a / a.sum(dim=(-2, -1), keepdim=True).clamp_min(_MAX_NORM_EPS)
        q = target[i] / area.clamp_min(1.0)[:, None, None]
        # Σ_x q·log(q/p) over the mask's pixels (q = 0 elsewhere contributes nothing)
        kl = (q * (torch.log(q.clamp_min(_MAX_NORM_EPS)) - torch.log(p.clamp_min(_MAX_NORM_EPS)))).sum(dim=(-2, -1))
        loss = loss + kl[present].mean()
    return loss


def attention_mass_inside(attention: torch.Tensor, token_position: int, mask: torch.Tensor) -> torch.Tensor:
    """Fraction of a token's attention that falls inside a mask, per view (a diagnostic, not a loss).

    Args:
        attention: float [N, h, w, T].
        token_position: the token's text position.
        mask: bool/float [N, H, W].

    Returns:
        float32 [N] in 0..1.
    """
    n, h, w, _ = attention.shape
    m = downsample_mask(mask, (h, w)).to(attention.device)
    a = attention[..., int(token_position)].float()
    return (a * m).sum(dim=(-2, -1)) / a.sum(dim=(-2, -1)).clamp_min(_MAX_NORM_EPS)
