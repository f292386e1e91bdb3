"""LGM as a lifting reconstructor: four views -> Gaussians -> mesh, plugged into ``lift_to_mesh(reconstructor=...)``."""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ...cameras import MVCameras
from ...errors import ConfigError
from ..pipeline import register_reconstructor
from .checkpoint import resolve_dtype, load_lgm
from .gaussians import Gaussians, gaussians_from_lgm, gaussians_to_mesh
from .network import LGMNetwork
from .rays import FRAMES, lgm_frame, lgm_input

#: LGM was trained on objects over white.
LGM_BACKGROUND = (1.0, 1.0, 1.0)


class LGMReconstructor:
    """Callable with :func:`~dreamedit3d_core.lifting.register_reconstructor`'s contract, loading the weights lazily.

    Args:
        path: an LGM ``.safetensors`` file (see :func:`~.checkpoint.load_lgm`), or an :class:`LGMNetwork` already loaded.
        dtype: network dtype; None: float16 on CUDA, float32 on the CPU.
        frame: "first_view" (LGM's training normalisation, default) or "world" (see :mod:`.rays`).
        rotation_normalization: override the file's (see :func:`~.checkpoint.rotation_normalization_for`).
        hull: intersect the Gaussians' solid with the views' visual hull.

    After a call, ``last_gaussians`` holds the Gaussians (our frame) and ``last_stats`` the mesh extraction's numbers.
    """

    def __init__(self, path: str | os.PathLike | LGMNetwork, dtype=None, frame: str = "first_view",
                 rotation_normalization: Optional[str] = None, hull: bool = True):
        if frame not in FRAMES:
            raise ConfigError(f"unknown LGM frame {frame!r}; valid frames are {list(FRAMES)}")
        # a module already built (an LGMNetwork, or anything with its ``config`` and forward, e.g. in benchmarks)
        self._network: Optional[LGMNetwork] = path if isinstance(path, torch.nn.Module) else None
        self.path = None if self._network is not None else Path(path)
        self.dtype = dtype
        self.frame = frame
        self.rotation_normalization = rotation_normalization
        self.hull = bool(hull)
        self.last_gaussians: Optional[Gaussians] = None
        self.last_stats: dict = {}

    def offload(self) -> None:
        """Move the loaded network and ``last_gaussians`` to the CPU (frees their GPU memory; the next call moves the
        network back): between runs the reconstructor holds nothing on a GPU outside ComfyUI's model management.

        The network keeps its dtype: the released float16 weights take 0.83 GB of host memory rather than 1.66 GB as
        a float32 copy, and come back to the GPU unchanged (a CPU call converts them to float32 then)."""
        if self._network is not None:
            self._network = self._network.to("cpu")
        if self.last_gaussians is not None:
            self.last_gaussians = self.last_gaussians.to("cpu")

    def held_tensors(self) -> list:
        """(name, tensor) of everything this reconstructor keeps between calls: the loaded network's weights and
        ``last_gaussians`` (where they live tells what it holds on a GPU)."""
        held = list(self._network.state_dict().items()) if self._network is not None else []
        if self.last_gaussians is not None:
            held += [(f"last_gaussians.{f.name}", getattr(self.last_gaussians, f.name))
                     for f in dataclasses.fields(self.last_gaussians)]
        return held

    def network(self, device=None) -> LGMNetwork:
        """The loaded network on ``device`` (loaded once, moved when the device changes)."""
        device = torch.device(device if device is not None else "cpu")
        dtype = resolve_dtype(self.dtype, device)
        if self._network is None:
            self._network = load_lgm(self.path, device, dtype, self.rotation_normalization)
        else:
            p = next(self._network.parameters())
            if p.device != device or p.dtype != dtype:
                self._network = self._network.to(device=device, dtype=dtype)
        return self._network

    def gaussians(self, rgb: torch.Tensor, cameras: MVCameras, alpha: Optional[torch.Tensor] = None,
                  device=None) -> Gaussians:
        """LGM's Gaussians for four views, in our world frame.

        Args:
            rgb: float [4, 3, H, W] in 0..1 (front, right, back, left); alpha: float [4, 1, H, W] silhouettes, used to
                put the views on white as LGM was trained (None: the views are already on white).
        """
        device = torch.device(device) if device is not None else rgb.device
        net = self.network(device)
        rgb = rgb.to(device=device, dtype=torch.float32)
        if alpha is not None:
            a = alpha.to(device=device, dtype=torch.float32)
            a = a[:, None] if a.ndim == 3 else a
            white = torch.tensor(LGM_BACKGROUND, device=device).reshape(1, 3, 1, 1)
            rgb = rgb * a + white * (1.0 - a)
        x = lgm_input(rgb, cameras, net.config.input_size, self.frame, LGM_BACKGROUND)
        dtype = next(net.parameters()).dtype
        with torch.inference_mode():
            raw = net(x.to(device=device, dtype=dtype))
        return gaussians_from_lgm(raw, lgm_frame(cameras, self.frame))

    def __call__(self, rgb: torch.Tensor, alpha: torch.Tensor, cameras: MVCameras, *, grid: int = 128, device=None,
                 progress=None) -> tuple[np.ndarray, np.ndarray]:
        g = self.gaussians(rgb, cameras, alpha, device)
        self.last_gaussians = g
        verts, faces, stats = gaussians_to_mesh(g, int(grid), alpha if self.hull else None,
                                                cameras if self.hull else None, progress)
        self.last_stats = stats
        return verts, faces


