"""The token report's measures and picture, pure tensor functions (no model): leakage shares, mask areas, where an
image change falls, the one-line verdict, and the attention heat map (masked PSNR is the metrics' one, re-exported)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import ShapeError
from ..metrics.scores import MAX_PSNR_DB, masked_psnr  # noqa: F401  (one home: the metrics; re-exported here)
from ..personalize.losses import attention_mass_inside, downsample_mask

#: Guard for empty masks / all-zero change maps.
_EPS = 1e-12


def attention_shares(attention: torch.Tensor, positions: Sequence[int], masks: torch.Tensor) -> torch.Tensor:
    """Leakage matrix: share of each token's attention mass inside each component's mask, per view.

    Args:
        attention: float [V, h, w, T] head/layer(/timestep)-averaged cross-attention probabilities.
        positions: K text positions, token i's position in the T text positions.
        masks: bool/float [C, V, H, W] component masks (nearest-downsampled to (h, w), as the attention loss does).

    Returns:
        float32 [K, C, V]: ``Σ_p a_i(p)·m_c(p) / Σ_p a_i(p)`` for token i, component c, view v.
    """
    if attention.ndim != 4:
        raise ShapeError(f"attention must be [V, h, w, T], got {list(attention.shape)}")
    if masks.ndim != 4 or masks.shape[1] != attention.shape[0]:
        raise ShapeError(f"masks must be [C, V={attention.shape[0]}, H, W], got {list(masks.shape)}")
    rows = [torch.stack([attention_mass_inside(attention, int(pos), masks[c]) for c in range(masks.shape[0])])
            for pos in positions]
    return torch.stack(rows).float().cpu()


def mask_area_shares(masks: torch.Tensor, size: Optional[tuple] = None) -> torch.Tensor:
    """float32 [C, V]: the fraction of each view's pixels inside each mask (at ``size`` (h, w) when given, nearest)."""
    m = downsample_mask(masks, size) if size is not None else masks.float()
    return m.mean(dim=(-2, -1)).float().cpu()


def change_shares(reference: torch.Tensor, changed: torch.Tensor, region: torch.Tensor) -> tuple:
    """Where an image change falls: share of the mean absolute RGB difference inside ``region``.

    Args:
        reference, changed: float [V, 3, H, W].
        region: bool/float [V, H, W] (any size; nearest-resized to H, W).

    Returns:
        (float32 [V] share per view, float share over all views together); NaN where nothing changed.
    """
    if reference.shape != changed.shape or reference.ndim != 4:
        raise ShapeError(f"images must both be [V, 3, H, W], got {list(reference.shape)} and {list(changed.shape)}")
    diff = (reference.float() - changed.float()).abs().mean(dim=1)  # [V, H, W]
    m = downsample_mask(region, diff.shape[-2:]).to(diff.device)
    inside, total = (diff * m).sum(dim=(-2, -1)), diff.sum(dim=(-2, -1))
    per_view = torch.where(total > _EPS, inside / total.clamp_min(_EPS), torch.full_like(total, float("nan")))
    overall = float(inside.sum() / total.sum()) if float(total.sum()) > _EPS else float("nan")
    return per_view.cpu(), overall


def verdict(token: str, shares: torch.Tensor, index: int, components: Sequence[str], isolated_share: float = 0.5,
            leak_share: float = 0.25) -> str:
    """One line for a token from its row of the leakage matrix.

    Args:
        token: the token ("<hat>").
        shares: float [C, V], the token's attention share inside each component's mask per view.
        index: the token's own component.
        components: the C component names.

    Returns:
        ``"<hat>: isolated (...)"`` when its own share (mean over views) is at least ``isolated_share`` and every
        other component gets less than ``leak_share``; ``"<hat>: leaking into dog (...)"`` when some other component
        gets ``leak_share`` or more (largest first); ``"<hat>: weak (...)"`` otherwise (its attention is mostly
        outside every mask).
    """
    mean = shares.float().mean(dim=-1)
    own = float(mean[index])
    others = sorted(((float(mean[c]), components[c]) for c in range(len(components)) if c != index), reverse=True)
    leaks = [(s, name) for s, name in others if s >= leak_share]
    if leaks:
        into = ", ".join(f"{name} ({s:.2f})" for s, name in leaks)
        return f"{token}: leaking into {into}; own share {own:.2f}"
    if own >= isolated_share:
        return f"{token}: isolated; own share {own:.2f}" + (f", largest leak {others[0][1]} {others[0][0]:.2f}"
                                                               if others else "")
    return f"{token}: weak; own share {own:.2f}, the rest of its attention is outside every component"



def _heat(x: torch.Tensor) -> torch.Tensor:
    """float [..., H, W] in 0..1 -> [..., 3, H, W] black-red-yellow-white ramp."""
    x = x.clamp(0, 1)[..., None, :, :]
    return torch.cat([(3 * x).clamp(0, 1), (3 * x - 1).clamp(0, 1), (3 * x - 2).clamp(0, 1)], dim=-3)


def _outline(mask: torch.Tensor) -> torch.Tensor:
    """bool [N, 1, H, W]: the mask's pixels with a pixel outside it among their 8 neighbours (image border excluded)."""
    m = mask > 0.5
    inner = -F.max_pool2d(-m.float(), kernel_size=3, stride=1, padding=1) > 0.5  # erosion (3x3)
    return m & ~inner


def render_heatmap(attention: torch.Tensor, masks: torch.Tensor, labels: Sequence[str], tile: int = 96,
                   reference: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One row per token: its attention in each view (scaled by its max over the views; the mask's outline in cyan),
    then its mask in each view.

    Args:
        attention: float [K, V, h, w] each token's map.
        masks: bool/float [K, V, H, W] each token's component mask.
        labels: K row labels.
        tile: side of one tile in pixels.
        reference: optional float [K, V, h, w] the reference maps (base model, initialiser words), drawn between the
            token's maps and its masks.

    Returns:
        float32 [3, K·(tile + 14), n·tile + gaps] in 0..1.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    K, V = int(attention.shape[0]), int(attention.shape[1])
    label_h, gap = 14, 4
    groups = [attention] + ([reference] if reference is not None else []) + [masks]
    width = len(groups) * V * tile + (len(groups) - 1) * gap
    canvas = torch.ones(3, K * (tile + label_h), width)
    for k in range(K):
        y = k * (tile + label_h) + label_h
        x = 0
        for g, maps in enumerate(groups):
            m = maps[k].float()
            if g < len(groups) - 1:  # attention: per-token max over views
                m = m / m.amax().clamp_min(_EPS)
            up = F.interpolate(m[:, None].cpu(), size=(tile, tile), mode="nearest")[:, 0]
            if g < len(groups) - 1:  # heat, with the mask's outline in cyan so the two can be compared
                tiles = _heat(up)
                outline = _outline(F.interpolate(masks[k].float()[:, None].cpu(), size=(tile, tile), mode="nearest"))
                tiles = torch.where(outline, torch.tensor([0.0, 1.0, 1.0])[None, :, None, None], tiles)
            else:
                tiles = up[:, None].expand(-1, 3, -1, -1)
            for v in range(V):
                canvas[:, y:y + tile, x:x + tile] = tiles[v]
                x += tile
            x += gap
    img = Image.fromarray((canvas.permute(1, 2, 0) * 255).round().byte().numpy())
    draw = ImageDraw.Draw(img)
    for k, text in enumerate(labels):
        draw.text((2, k * (tile + label_h) + 1), str(text), fill=(0, 0, 0))
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0

