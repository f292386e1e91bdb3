"""The pack's socket types and the converters between the core's channels-first tensors and ComfyUI's layouts.

ComfyUI's IMAGE is float32 [B, H, W, 3] in 0..1 and MASK float32 [B, H, W] in 0..1; the core library is
channels-first [V, C, H, W]. This module is the only place the two layouts meet.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch

from ..dreamedit3d_core.errors import ShapeError
from ..dreamedit3d_core.types import ComponentMasks, MeshAsset, MultiViewRender
from ._compat import intermediate_device, io

# Custom sockets. Values: MVDREAM_MODEL -> dreamedit3d_core MVDreamModel; MV_VIEWS -> MVViews (below);
# MV_TOKENS -> dreamedit3d_core TokenSet; MV_CONDITIONING -> dreamedit3d_core MVConditioning.
MVDreamModelSocket = io.Custom("MVDREAM_MODEL")
MVViewsSocket = io.Custom("MV_VIEWS")
MVTokensSocket = io.Custom("MV_TOKENS")
MVConditioningSocket = io.Custom("MV_CONDITIONING")


@dataclass(frozen=True)
class MVViews:
    """What flows on an MV_VIEWS socket: the four rendered views, and the component masks once they are made.

    Attributes:
        render: the views (colour, alpha, depth, normals, part ids, cameras).
        masks: per-component masks, or None before ComponentMask.
        asset: the source asset (LiftToMesh can keep or re-texture it), or None.
    """

    render: MultiViewRender
    masks: Optional[ComponentMasks] = None
    asset: Optional[MeshAsset] = None

    def with_masks(self, masks: ComponentMasks) -> "MVViews":
        return replace(self, masks=masks)

    def require_masks(self, node: str) -> ComponentMasks:
        if self.masks is None:
            raise ShapeError(f"{node} needs component masks: connect the MV_VIEWS output of DreamEdit3D_ComponentMask")
        return self.masks


def to_comfy_image(rgb: torch.Tensor) -> torch.Tensor:
    """Core channels-first images float [N, 3, H, W] (or [N, 1, H, W]) -> ComfyUI IMAGE float32 [N, H, W, 3]."""
    if rgb.ndim != 4 or rgb.shape[1] not in (1, 3):
        raise ShapeError(f"images must be [N, 3, H, W], got {list(rgb.shape)}")
    if rgb.shape[1] == 1:
        rgb = rgb.expand(-1, 3, -1, -1)
    return rgb.detach().permute(0, 2, 3, 1).to(device=intermediate_device(), dtype=torch.float32).clamp(0, 1).contiguous()


def from_comfy_image(image: torch.Tensor, expect: Optional[int] = None) -> torch.Tensor:
    """ComfyUI IMAGE float [N, H, W, C>=3] -> core float32 [N, 3, H, W] (alpha dropped); ``expect`` checks N."""
    if image.ndim != 4 or image.shape[-1] < 3:
        raise ShapeError(f"IMAGE must be [N, H, W, 3], got {list(image.shape)}")
    if expect is not None and image.shape[0] != expect:
        raise ShapeError(f"expected a batch of {expect} views, got {image.shape[0]} images: connect the 4-view IMAGE output")
    return image[..., :3].permute(0, 3, 1, 2).float().contiguous()


def to_comfy_mask(mask: torch.Tensor) -> torch.Tensor:
    """Core masks bool/float [N, H, W] or [N, 1, H, W] -> ComfyUI MASK float32 [N, H, W] in 0..1."""
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim != 3:
        raise ShapeError(f"masks must be [N, H, W], got {list(mask.shape)}")
    return mask.detach().to(device=intermediate_device(), dtype=torch.float32).clamp(0, 1).contiguous()


def component_masks_to_comfy(masks: ComponentMasks) -> tuple[torch.Tensor, torch.Tensor]:
    """(union MASK [V, H, W] of all components, stacked MASK [K*V, H, W] component-major: index k*V + v)."""
    m = masks.masks
    k, v, h, w = m.shape
    return to_comfy_mask(m.any(dim=0)), to_comfy_mask(m.reshape(k * v, h, w))


# a fixed, readable palette for component maps (component k gets colour k)
_PALETTE = torch.tensor([
    [0.90, 0.25, 0.20], [0.20, 0.55, 0.90], [0.25, 0.75, 0.30], [0.95, 0.75, 0.15], [0.60, 0.35, 0.80],
    [0.15, 0.75, 0.75], [0.95, 0.50, 0.70], [0.55, 0.40, 0.25]])


def component_map_image(masks: ComponentMasks, background: float = 1.0) -> torch.Tensor:
    """Coloured component map: ComfyUI IMAGE [V, H, W, 3], component k in palette colour k, background grey/white."""
    m = masks.masks.float().cpu()
    k, v, h, w = m.shape
    colors = _PALETTE[torch.arange(k) % len(_PALETTE)]
    img = torch.full((v, h, w, 3), float(background))
    covered = torch.zeros(v, h, w, dtype=torch.bool)
    for i in range(k):  # the first component listed wins overlaps, as in the spec order
        sel = m[i].bool() & ~covered
        img[sel] = colors[i]
        covered |= sel
    return img.to(intermediate_device())
