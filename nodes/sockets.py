"""The pack's socket types and the converters between the core's channels-first tensors and ComfyUI's layouts.

ComfyUI's IMAGE is float32 [B, H, W, 3] in 0..1 and MASK float32 [B, H, W] in 0..1; the core library is
channels-first [V, C, H, W]. This module is the only place the two layouts meet.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import Optional

import torch

from ..dreamedit3d_core.errors import ConfigError, ShapeError
from ..dreamedit3d_core.types import ComponentMasks, MeshAsset, MultiViewRender
from ._compat import core_mesh_class, intermediate_device, io

# Custom sockets. Values: MVDREAM_MODEL -> dreamedit3d_core MVDreamModel; MV_VIEWS -> MVViews (below);
# MV_TOKENS -> dreamedit3d_core TokenSet; MV_CONDITIONING -> dreamedit3d_core MVConditioning;
# MV_SAMPLES -> MVSamples (below).
MVDreamModelSocket = io.Custom("MVDREAM_MODEL")
MVViewsSocket = io.Custom("MV_VIEWS")
MVTokensSocket = io.Custom("MV_TOKENS")
MVConditioningSocket = io.Custom("MV_CONDITIONING")
MVSamplesSocket = io.Custom("MV_SAMPLES")


@dataclass(frozen=True)
class MVSamples:
    """What flows on an MV_SAMPLES socket: MVSample's views and the record of what made them.

    Attributes:
        images: ComfyUI IMAGE float32 [N*V, H, W, 3], view-contiguous (edit n, view v at n*V + v).
        record: provenance (prompts, negative prompt, seed, sampler, sigmas, cfg, model and token hashes).
    """

    images: torch.Tensor
    record: dict


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


# --------------------------------------------------------------------------------------------- core MESH
def core_mesh(vertices: torch.Tensor, faces: torch.Tensor, **optional):
    """A core MESH with a batch of one: ``vertices`` [N,3] float, ``faces`` [M,3] int.

    ``optional`` (uvs [N,2], texture [T,T,3], vertex_colors [N,3], ...) are passed batched only where the running
    ComfyUI's MESH takes them (newer hosts carry UVs and textures; 0.3.75 takes vertices and faces only).
    """
    cls = core_mesh_class()
    params = inspect.signature(cls.__init__).parameters
    kwargs = {k: (v[None] if isinstance(v, torch.Tensor) else v) for k, v in optional.items()
              if v is not None and k in params}
    return cls(vertices[None].float(), faces[None].long(), **kwargs)


def _pad_stack(tensors: list, dtype) -> torch.Tensor:
    """Zero-pad tensors [n_i, ...] to the longest and stack them: [B, max n_i, ...]."""
    rows = max(int(t.shape[0]) for t in tensors)
    out = torch.zeros(len(tensors), rows, *tensors[0].shape[1:], dtype=dtype)
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t.to(dtype)
    return out


def core_mesh_batch(items: list[dict]):
    """A core MESH holding several meshes: each item a dict with ``vertices`` [N_i,3], ``faces`` [M_i,3] and optional
    ``uvs`` [N_i,2], ``texture`` [T,T,3], ``vertex_colors`` [N_i,3].

    Per-item tensors are zero-padded to the largest item ([B,N,3], [B,M,3], ...); padded faces are (0,0,0), i.e.
    degenerate triangles that draw nothing, and padded vertices are unreferenced. The true sizes go to
    ``vertex_counts`` / ``face_counts`` (int64 [B]): passed to the constructor where the host's MESH takes them,
    otherwise set as attributes (``mesh_from_core`` honours them; 0.3.75's SaveGLB writes the padded arrays).
    Optional fields go in only where the running MESH takes them and every item has one of the same shape.
    """
    if not items:
        raise ConfigError("no meshes to put into a MESH batch")
    cls = core_mesh_class()
    params = inspect.signature(cls.__init__).parameters
    vertices = _pad_stack([it["vertices"].detach().cpu() for it in items], torch.float32)
    faces = _pad_stack([it["faces"].detach().cpu() for it in items], torch.int64)
    kwargs: dict = {}
    for key in ("uvs", "vertex_colors"):
        vals = [it.get(key) for it in items]
        if key in params and all(v is not None for v in vals):
            kwargs[key] = _pad_stack([v.detach().cpu() for v in vals], torch.float32)
    textures = [it.get("texture") for it in items]
    if "texture" in params and all(t is not None for t in textures) and len({tuple(t.shape) for t in textures}) == 1:
        kwargs["texture"] = torch.stack([t.detach().cpu().float() for t in textures])
    counts = {"vertex_counts": torch.tensor([int(it["vertices"].shape[0]) for it in items], dtype=torch.int64),
              "face_counts": torch.tensor([int(it["faces"].shape[0]) for it in items], dtype=torch.int64)}
    kwargs.update({k: v for k, v in counts.items() if k in params})
    mesh = cls(vertices, faces, **kwargs)
    for key, value in counts.items():
        if key not in params:
            setattr(mesh, key, value)
    return mesh


def mesh_from_core(mesh, index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(vertices [N,3] float32, faces [M,3] int64) of batch item ``index`` of a core MESH, per-item counts honoured."""
    vertices, faces = mesh.vertices, mesh.faces
    if vertices.ndim == 2:
        return vertices.float(), faces.long()
    v, f = vertices[index].float(), faces[index].long()
    vc, fc = getattr(mesh, "vertex_counts", None), getattr(mesh, "face_counts", None)
    if vc is not None:
        v = v[: int(vc[index])]
    if fc is not None:
        f = f[: int(fc[index])]
    return v, f