def bake_vertex_colors_with_gaussians(verts: torch.Tensor, normals: torch.Tensor, view_sets: Sequence,
                                      gaussians: Gaussians, prior_sets: Sequence = ()) -> tuple[torch.Tensor, dict]:
    """Per-vertex colours from the views where any view sees the vertex, and from the Gaussians around it where none
    does (instead of the nearest seen colour): float32 [N, 3] in 0..1 and stats.

    The lifting bake's vertex stage with LGM's colours as the fallback; pass the result to ``bake.bake_texture`` as
    ``fallback_colors`` so unseen texels take them too.

    Args:
        verts: float [N, 3]; normals: float [N, 3] unit outward; view_sets / prior_sets: ``bake.ViewSet`` lists as
            ``lift_to_mesh`` builds them; gaussians: the reconstructor's ``last_gaussians``.
    """
    from .. import bake
    from .gaussians import gaussian_colors_at

    v = verts.to(torch.float32)
    colors, wsum = bake.colors_with_prior(v, normals.to(torch.float32), view_sets, prior_sets)
    unseen = wsum <= bake.MIN_WEIGHT
    if bool(unseen.any()):
        colors = colors.clone()
        colors[unseen] = gaussian_colors_at(v[unseen], gaussians.to(v.device)).to(colors.device)
    return colors.clamp(0.0, 1.0), {"unseen_vertex_fraction": float(unseen.sum()) / max(v.shape[0], 1)}


#: Reconstructors kept by :func:`cached_lgm_reconstructor` (the released weights are 830 MB; one queue run should not
#: read them again).
_CACHE: "OrderedDict[tuple, LGMReconstructor]" = OrderedDict()
CACHE_SIZE = 2


def cached_lgm_reconstructor(path: str | os.PathLike, **options) -> LGMReconstructor:
    """The same :class:`LGMReconstructor` for the same file (path, size, modification time) and options, so its loaded
    network is reused across calls; the least recently used of more than ``CACHE_SIZE`` is dropped."""
    p = Path(path).resolve()
    st = p.stat() if p.is_file() else None
    key = (str(p), st.st_size if st else -1, st.st_mtime_ns if st else -1, tuple(sorted(options.items(), key=str)))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    rec = LGMReconstructor(p, **options)
    _CACHE[key] = rec
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return rec


def register_lgm(path, name: str = "lgm", overwrite: bool = False, **options) -> LGMReconstructor:
    """Make LGM available as ``lift_to_mesh(..., reconstructor=name)``; returns the reconstructor.

    Args:
        path: the weights file (the reconstructor comes from :func:`cached_lgm_reconstructor`, so registering the
            same file again reuses the loaded network), or an :class:`LGMNetwork` already built.
        options: for :class:`LGMReconstructor` (dtype, frame, rotation_normalization, hull).

    The weights are read on first use; a bad file raises :class:`~dreamedit3d_core.errors.CheckpointError` then (call
    ``.network()`` to check it now).
    """
    rec = LGMReconstructor(path, **options) if isinstance(path, torch.nn.Module) else cached_lgm_reconstructor(
        path, **options)
    register_reconstructor(name, rec, overwrite=overwrite)
    return rec


__all__: Sequence[str] = ("LGMReconstructor", "register_lgm", "cached_lgm_reconstructor", "bake_vertex_colors_with_gaussians", "LGM_BACKGROUND")
